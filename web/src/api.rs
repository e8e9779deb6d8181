//! The page's JSON API, in the CLI's `--json` vocabulary (`patron_client::json`): the same
//! events, fields and error kinds, so that a script moves between them unchanged.

use crate::Shared;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use patron_client::json::{error_json, file_json, info_json, peer_json, status_json};
use patron_client::proto::{
    CreateNewTorrent, ErrorKind, FileRef, ProtoError, TorrentRef, TorrentSource,
};
use patron_client::{Created, Error};
use serde::Deserialize;
use serde_json::{json, Value};

/// An error as an HTTP answer: the status says its class, the body (`error_json`) says it.
pub struct Failure(pub Error);

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (status_of(&self.0), Json(error_json(&self.0))).into_response()
    }
}

/// The HTTP status for an error.
pub fn status_of(error: &Error) -> StatusCode {
    match patron_client::proto_error(error) {
        Some(e) => match e.kind {
            ErrorKind::UnknownTorrent => StatusCode::NOT_FOUND,
            ErrorKind::FileExists | ErrorKind::FileOwned | ErrorKind::NotHolder => {
                StatusCode::CONFLICT
            }
            ErrorKind::LimitReached | ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Io | ErrorKind::Engine | ErrorKind::NoSpace => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        },
        None => match error {
            Error::BrokerUnreachable(_)
            | Error::TimedOut(_)
            | Error::BrokerStopped(_)
            | Error::Refused { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure(Error::Request(ProtoError::bad_request(message)))
}

/// A torrent as a path names it: its id, or its info hash.
pub fn torrent_ref(text: &str) -> Result<TorrentRef, Failure> {
    TorrentRef::parse(text).ok_or_else(|| {
        bad_request(format!(
            "{text:?} is neither a torrent id nor a 40-digit info hash"
        ))
    })
}

/// `POST /api/login {"token": ...}`: the page trades the token of its URL for a cookie.
pub async fn login(State(web): State<Shared>, Json(body): Json<Value>) -> Response {
    let token = body["token"].as_str().unwrap_or("");
    match (web.access.is_token(token), web.access.cookie()) {
        (true, Some(cookie)) => (
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, cookie)],
        )
            .into_response(),
        (true, None) => StatusCode::NO_CONTENT.into_response(),
        (false, _) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"event": "error", "kind": "unauthorized", "message": "that is not this server's token"})),
        )
            .into_response(),
    }
}

/// `GET /api/torrents`: every torrent, as `patron-client --json list` prints them.
pub async fn list(State(web): State<Shared>) -> Response {
    // Each torrent's text as the board's thread made it: joined, not serialized again.
    let torrents = web.link.torrents().borrow().clone();
    let texts: Vec<&str> = torrents.texts.values().map(|t| &**t).collect();
    let down = serde_json::to_string(&torrents.down).unwrap_or_else(|_| "null".into());
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"event\":\"list\",\"torrents\":[{}],\"broker_down\":{down}}}",
            texts.join(",")
        ),
    )
        .into_response()
}

/// What `POST /api/torrents` takes: as pipe mode's `add`, with the .torrent in base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    torrent_base64: Option<String>,
    magnet: Option<String>,
    output: Option<String>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    peers: Vec<String>,
    only: Option<Vec<Value>>,
}

/// `POST /api/torrents`: adds a torrent (or joins it), as `patron-client --json add`.
pub async fn add(
    State(web): State<Shared>,
    Json(body): Json<AddBody>,
) -> Result<Response, Failure> {
    let source = match (body.torrent_base64, body.magnet) {
        (Some(encoded), None) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| bad_request(format!("torrent_base64 is not base64: {e}")))?;
            TorrentSource::TorrentFile(bytes)
        }
        (None, Some(magnet)) => TorrentSource::Magnet(magnet.trim().to_owned()),
        _ => return Err(bad_request("give exactly one of torrent_base64 and magnet")),
    };
    let mut create = CreateNewTorrent::new(source);
    create.output = body.output.filter(|o| !o.trim().is_empty());
    create.paused = body.paused;
    create.peers = body.peers;
    create.only_files = body.only.map(file_refs).transpose()?;
    let created = web.link.create(create).await.map_err(|e| match e {
        // The start failed for a reason of the request's.
        Error::StartFailed(error) => Failure(Error::Request(error)),
        other => Failure(other),
    })?;
    let value = match &created {
        Created::New(info) | Created::Queued(info) => {
            let mut value = info_json("created", info);
            value["queued"] = matches!(created, Created::Queued(_)).into();
            value
        }
        Created::AlreadyDownloading(info, not_applied) => {
            let mut value = info_json("already-downloading", info);
            value["not_applied"] = not_applied.clone().into();
            value
        }
    };
    Ok((StatusCode::OK, Json(value)).into_response())
}

