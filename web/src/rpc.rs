//! Transmission's RPC at `/transmission/rpc`: the subset transmission-remote, the
//! `transmission-rpc` Python package, Sonarr and Flexget use (DESIGN §11).
//!
//! The session-id exchange is Transmission's: a request without the current
//! `X-Transmission-Session-Id` gets 409 with it (a CSRF guard of its own, beside the access
//! checks every request passes). Torrent ids are the broker's. Status fields come off the
//! board, as `list` reads them; files and peers are asked of the broker only when a request
//! names those fields. A method this broker does not have, a `torrent-set` argument it
//! cannot apply, or any method while the broker is down is answered in Transmission's own
//! shape: `{"result": "<why>"}`, never a silent success. `torrent-add` takes `metainfo` or
//! `filename`, `download-dir`, `paused` and `files-wanted`, and leaves out the rest (labels,
//! `peer-limit`, priorities) as older Transmissions leave out what they do not know: tools
//! send them with every add.

mod fields;

use crate::link::Torrents;
use crate::Shared;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fields::{Fields, Json};
use patron_client::proto::{
    CreateNewTorrent, FileRef, InfoHash, QueueMove, TorrentRef, TorrentSource, TorrentState,
    TorrentSummary,
};
use patron_client::{Created, Error};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The header Transmission's clients echo.
pub const SESSION_HEADER: &str = "x-transmission-session-id";

/// The RPC version this speaks (Transmission 3.00's), and the oldest it answers.
const RPC_VERSION: u64 = 17;
const RPC_VERSION_MINIMUM: u64 = 14;

/// The handler.
pub async fn handle(State(web): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let session = &web.rpc_session;
    let presented = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    if presented != Some(session.as_str()) {
        let mut response = (
            StatusCode::CONFLICT,
            "<h1>409: Conflict</h1><p>Your request had an invalid session-id header.</p>",
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(session) {
            response.headers_mut().insert(SESSION_HEADER, value);
        }
        return response;
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return axum::Json(json!({"result": format!("the request is not JSON: {e}")}))
                .into_response()
        }
    };
    let tag = request.get("tag").cloned();
    let method = request["method"].as_str().unwrap_or("").to_owned();
    let arguments = match request.get("arguments") {
        Some(Value::Object(arguments)) => arguments.clone(),
        _ => Map::new(),
    };
    let answered = call(&web, &method, &arguments).await;
    // Written by hand around the arguments, which `torrent-get` writes as text already.
    let mut reply = Json::with_capacity(answered.as_ref().map_or(64, |a| a.len() + 64));
    reply.raw(b"{\"arguments\":");
    match &answered {
        Ok(arguments) => reply.raw(arguments),
        Err(_) => reply.raw(b"{}"),
    }
    reply.raw(b",\"result\":");
    reply.put(answered.as_ref().err().map_or("success", String::as_str));
    if let Some(tag) = tag {
        reply.raw(b",\"tag\":");
        reply.put(&tag);
    }
    reply.raw(b"}");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        reply.into_bytes(),
    )
        .into_response()
}

/// One method: its answer's arguments as JSON text, or why it failed.
async fn call(
    web: &Shared,
    method: &str,
    arguments: &Map<String, Value>,
) -> Result<Vec<u8>, String> {
    let text = |value: Value| value.to_string().into_bytes();
    // With no broker, an empty list or a start that did nothing would read as success
    // (to Sonarr, every download gone): every method says why instead.
    if let Some(why) = web.link.torrents().borrow().down.clone() {
        return Err(format!("the broker is not running ({why})"));
    }
    match method {
        "session-get" => session_get(web).await.map(text),
        "session-stats" => Ok(text(session_stats(&web.link.torrents().borrow()))),
        "torrent-get" => torrent_get(web, arguments).await,
        "torrent-add" => torrent_add(web, arguments).await.map(text),
        "torrent-start" | "torrent-start-now" => {
            each(web, arguments, Action::Start).await.map(text)
        }
        "torrent-stop" => each(web, arguments, Action::Stop).await.map(text),
        "torrent-verify" => each(web, arguments, Action::Verify).await.map(text),
        "torrent-remove" => {
            let delete = arguments
                .get("delete-local-data")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            each(web, arguments, Action::Remove { delete })
                .await
                .map(text)
        }
        "torrent-set" => torrent_set(web, arguments).await.map(text),
        "free-space" => {
            let arguments = arguments.clone();
            tokio::task::spawn_blocking(move || free_space(&arguments))
                .await
                .map_err(|e| format!("free-space failed: {e}"))?
                .map(text)
        }
        "session-set" => session_set(web, arguments).await.map(text),
        "torrent-set-location" => set_location(web, arguments).await.map(text),
        "torrent-rename-path" => Err(format!("{method}: not supported by this broker yet")),
        "queue-move-top" | "queue-move-up" | "queue-move-down" | "queue-move-bottom" => {
            let to = QueueMove::parse(method.trim_start_matches("queue-move-"))
                .ok_or_else(|| format!("{method}: no such move"))?;
            each(web, arguments, Action::Queue(to)).await.map(text)
        }
        "port-test" | "blocklist-update" => Err(format!("{method}: not supported by this broker")),
        "" => Err("no method named".into()),
        _ => Err("method name not recognized".into()),
    }
}

fn failure(error: Error) -> String {
    match patron_client::proto_error(&error) {
        Some(e) => e.message.clone(),
        None => error.to_string(),
    }
}

