//! `GET /metrics` in Prometheus' text format: torrents by state, bytes, rates and peers read
//! off the board; patrons and the broker's budgets in use from one `BrokerInfo` request.
//! And `GET /api/torrents/{id}/playlist.m3u`: a torrent's media files as a playlist a player
//! opens (each entry a `/files` URL, with the token for players that take it in the URL).

use crate::api::{torrent_ref, Failure};
use crate::Shared;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

/// The handler of `/metrics`.
pub async fn metrics(State(web): State<Shared>) -> Response {
    let torrents = web.link.torrents().borrow().clone();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP torrent_patron_{name} {help}");
        let _ = writeln!(out, "# TYPE torrent_patron_{name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "torrent_patron_{name}{labels} {value}");
        }
    };
    gauge(
        "broker_up",
        "Whether a broker runs (1) or not (0).",
        &[(String::new(), u64::from(torrents.down.is_none()))],
    );
    let states = [
        "resolving-metadata",
        "checking",
        "downloading",
        "seeding",
        "paused",
        "error",
        "queued",
        "moving",
    ];
    let by_state: Vec<(String, u64)> = states
        .iter()
        .map(|state| {
            let n = torrents
                .list
                .iter()
                .filter(|t| t.status.state.as_str() == *state)
                .count();
            (format!("{{state=\"{state}\"}}"), n as u64)
        })
        .collect();
    gauge("torrents", "Torrents the broker runs, by state.", &by_state);
    let sum = |f: fn(&patron_client::proto::TorrentStatus) -> u64| -> u64 {
        torrents.list.iter().map(|t| f(&t.status)).sum()
    };
    gauge(
        "bytes_done",
        "Verified bytes of every torrent's chosen files.",
        &[(String::new(), sum(|s| s.bytes_done))],
    );
    gauge(
        "bytes_total",
        "Bytes of every torrent's chosen files.",
        &[(String::new(), sum(|s| s.bytes_total))],
    );
    gauge(
        "uploaded_bytes",
        "Bytes uploaded in this broker run.",
        &[(String::new(), sum(|s| s.uploaded))],
    );
    gauge(
        "download_rate_bytes",
        "Download rate, bytes per second.",
        &[(String::new(), sum(|s| s.download_rate))],
    );
    gauge(
        "upload_rate_bytes",
        "Upload rate, bytes per second.",
        &[(String::new(), sum(|s| s.upload_rate))],
    );
    gauge(
        "peers",
        "Connected peers, all torrents.",
        &[(String::new(), sum(|s| u64::from(s.peers)))],
    );
    if let Ok(info) = web.link.call(|patron| patron.broker_info()).await {
        let pair = |name: &str, (used, limit): (u64, u64)| {
            [
                (format!("{{budget=\"{name}\",of=\"used\"}}"), used),
                (format!("{{budget=\"{name}\",of=\"limit\"}}"), limit),
            ]
        };
        let small = |(a, b): (u32, u32)| (u64::from(a), u64::from(b));
        let mut budgets = Vec::new();
        budgets.extend(pair("files", info.files));
        budgets.extend(pair(
            "open_files",
            small((info.open_files, info.open_files_limit)),
        ));
        budgets.extend(pair("large_requests", small(info.large_requests)));
        budgets.extend(pair("large_request_bytes", info.large_request_bytes));
        budgets.extend(pair("board_waiters", small(info.board_waiters)));
        budgets.extend(pair("unread_bytes", info.unread_bytes));
        budgets.extend(pair("unread_regions", small(info.unread_regions)));
        gauge(
            "patrons",
            "Patrons connected (this web patron's connections among them).",
            &[(String::new(), u64::from(info.patrons))],
        );
        gauge(
            "streams",
            "Streams open.",
            &[(String::new(), u64::from(info.streams))],
        );
        gauge(
            "budget",
            "The broker's budgets: in use and limit.",
            &budgets,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The media files a playlist lists.
const MEDIA: [&str; 14] = [
    "mp4", "m4v", "mkv", "webm", "ogv", "avi", "mov", "mp3", "m4a", "aac", "ogg", "opus", "flac",
    "wav",
];

/// The handler of `/api/torrents/{id}/playlist.m3u`.
pub async fn playlist(
    State(web): State<Shared>,
    Path(torrent): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let torrent = torrent_ref(&torrent)?;
    let list = web.link.call(move |patron| patron.files(torrent)).await?;
    // The name the client reached this server by (checked by the access guard).
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // The token goes into the URLs (for players that take it there) only for a client that
    // sent it: the page's cookie is per process and never becomes the lasting token.
    let sent_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::access::basic_credentials)
        .is_some();
    let credentials = match (web.access.token(), sent_token) {
        (Some(token), true) => format!("any:{token}@"),
        _ => String::new(),
    };
    let mut out = String::from("#EXTM3U\n");
    for file in &list.files {
        let extension = file
            .path
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        if !MEDIA.contains(&extension.as_str()) {
            continue;
        }
        // A name with a line break would forge an entry.
        let title: String = file
            .path
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(out, "#EXTINF:-1,{title}");
        let _ = writeln!(
            out,
            "http://{credentials}{host}/files/{}/{}",
            list.torrent.0, file.index
        );
    }
    Ok((
        [
            (header::CONTENT_TYPE, "audio/x-mpegurl; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"playlist.m3u\"",
            ),
        ],
        out,
    )
        .into_response())
}