/// Files as a list names them: indices, or paths.
fn file_refs(values: Vec<Value>) -> Result<Vec<FileRef>, Failure> {
    values
        .into_iter()
        .map(|value| match value {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(FileRef::Index)
                .ok_or_else(|| bad_request(format!("{n} is not a file index"))),
            Value::String(path) => Ok(FileRef::Path(path)),
            other => Err(bad_request(format!(
                "a file is an index or a path, not {other}"
            ))),
        })
        .collect()
}

/// `POST /api/torrents/{id}/{action}`: `pause`, `resume`, `recheck`, `top`, `move` (body
/// `{"to": FOLDER}`) and `labels` (body `{"labels": [...]}`) answer its status; `close`
/// (body `{"delete_data": bool}`) answers `closed`.
pub async fn act(
    State(web): State<Shared>,
    Path((torrent, action)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Result<Response, Failure> {
    let torrent = torrent_ref(&torrent)?;
    let value = match action.as_str() {
        "pause" | "resume" | "recheck" | "top" => {
            let status = web
                .link
                .call(move |patron| match action.as_str() {
                    "pause" => patron.pause(torrent),
                    "resume" => patron.resume(torrent),
                    // First in the queue: it starts next (or now).
                    "top" => patron.move_in_queue(torrent, patron_client::proto::QueueMove::Top),
                    _ => patron.recheck(torrent),
                })
                .await?;
            status_json(&status)
        }
        "move" => {
            let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
            let to = body["to"]
                .as_str()
                .ok_or_else(|| bad_request("move takes {\"to\": an absolute folder}"))?
                .to_owned();
            let status = web
                .link
                .call(move |patron| patron.move_storage(torrent, to))
                .await?;
            status_json(&status)
        }
        "labels" => {
            let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
            let labels: Vec<String> = body["labels"]
                .as_array()
                .and_then(|list| list.iter().map(|l| l.as_str().map(str::to_owned)).collect())
                .ok_or_else(|| bad_request("labels takes {\"labels\": [strings]}"))?;
            let change = patron_client::proto::SetLabels { torrent, labels };
            let status = web
                .link
                .call(move |patron| patron.set_labels(change))
                .await?;
            status_json(&status)
        }
        "close" => {
            let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
            let delete_data = body["delete_data"].as_bool().unwrap_or(false);
            // The page's patron holds nothing: closing from the page stops the torrent
            // for everyone, as `close --force` does (the page asks first).
            let closed = web
                .link
                .call(move |patron| patron.close(torrent, delete_data, true))
                .await?;
            json!({
                "event": "closed",
                "id": closed.id.0,
                "stopped": closed.stopped,
                "data_deleted": closed.data_deleted,
            })
        }
        other => {
            return Err(bad_request(format!(
                "no action {other:?} (pause, resume, recheck, top, move, labels, close)"
            )))
        }
    };
    Ok(Json(value).into_response())
}

/// The settings the page shows and changes, as `broker status --json` names them.
const SETTINGS: [&str; 11] = [
    "max_download_rate",
    "max_upload_rate",
    "alt_download_rate",
    "alt_upload_rate",
    "alt_on",
    "max_active_downloads",
    "max_active_seeds",
    "ratio_limit",
    "seed_time_limit_secs",
    "idle_seed_limit_secs",
    "seed_limit_action",
];

/// `GET /api/settings`: the broker's rate limits (usual and alternative), queue and
/// seeding limits, as `broker status --json` names them (`null`: none).
pub async fn settings(State(web): State<Shared>) -> Result<Response, Failure> {
    let info = web.link.call(|patron| patron.broker_info()).await?;
    let all = patron_client::json::broker_json(&info, None, 0);
    let mut value = json!({"event": "settings"});
    for key in SETTINGS {
        value[key] = all[key].clone();
    }
    Ok(Json(value).into_response())
}

/// `POST /api/settings`: changes those named (`null` lifts a limit; one left out stays),
/// as `patron-client limits`, `queue` and `set` do; answers them all as they are then.
/// Every field is read before anything changes: one refused changes nothing.
pub async fn set_settings(
    State(web): State<Shared>,
    Json(body): Json<serde_json::Map<String, Value>>,
) -> Result<Response, Failure> {
    if let Some(other) = body.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "{other} is not a setting the page changes"
        )));
    }
    let rate = |key: &str| -> Result<Option<u64>, Failure> {
        match body.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(0)),
            Some(v) => v
                .as_u64()
                .filter(|&r| r > 0)
                .map(Some)
                .ok_or_else(|| bad_request(format!("{key} is bytes a second, or null: none"))),
        }
    };
    let count = |key: &str| -> Result<Option<Option<u32>>, Failure> {
        match body.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| Some(Some(n)))
                .ok_or_else(|| bad_request(format!("{key} is a number of torrents, or null"))),
        }
    };
    let secs = |key: &str| -> Result<Option<Option<u64>>, Failure> {
        match body.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => v
                .as_u64()
                .map(|n| Some(Some(n)))
                .ok_or_else(|| bad_request(format!("{key} is seconds, or null"))),
        }
    };
    let limits = patron_client::proto::SetLimits {
        torrent: None,
        download: rate("max_download_rate")?,
        upload: rate("max_upload_rate")?,
        alt: patron_client::proto::AltChange {
            download: rate("alt_download_rate")?,
            upload: rate("alt_upload_rate")?,
            schedule: None,
            hours: None,
            on: match body.get("alt_on") {
                None => None,
                Some(v) => Some(
                    v.as_bool()
                        .ok_or_else(|| bad_request("alt_on is true or false"))?,
                ),
            },
        },
    };
    let queue = patron_client::proto::SetQueue {
        max_active_downloads: count("max_active_downloads")?,
        max_active_seeds: count("max_active_seeds")?,
        stalled_after_secs: None,
    };
    let seeding = patron_client::proto::SetSeeding {
        ratio: match body.get("ratio_limit") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => {
                Some(Some(v.as_f64().ok_or_else(|| {
                    bad_request("ratio_limit is a number, or null")
                })?))
            }
        },
        seed_time_secs: secs("seed_time_limit_secs")?,
        idle_secs: secs("idle_seed_limit_secs")?,
        action: match body.get("seed_limit_action") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(patron_client::proto::SeedAction::parse)
                    .ok_or_else(|| bad_request("seed_limit_action is pause or close"))?,
            ),
        },
        ..Default::default()
    };
    web.link
        .call(move |patron| {
            patron.set_seeding(seeding)?;
            patron.set_queue(queue)?;
            patron.set_limits(limits)
        })
        .await?;
    settings(State(web)).await
}