async fn session_get(web: &Shared) -> Result<Value, String> {
    let info = web
        .link
        .call(|patron| patron.broker_info())
        .await
        .map_err(failure)?;
    let port = info
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(0);
    let download_dir = info.download_roots.first().cloned().unwrap_or_default();
    let stalled_minutes = info
        .queue
        .stalled_after_secs
        .map_or(STALLED_MINUTES, |secs| secs.div_ceil(60));
    let mut session = json!({
        "version": format!("3.00 (torrent-patron {})", info.version),
        "rpc-version": RPC_VERSION,
        "rpc-version-minimum": RPC_VERSION_MINIMUM,
        "session-id": web.rpc_session,
        "download-dir": download_dir,
        "config-dir": info.state_dir,
        "peer-port": port,
        "peer-port-random-on-start": false,
        "port-forwarding-enabled": false,
        "dht-enabled": !info.loopback_only,
        "lpd-enabled": false,
        "pex-enabled": false,
        "utp-enabled": false,
        "encryption": "preferred",
        "speed-limit-down-enabled": info.limits.download.is_some(),
        "speed-limit-up-enabled": info.limits.upload.is_some(),
        "speed-limit-down": info.limits.download.map_or(0, |rate| rate / SPEED_BYTES),
        "speed-limit-up": info.limits.upload.map_or(0, |rate| rate / SPEED_BYTES),
        "alt-speed-enabled": info.alt.on,
        "alt-speed-down": info.alt.download.map_or(0, |rate| rate / SPEED_BYTES),
        "alt-speed-up": info.alt.upload.map_or(0, |rate| rate / SPEED_BYTES),
        "seedRatioLimited": info.seeding.0.ratio.is_some(),
        "seedRatioLimit": info.seeding.0.ratio.unwrap_or(RATIO),
        "idle-seeding-limit-enabled": info.seeding.0.idle_secs.is_some(),
        "idle-seeding-limit": info.seeding.0.idle_secs.map_or(IDLE_MINUTES, |s| s.div_ceil(60)),
        "download-queue-enabled": info.queue.max_active_downloads.is_some(),
        "download-queue-size": info.queue.max_active_downloads.unwrap_or(QUEUE_SIZE),
        "seed-queue-enabled": info.queue.max_active_seeds.is_some(),
        "seed-queue-size": info.queue.max_active_seeds.unwrap_or(QUEUE_SIZE),
        "start-added-torrents": true,
        "rename-partial-files": false,
        "incomplete-dir-enabled": false,
        "incomplete-dir": "",
        "units": {
            "speed-units": ["kB/s", "MB/s", "GB/s", "TB/s"], "speed-bytes": 1000,
            "size-units": ["kB", "MB", "GB", "TB"], "size-bytes": 1000,
            "memory-units": ["KiB", "MiB", "GiB", "TiB"], "memory-bytes": 1024,
        },
    });
    // (A second object: one `json!` this long passes the macro's recursion limit.)
    let schedule = info.alt.hours;
    let queue = json!({
        "queue-stalled-enabled": info.queue.stalled_after_secs.is_some(),
        "queue-stalled-minutes": stalled_minutes,
        "alt-speed-time-enabled": info.alt.schedule.is_some(),
        "alt-speed-time-begin": schedule.map_or(540, |s| s.begin),
        "alt-speed-time-end": schedule.map_or(1020, |s| s.end),
        "alt-speed-time-day": schedule.map_or(127, |s| transmission_days(s.days)),
    });
    if let (Some(session), Value::Object(queue)) = (session.as_object_mut(), queue) {
        session.extend(queue);
    }
    Ok(session)
}

/// Transmission's speed unit (kB/s: `"speed-bytes": 1000` in `session-get`).
const SPEED_BYTES: u64 = 1000;

/// The queue size shown while a queue is off, and taken when one is turned on without a
/// size: transmission's default.
const QUEUE_SIZE: u32 = 5;

/// The ratio limit shown while there is none, and taken when one is turned on without a
/// value: transmission's default.
const RATIO: f64 = 2.0;

/// The idle seeding limit (minutes) shown while there is none, as `RATIO`.
const IDLE_MINUTES: u64 = 30;

/// The stall time shown while stalls are off, and taken when turned on without one:
/// transmission's default.
const STALLED_MINUTES: u64 = 30;

/// `session-set`: the broker's global rate limits (`speed-limit-down`, `speed-limit-up`,
/// in kB/s, and their `-enabled`), changed now and kept across its restarts as
/// `patron-client limits` changes them. Any other setting is the broker's own, and is
/// refused by name rather than ignored.
async fn session_set(web: &Shared, arguments: &Map<String, Value>) -> Result<Value, String> {
    const CHANGED: [&str; 21] = [
        "alt-speed-enabled",
        "alt-speed-down",
        "alt-speed-up",
        "alt-speed-time-enabled",
        "alt-speed-time-begin",
        "alt-speed-time-end",
        "alt-speed-time-day",
        "seedRatioLimit",
        "seedRatioLimited",
        "idle-seeding-limit",
        "idle-seeding-limit-enabled",
        "speed-limit-down",
        "speed-limit-down-enabled",
        "speed-limit-up",
        "speed-limit-up-enabled",
        "download-queue-enabled",
        "download-queue-size",
        "seed-queue-enabled",
        "seed-queue-size",
        "queue-stalled-enabled",
        "queue-stalled-minutes",
    ];
    if let Some(other) = arguments
        .keys()
        .find(|key| !CHANGED.contains(&key.as_str()))
    {
        return Err(format!(
            "session-set: {other} is the broker's own setting (broker.toml, its options); only the speed limits and the queues are changed here"
        ));
    }
    let change = patron_client::proto::SetLimits {
        torrent: None,
        download: speed_limit(arguments, "speed-limit-down-enabled", "speed-limit-down")?,
        upload: speed_limit(arguments, "speed-limit-up-enabled", "speed-limit-up")?,
        alt: alt_change(web, arguments).await?,
    };
    let queue = patron_client::proto::SetQueue {
        max_active_downloads: queue_size(
            arguments,
            "download-queue-enabled",
            "download-queue-size",
        )?,
        max_active_seeds: queue_size(arguments, "seed-queue-enabled", "seed-queue-size")?,
        stalled_after_secs: match switched(
            arguments,
            "queue-stalled-enabled",
            "queue-stalled-minutes",
            STALLED_MINUTES,
        )? {
            Some(Some(0)) => {
                return Err("queue-stalled-minutes is at least 1 (turn stalls off with queue-stalled-enabled false)".into())
            }
            other => other.map(|minutes| minutes.map(|m| m.saturating_mul(60))),
        },
    };
    // Every argument is read before anything changes: one refused changes nothing.
    let ratio = match (
        arguments.get("seedRatioLimited"),
        arguments.get("seedRatioLimit"),
    ) {
        (Some(Value::Bool(false)), _) => Some(None),
        (_, Some(limit)) => Some(Some(
            limit
                .as_f64()
                .filter(|r| patron_client::proto::valid_ratio_limit(*r))
                .ok_or("seedRatioLimit is a ratio from 0.001 to a million")?,
        )),
        (Some(Value::Bool(true)), None) => Some(Some(RATIO)),
        (Some(_), None) => return Err("seedRatioLimited is true or false".into()),
        (None, None) => None,
    };
    let idle = switched(
        arguments,
        "idle-seeding-limit-enabled",
        "idle-seeding-limit",
        IDLE_MINUTES,
    )?
    .map(|minutes| minutes.map(|m| m.saturating_mul(60)));
    if idle == Some(Some(0)) {
        return Err(
            "idle-seeding-limit is at least 1 (turn it off with idle-seeding-limit-enabled false)"
                .into(),
        );
    }
    if change.download.is_some()
        || change.upload.is_some()
        || change.alt != patron_client::proto::AltChange::default()
    {
        web.link
            .call(move |patron| patron.set_limits(change))
            .await
            .map_err(failure)?;
    }
    if ratio.is_some() || idle.is_some() {
        let change = patron_client::proto::SetSeeding {
            ratio,
            idle_secs: idle,
            ..Default::default()
        };
        web.link
            .call(move |patron| patron.set_seeding(change))
            .await
            .map_err(failure)?;
    }
    if queue != patron_client::proto::SetQueue::default() {
        web.link
            .call(move |patron| patron.set_queue(queue))
            .await
            .map_err(failure)?;
    }
    Ok(json!({}))
}

/// Transmission's day bits (Sunday 1, Monday 2, ... Saturday 64) from the broker's
/// (Monday bit 0 ... Sunday bit 6), and back.
fn transmission_days(days: u8) -> u64 {
    (0..7u8)
        .filter(|d| days & (1 << d) != 0)
        .map(|d| 1u64 << ((d + 1) % 7))
        .sum()
}

fn broker_days(days: u64) -> u8 {
    (0..7u8)
        .filter(|d| days & (1 << ((d + 1) % 7)) != 0)
        .map(|d| 1u8 << d)
        .sum()
}

/// The alternative limits ("turtle mode") `session-set` changes: their rates (kB/s; 0 is
/// none here, as the broker keeps them), their switch, and their schedule and its hours
/// (minutes after midnight and day bits).
async fn alt_change(
    web: &Shared,
    arguments: &Map<String, Value>,
) -> Result<patron_client::proto::AltChange, String> {
    let number = |key: &str| whole(arguments, key);
    let flag = |key: &str| flag(arguments, key);
    let rate = |key: &str| number(key).map(|kb| kb.map(|kb| kb.saturating_mul(SPEED_BYTES)));
    let mut change = patron_client::proto::AltChange {
        download: rate("alt-speed-down")?,
        upload: rate("alt-speed-up")?,
        schedule: None,
        hours: None,
        on: flag("alt-speed-enabled")?,
    };
    let timed = flag("alt-speed-time-enabled")?;
    let (begin, end, day) = (
        number("alt-speed-time-begin")?,
        number("alt-speed-time-end")?,
        number("alt-speed-time-day")?,
    );
    if timed == Some(false) {
        change.schedule = Some(None);
    } else if timed.is_some() || begin.is_some() || end.is_some() || day.is_some() {
        // Each of begin, end and days changed alone keeps the others as the broker has them.
        let now = web
            .link
            .call(|patron| patron.broker_info())
            .await
            .map_err(failure)?
            .alt
            .hours;
        // Transmission's defaults: 09:00 to 17:00, every day.
        let minute = |m: Option<u64>, or: u16| -> Result<u16, String> {
            match m {
                None => Ok(or),
                Some(m) if m < 24 * 60 => Ok(m as u16),
                Some(m) => Err(format!("{m} is not a minute of the day")),
            }
        };
        let schedule = patron_client::proto::AltSchedule {
            begin: minute(begin, now.map_or(540, |s| s.begin))?,
            end: minute(end, now.map_or(1020, |s| s.end))?,
            days: match day {
                Some(d) if d & 127 != 0 => broker_days(d),
                Some(d) => return Err(format!("alt-speed-time-day {d} names no day")),
                None => now.map_or(0x7f, |s| s.days),
            },
        };
        // Turned on with them, or hours alone (the broker keeps them while it is off).
        match timed {
            Some(true) => change.schedule = Some(Some(schedule)),
            _ => change.hours = Some(schedule),
        }
    }
    Ok(change)
}