/// `GET /api/torrents/{id}/files`: its files, as `patron-client --json files`.
pub async fn files(
    State(web): State<Shared>,
    Path(torrent): Path<String>,
) -> Result<Response, Failure> {
    let torrent = torrent_ref(&torrent)?;
    let list = web.link.call(move |patron| patron.files(torrent)).await?;
    Ok(Json(files_json(&list)).into_response())
}

/// `POST /api/torrents/{id}/files {"only": [...]}`: downloads only those from now on.
pub async fn select(
    State(web): State<Shared>,
    Path(torrent): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Failure> {
    let torrent = torrent_ref(&torrent)?;
    let only = match body.get("only") {
        Some(Value::Array(only)) => file_refs(only.clone())?,
        _ => {
            return Err(bad_request(
                "give \"only\": a list of file indices or paths",
            ))
        }
    };
    let list = web
        .link
        .call(move |patron| patron.select_files(torrent, only))
        .await?;
    Ok(Json(files_json(&list)).into_response())
}

fn files_json(list: &patron_client::FileList) -> Value {
    json!({
        "event": "files",
        "id": list.torrent.0,
        "files": list.files.iter().map(file_json).collect::<Vec<_>>(),
    })
}

/// `GET /api/torrents/{id}/peers`: its connected peers, as `patron-client --json peers`.
pub async fn peers(
    State(web): State<Shared>,
    Path(torrent): Path<String>,
) -> Result<Response, Failure> {
    let torrent = torrent_ref(&torrent)?;
    let list = web.link.call(move |patron| patron.peers(torrent)).await?;
    Ok(Json(json!({
        "event": "peers",
        "id": list.torrent.0,
        "dialled": list.dialled,
        "peers": list.peers.iter().map(peer_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Anything else under `/api/`.
pub async fn not_found() -> Failure {
    bad_request("no such API call (see the README's web section)")
}