/// A queue's new size (`Some(None)`: off; `None`: unchanged), from its switch and size.
fn queue_size(
    arguments: &Map<String, Value>,
    enabled_key: &str,
    size_key: &str,
) -> Result<Option<Option<u32>>, String> {
    let size = switched(arguments, enabled_key, size_key, u64::from(QUEUE_SIZE))?;
    size.map(|size| {
        size.map(|n| u32::try_from(n).map_err(|_| format!("{size_key} {n} is too large")))
            .transpose()
    })
    .transpose()
}

/// A setting with an on/off switch in transmission's session (`Some(None)`: off; `None`:
/// unchanged): the value given turns it on, as a user setting one means; a switch turned
/// on alone takes the value `session-get` shows (`shown`), unless the broker has one.
fn switched(
    arguments: &Map<String, Value>,
    enabled_key: &str,
    value_key: &str,
    shown: u64,
) -> Result<Option<Option<u64>>, String> {
    Ok(
        match (flag(arguments, enabled_key)?, whole(arguments, value_key)?) {
            (Some(false), _) => Some(None),
            (_, Some(value)) => Some(Some(value)),
            (Some(true), None) => Some(Some(shown)),
            (None, None) => None,
        },
    )
}

/// A switch of the session's (`None`: not given).
fn flag(arguments: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    arguments
        .get(key)
        .map(|v| v.as_bool().ok_or_else(|| format!("{key} is true or false")))
        .transpose()
}

/// A whole number of the session's (`None`: not given).
fn whole(arguments: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    arguments
        .get(key)
        .map(|v| v.as_u64().ok_or_else(|| format!("{key} is a whole number")))
        .transpose()
}

/// One direction's new limit in bytes a second (`Some(0)`: none; `None`: unchanged), from
/// its kB/s (`limit_key`) and whether it is on (`enabled_key`). A limit given without the
/// switch turns it on, as a user setting one means; this broker keeps no limit that is off.
fn speed_limit(
    arguments: &Map<String, Value>,
    enabled_key: &str,
    limit_key: &str,
) -> Result<Option<u64>, String> {
    let (enabled, limit) = (flag(arguments, enabled_key)?, whole(arguments, limit_key)?);
    match (enabled, limit) {
        (Some(false), _) => Ok(Some(0)),
        (_, Some(0)) => Err(format!(
            "{limit_key} 0 would stop every transfer; pause instead, or set {enabled_key} false for no limit"
        )),
        (_, Some(kilobytes)) => Ok(Some(kilobytes.saturating_mul(SPEED_BYTES))),
        (Some(true), None) => Err(format!(
            "{enabled_key} true needs {limit_key} (kB/s) with it: this broker keeps no limit that is off"
        )),
        (None, None) => Ok(None),
    }
}

fn session_stats(torrents: &Arc<Torrents>) -> Value {
    let list = &torrents.list;
    let paused = list
        .iter()
        .filter(|t| matches!(t.status.state, TorrentState::Paused))
        .count();
    let down: u64 = list.iter().map(|t| t.status.download_rate).sum();
    let up: u64 = list.iter().map(|t| t.status.upload_rate).sum();
    let uploaded: u64 = list.iter().map(|t| t.status.uploaded).sum();
    let stats = json!({
        "uploadedBytes": uploaded, "downloadedBytes": 0, "filesAdded": 0,
        "sessionCount": 1, "secondsActive": 0,
    });
    json!({
        "activeTorrentCount": list.len() - paused,
        "pausedTorrentCount": paused,
        "torrentCount": list.len(),
        "downloadSpeed": down,
        "uploadSpeed": up,
        "cumulative-stats": stats,
        "current-stats": stats,
    })
}

/// The torrents `ids` names (absent: all; a number, a hash, a list of them, or
/// "recently-active"), as the board shows them, in the order named.
fn chosen<'a>(
    torrents: &'a Torrents,
    arguments: &Map<String, Value>,
) -> Result<Vec<&'a TorrentSummary>, String> {
    let list = &torrents.list;
    let Some(ids) = arguments.get("ids") else {
        return Ok(list.iter().collect());
    };
    let wanted: Vec<&Value> = match ids {
        Value::Array(ids) => ids.iter().collect(),
        Value::String(s) if s == "recently-active" => {
            return Ok(list
                .iter()
                .filter(|t| t.status.download_rate > 0 || t.status.upload_rate > 0)
                .collect())
        }
        one => vec![one],
    };
    // The list is in id order; hashes are looked up through a map once there are many, so
    // a request naming thousands stays linear.
    let by_id = |id: u64| {
        list.binary_search_by_key(&id, |t| t.info.id.0)
            .ok()
            .map(|at| &list[at])
    };
    let mut by_hash: Option<HashMap<InfoHash, &TorrentSummary>> = None;
    let mut found = Vec::new();
    // Each torrent once, however often it is named: a request naming one id a million
    // times would otherwise make an answer of gigabytes.
    let mut named = std::collections::HashSet::new();
    for id in wanted {
        let torrent = match id {
            Value::Number(n) => n.as_u64().and_then(by_id),
            Value::String(s) => match TorrentRef::parse(s) {
                Some(TorrentRef::Id(id)) => by_id(id.0),
                Some(TorrentRef::InfoHash(hash)) => by_hash
                    .get_or_insert_with(|| list.iter().map(|t| (t.info.info_hash, t)).collect())
                    .get(&hash)
                    .copied(),
                None => return Err(format!("{s:?} is neither a torrent id nor an info hash")),
            },
            other => return Err(format!("{other} is not a torrent id")),
        };
        // Transmission leaves out ids it does not have.
        if let Some(torrent) = torrent {
            if named.insert(torrent.info.id) {
                found.push(torrent);
            }
        }
    }
    Ok(found)
}

/// `torrent-get`: the board's fields written as they are read; files and peers asked of
/// the broker, one torrent at a time, only when a field names them.
async fn torrent_get(web: &Shared, arguments: &Map<String, Value>) -> Result<Vec<u8>, String> {
    let fields = match arguments.get("fields") {
        Some(Value::Array(fields)) => Fields::parse(fields.iter().filter_map(Value::as_str)),
        _ => return Err("torrent-get needs \"fields\"".into()),
    };
    let torrents = web.link.torrents().borrow().clone();
    let chosen = chosen(&torrents, arguments)?;
    // Files and peers are the broker's to say: asked for every torrent at once (the pool
    // bounds how many run together; a peers answer takes the broker 250 ms to measure
    // rates). A torrent the board shows with no peer is not asked about them.
    let files = match fields.wants_files() {
        true => {
            futures_util::future::join_all(chosen.iter().map(|torrent| {
                let id = TorrentRef::Id(torrent.info.id);
                async move { Some(web.link.call(move |patron| patron.files(id)).await) }
            }))
            .await
        }
        false => Vec::new(),
    };
    let peer_lists = match fields.peers {
        true => {
            futures_util::future::join_all(chosen.iter().map(|torrent| {
                let id = TorrentRef::Id(torrent.info.id);
                let connected = torrent.status.peers > 0;
                async move {
                    match connected {
                        true => Some(web.link.call(move |patron| patron.peers(id)).await),
                        false => None,
                    }
                }
            }))
            .await
        }
        false => Vec::new(),
    };
    let (mut files, mut peer_lists) = (files.into_iter(), peer_lists.into_iter());
    // About what 15 fields of a torrent take, so a list is written with few reallocations
    // (at most 64 MiB reserved: each torrent is named once, but fields may be many).
    let mut out = Json::with_capacity((64 + chosen.len() * 400).min(64 << 20));
    out.raw(b"{\"torrents\":[");
    for (n, torrent) in chosen.iter().enumerate() {
        out.raw(if n == 0 { b"{" } else { b",{" });
        let mut after = fields.write_board(torrent, &mut out);
        if fields.wants_files() {
            // A torrent closed since the board was read has no files: `[]`, as
            // Transmission gives for a torrent without metadata.
            let answer = files.next().flatten().transpose();
            let list = gone_is_empty(answer)?.map_or_else(Vec::new, |l| l.files);
            after = fields.write_files(&torrent.info.name, &list, after, &mut out);
        }
        if fields.peers {
            let answer = peer_lists.next().flatten().transpose();
            let list = gone_is_empty(answer)?.map_or_else(Vec::new, |l| l.peers);
            if after {
                out.raw(b",");
            }
            out.raw(b"\"peers\":");
            out.put(&peers(&list));
        }
        out.raw(b"}");
    }
    out.raw(b"]}");
    Ok(out.into_bytes())
}

/// A broker's answer about one torrent: `None` when the torrent went meanwhile; any other
/// failure fails the whole request (never an answer that silently lacks a field).
fn gone_is_empty<T>(answer: Result<Option<T>, Error>) -> Result<Option<T>, String> {
    match answer {
        Ok(found) => Ok(found),
        Err(error) => match patron_client::proto_error(&error) {
            Some(e) if e.kind == patron_client::proto::ErrorKind::UnknownTorrent => Ok(None),
            _ => Err(failure(error)),
        },
    }
}

/// Peers as Transmission lists them.
fn peers(peers: &[patron_client::proto::PeerEntry]) -> Value {
    peers
        .iter()
        .map(|p| {
            let (address, port) = p.address.rsplit_once(':').unwrap_or((&p.address, "0"));
            json!({
                "address": address.trim_start_matches('[').trim_end_matches(']'),
                "port": port.parse::<u16>().unwrap_or(0),
                "clientName": p.client.clone().unwrap_or_default(),
                "isIncoming": p.incoming,
                "rateToClient": p.download_rate,
                "rateToPeer": p.upload_rate,
                "progress": p.progress.unwrap_or(0.0),
                "flagStr": "",
                "isEncrypted": false,
                "isUTP": false,
            })
        })
        .collect()
}

async fn torrent_add(web: &Shared, arguments: &Map<String, Value>) -> Result<Value, String> {
    let source = match (
        arguments.get("metainfo").and_then(Value::as_str),
        arguments.get("filename").and_then(Value::as_str),
    ) {
        (Some(metainfo), _) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(metainfo.trim())
                .map_err(|e| format!("metainfo is not base64: {e}"))?;
            TorrentSource::TorrentFile(bytes)
        }
        (None, Some(name)) if name.starts_with("magnet:") => TorrentSource::Magnet(name.to_owned()),
        (None, Some(name)) if name.starts_with("http://") || name.starts_with("https://") => {
            return Err("this broker fetches nothing from the web: download the .torrent first and send it as metainfo".into())
        }
        (None, Some(path)) => {
            // Off the async workers: a path may be slow to open or read (a hung mount).
            let path = path.to_owned();
            let read = tokio::task::spawn_blocking(move || read_torrent_file(&path)).await;
            TorrentSource::TorrentFile(read.map_err(|e| format!("cannot read the file: {e}"))??)
        }
        (None, None) => return Err("torrent-add needs \"filename\" or \"metainfo\"".into()),
    };
    let mut create = CreateNewTorrent::new(source);
    create.output = arguments
        .get("download-dir")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    create.paused = arguments
        .get("paused")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(Value::Array(wanted)) = arguments.get("files-wanted") {
        let only: Vec<FileRef> = wanted
            .iter()
            .filter_map(Value::as_u64)
            .filter_map(|n| u32::try_from(n).ok())
            .map(FileRef::Index)
            .collect();
        if !only.is_empty() {
            create.only_files = Some(only);
        }
    }
    if let Some(labels) = arguments.get("labels") {
        create.labels = rpc_labels(labels)?;
    }
    let created = match magnet_hash(&create.source) {
        None => web.link.create(create).await,
        // Transmission answers a magnet's add at once; the broker answers once it has the
        // metadata (up to its timeout). The add goes on in its task; past a few seconds the
        // answer is the torrent as the board shows it, resolving.
        Some(hash) => {
            let link = Arc::clone(&web.link);
            let adding = tokio::spawn(async move { link.create(create).await });
            match tokio::time::timeout(MAGNET_ANSWER, adding).await {
                Ok(joined) => joined.map_err(|e| format!("the add failed: {e}"))?,
                Err(_) => return resolving(web, hash).await,
            }
        }
    }
    .map_err(failure)?;
    let (key, info) = match &created {
        Created::New(info) | Created::Queued(info) => ("torrent-added", info),
        Created::AlreadyDownloading(info, _) => ("torrent-duplicate", info),
    };
    Ok(
        json!({ key: {"id": info.id.0, "name": info.name, "hashString": info.info_hash.to_string()} }),
    )
}

/// How long a magnet's add is waited for before the answer says it is resolving.
const MAGNET_ANSWER: std::time::Duration = std::time::Duration::from_secs(3);

/// The info hash a magnet names (`xt=urn:btih:`, hex or base32); `None` for a .torrent.
fn magnet_hash(source: &TorrentSource) -> Option<InfoHash> {
    let TorrentSource::Magnet(link) = source else {
        return None;
    };
    let query = link.strip_prefix("magnet:?")?;
    let btih = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("xt=urn:btih:"))?;
    match btih.len() {
        40 => InfoHash::from_hex(btih),
        32 => base32_hash(btih),
        _ => None,
    }
}

/// 32 base32 digits (RFC 4648) as 20 bytes.
fn base32_hash(text: &str) -> Option<InfoHash> {
    let mut bits: u64 = 0;
    let (mut count, mut out) = (0u32, Vec::with_capacity(20));
    for c in text.bytes() {
        let value = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        bits = (bits << 5) | u64::from(value);
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    <[u8; 20]>::try_from(out).ok().map(InfoHash)
}

/// The answer for a magnet still resolving: the torrent as the board shows it (it is there
/// from the start, resolving its metadata), waited for a second at most.
async fn resolving(web: &Shared, hash: InfoHash) -> Result<Value, String> {
    let mut torrents = web.link.torrents();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let found = torrents
            .borrow_and_update()
            .list
            .iter()
            .find(|t| t.info.info_hash == hash)
            .map(|t| (t.info.id.0, t.info.name.clone()));
        if let Some((id, name)) = found {
            return Ok(
                json!({"torrent-added": {"id": id, "name": name, "hashString": hash.to_string()}}),
            );
        }
        if tokio::time::timeout_at(deadline, torrents.changed())
            .await
            .is_err()
        {
            return Err(format!(
                "the magnet {hash} is being resolved, but is not on the board yet: list the torrents again in a moment"
            ));
        }
    }
}

/// A .torrent named by path: a regular file, read up to the broker's largest request (a
/// FIFO or `/dev/zero` would otherwise hold this process or fill its memory). Opened
/// without blocking (a FIFO's open waits for a writer), then checked for what it is.
fn read_torrent_file(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let plain =
        |e: std::io::Error| format!("cannot read {path}: {}", patron_client::plain_io_error(&e));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(plain)?;
    if !file.metadata().map_err(plain)?.is_file() {
        return Err(format!(
            "{path} is not a .torrent file (not a regular file)"
        ));
    }
    let most = patron_client::proto::MAX_REQUEST_BYTES as u64;
    let mut bytes = Vec::new();
    file.take(most + 1).read_to_end(&mut bytes).map_err(plain)?;
    if bytes.len() as u64 > most {
        return Err(format!(
            "{path} is larger than any .torrent the broker takes"
        ));
    }
    Ok(bytes)
}

#[derive(Clone, Copy)]
enum Action {
    Start,
    Stop,
    Verify,
    Remove { delete: bool },
    Queue(QueueMove),
}

/// `torrent-set-location`: each torrent `ids` names moves its data to `location` (`move`
/// true), one after the other, each tried whatever became of the others. Pointing a torrent
/// at data already there (`move` false, `transmission-remote --find`) is refused: the
/// broker moves data itself, so that one complete copy is named at every instant.
async fn set_location(web: &Shared, arguments: &Map<String, Value>) -> Result<Value, String> {
    let location = arguments
        .get("location")
        .and_then(Value::as_str)
        .ok_or("torrent-set-location: no location given")?
        .to_owned();
    if arguments.get("move").and_then(Value::as_bool) != Some(true) {
        return Err(
            "torrent-set-location: only \"move\": true is supported (the broker moves the data itself; it does not take data already moved by hand)"
                .into(),
        );
    }
    let torrents = web.link.torrents().borrow().clone();
    let mut first_failure = None;
    for torrent in chosen(&torrents, arguments)? {
        let id = TorrentRef::Id(torrent.info.id);
        let to = location.clone();
        let done = web
            .link
            .call(move |patron| patron.move_storage(id, to).map(drop))
            .await;
        if let Err(error) = done {
            first_failure.get_or_insert_with(|| failure(error));
        }
    }
    match first_failure {
        Some(why) => Err(why),
        None => Ok(json!({})),
    }
}

/// An action on every torrent `ids` names, each tried whatever became of the others; the
/// first failure is the answer's result.
async fn each(
    web: &Shared,
    arguments: &Map<String, Value>,
    action: Action,
) -> Result<Value, String> {
    let torrents = web.link.torrents().borrow().clone();
    let mut chosen = chosen(&torrents, arguments)?;
    // Several moved at once keep their order among themselves, as in transmission: those
    // going up are moved first-ranked first, those going down last-ranked first.
    if let Action::Queue(to) = action {
        chosen.sort_by_key(|t| t.status.queue_position.unwrap_or(u32::MAX));
        if matches!(to, QueueMove::Top | QueueMove::Down) {
            chosen.reverse();
        }
    }
    let mut first_failure = None;
    for torrent in chosen {
        let id = TorrentRef::Id(torrent.info.id);
        let state = torrent.status.state.clone();
        let done = web
            .link
            .call(move |patron| match action {
                // Starting a torrent that runs is a success in Transmission. One checking
                // its data is resumed all the same: it may have been added paused (the
                // broker resumes it when the check ends).
                Action::Start
                    if matches!(
                        state,
                        TorrentState::Downloading
                            | TorrentState::Seeding
                            | TorrentState::ResolvingMetadata
                    ) =>
                {
                    Ok(())
                }
                Action::Start => patron.resume(id).map(drop),
                Action::Stop if matches!(state, TorrentState::Paused) => Ok(()),
                Action::Stop => patron.pause(id).map(drop),
                Action::Verify => patron.recheck(id).map(drop),
                // The web patron holds nothing: a remove stops it for everyone, as
                // Transmission's does.
                Action::Remove { delete } => patron.close(id, delete, true).map(drop),
                Action::Queue(to) => patron.move_in_queue(id, to).map(drop),
            })
            .await;
        if let Err(error) = done {
            first_failure.get_or_insert_with(|| failure(error));
        }
    }
    match first_failure {
        Some(why) => Err(why),
        None => Ok(json!({})),
    }
}

/// A torrent's own seeding limits from `torrent-set`: a mode (0 the broker's, 1 its own
/// value, 2 none) and its value (a ratio; minutes idle); a value alone is its own.
fn own_seeding(
    arguments: &Map<String, Value>,
) -> Result<patron_client::proto::OwnSeedingChange, String> {
    use patron_client::proto::SeedLimit;
    fn one<T>(
        arguments: &Map<String, Value>,
        mode_key: &str,
        value_key: &str,
        value: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Option<SeedLimit<T>>>, String> {
        let given = match arguments.get(value_key) {
            None => None,
            Some(v) => Some(value(v).ok_or_else(|| format!("{value_key} {v} is out of range"))?),
        };
        let mode = match arguments.get(mode_key) {
            None => None,
            Some(v) => Some(v.as_u64().filter(|m| *m <= 2).ok_or_else(|| {
                format!("{mode_key} is 0 (the broker's), 1 (its own) or 2 (none)")
            })?),
        };
        Ok(match (mode, given) {
            (Some(0), _) => Some(None),
            (Some(2), _) => Some(Some(SeedLimit::Unlimited)),
            (_, Some(value)) => Some(Some(SeedLimit::At(value))),
            (Some(_), None) => return Err(format!("{mode_key} 1 needs {value_key} with it")),
            (None, None) => None,
        })
    }
    let ratio = one(arguments, "seedRatioMode", "seedRatioLimit", |v| {
        v.as_f64().filter(|r| r.is_finite() && *r > 0.0)
    })?;
    let idle = one(arguments, "seedIdleMode", "seedIdleLimit", |v| {
        v.as_u64().filter(|m| *m > 0).map(|m| m.saturating_mul(60))
    })?;
    Ok(patron_client::proto::OwnSeedingChange {
        ratio,
        seed_time_secs: None,
        idle_secs: idle,
    })
}

/// Transmission's `labels`: a list of strings, each a label the broker takes.
fn rpc_labels(value: &Value) -> Result<Vec<String>, String> {
    let list = value.as_array().ok_or("labels is a list of strings")?;
    let labels = list
        .iter()
        .map(|l| {
            l.as_str()
                .map(str::to_owned)
                .ok_or("labels is a list of strings".to_owned())
        })
        .collect::<Result<Vec<String>, String>>()?;
    patron_client::proto::valid_labels(&labels)?;
    Ok(labels)
}

async fn torrent_set(web: &Shared, arguments: &Map<String, Value>) -> Result<Value, String> {
    use std::collections::HashSet;
    const TAKEN: [&str; 12] = [
        "ids",
        "labels",
        "seedRatioLimit",
        "seedRatioMode",
        "seedIdleLimit",
        "seedIdleMode",
        "files-wanted",
        "files-unwanted",
        "downloadLimit",
        "downloadLimited",
        "uploadLimit",
        "uploadLimited",
    ];
    if let Some(other) = arguments.keys().find(|k| !TAKEN.contains(&k.as_str())) {
        return Err(format!(
            "torrent-set: {other} is not supported by this broker yet"
        ));
    }
    // Transmission's meaning: absent, nothing changes; an empty list, every file.
    let indices = |key: &str| -> Result<Option<HashSet<u32>>, String> {
        match arguments.get(key) {
            None => Ok(None),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| format!("{key}: {v} is not a file index"))
                })
                .collect::<Result<HashSet<_>, _>>()
                .map(Some),
            Some(other) => Err(format!("{key} must be a list of file indices, not {other}")),
        }
    };
    let (wanted, unwanted) = (indices("files-wanted")?, indices("files-unwanted")?);
    // Each torrent's own limits, in kB/s, as `patron-client limits ID` sets them.
    let download = speed_limit(arguments, "downloadLimited", "downloadLimit")?;
    let upload = speed_limit(arguments, "uploadLimited", "uploadLimit")?;
    // Every argument read and checked before anything changes: a bad one changes nothing.
    let labels = arguments.get("labels").map(rpc_labels).transpose()?;
    let torrents = web.link.torrents().borrow().clone();
    let chosen = chosen(&torrents, arguments)?;
    let own = own_seeding(arguments)?;
    if own != patron_client::proto::OwnSeedingChange::default() {
        for torrent in &chosen {
            let change = patron_client::proto::SetSeeding {
                torrent: Some(TorrentRef::Id(torrent.info.id)),
                own,
                ..Default::default()
            };
            web.link
                .call(move |patron| patron.set_seeding(change).map(drop))
                .await
                .map_err(failure)?;
        }
    }
    if let Some(labels) = labels {
        for torrent in &chosen {
            let change = patron_client::proto::SetLabels {
                torrent: TorrentRef::Id(torrent.info.id),
                labels: labels.clone(),
            };
            web.link
                .call(move |patron| patron.set_labels(change).map(drop))
                .await
                .map_err(failure)?;
        }
    }
    if download.is_some() || upload.is_some() {
        for torrent in &chosen {
            let change = patron_client::proto::SetLimits {
                torrent: Some(TorrentRef::Id(torrent.info.id)),
                download,
                upload,
                alt: Default::default(),
            };
            web.link
                .call(move |patron| patron.set_limits(change).map(drop))
                .await
                .map_err(failure)?;
        }
    }
    if wanted.is_none() && unwanted.is_none() {
        return Ok(json!({}));
    }
    for torrent in chosen {
        let id = TorrentRef::Id(torrent.info.id);
        let (wanted, unwanted) = (wanted.clone(), unwanted.clone());
        web.link
            .call(move |patron| {
                let files = patron.files(id)?;
                let count = files.files.len();
                let names = |set: &Option<HashSet<u32>>| match set {
                    Some(set) if set.is_empty() => Some(None),
                    Some(set) => Some(Some(set.clone())),
                    None => None,
                };
                for set in [&wanted, &unwanted].into_iter().flatten() {
                    if let Some(past) = set.iter().find(|&&i| i as usize >= count) {
                        return Err(patron_client::Error::Request(
                            patron_client::proto::ProtoError::bad_request(format!(
                                "file {past} of a torrent of {count} files"
                            )),
                        ));
                    }
                }
                // `Some(None)`: every file.
                let (wanted, unwanted) = (names(&wanted), names(&unwanted));
                let named = |which: &Option<Option<HashSet<u32>>>, index: u32| match which {
                    Some(None) => true,
                    Some(Some(set)) => set.contains(&index),
                    None => false,
                };
                let only: Vec<FileRef> = files
                    .files
                    .iter()
                    .filter(|f| {
                        (f.selected || named(&wanted, f.index)) && !named(&unwanted, f.index)
                    })
                    .map(|f| FileRef::Index(f.index))
                    .collect();
                patron.select_files(id, only).map(drop)
            })
            .await
            .map_err(failure)?;
    }
    Ok(json!({}))
}

fn free_space(arguments: &Map<String, Value>) -> Result<Value, String> {
    let path = arguments
        .get("path")
        .and_then(Value::as_str)
        .ok_or("free-space needs \"path\"")?;
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| format!("{path}: {e}"))?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let total = stat.blocks().saturating_mul(stat.fragment_size());
    Ok(json!({"path": path, "size-bytes": free, "total_size": total}))
}

/// A session id for this process's life: 48 random hex digits.
pub fn new_session() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magnets_hash_is_read_in_hex_and_in_base32() {
        let hex = "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=x";
        let hash = magnet_hash(&TorrentSource::Magnet(hex.into())).expect("hex");
        assert_eq!(hash.to_string(), "c12fe1c06bba254a9dc9f519b335aa7c1367a88a");
        // The same 20 bytes in base32 (RFC 4648), lowercase as some links write them.
        let base32 = "magnet:?dn=x&xt=urn:btih:yex6dqdlxisuvhoj6um3gnnkpqjwpkek";
        assert_eq!(
            magnet_hash(&TorrentSource::Magnet(base32.into())),
            Some(hash)
        );
        for bad in ["magnet:?xt=urn:btih:zz", "magnet:?dn=x", "http://x"] {
            assert_eq!(
                magnet_hash(&TorrentSource::Magnet(bad.into())),
                None,
                "{bad}"
            );
        }
    }
}
