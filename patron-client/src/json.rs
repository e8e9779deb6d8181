//! The JSON vocabulary every patron speaks to scripts: the CLI's `--json`, pipe mode, the
//! web patron's API. One function per thing, so that a field is named once.

use crate::Error;
use proto::{
    BannedPeer, Event, FileEntry, MadeTorrent, PeerEntry, QueueSettings, RateLimits, TorrentInfo,
    TorrentStatus, TorrentSummary,
};
use serde_json::{json, Value};

/// An error as a JSON event: `kind` is the protocol's error kind when the broker refused
/// the request, else what failed on this side.
pub fn error_json(error: &Error) -> Value {
    let message = match crate::proto_error(error) {
        Some(e) => e.message.clone(),
        None => error.to_string(),
    };
    json!({"event": "error", "kind": error.kind(), "message": message})
}

/// A made torrent as a JSON event (callers add where its .torrent went).
pub fn made_json(made: &MadeTorrent) -> Value {
    json!({
        "event": "made",
        "info_hash": made.info_hash.to_string(),
        "name": made.name,
        "total_bytes": made.total_bytes,
        "pieces": made.pieces,
        "piece_size": made.piece_size,
        "seeding_id": made.seeding.as_ref().map(|s| s.id.0),
    })
}

/// A torrent's identity under `event` (`created`, `already-downloading`, `following`).
pub fn info_json(event: &str, info: &TorrentInfo) -> Value {
    json!({
        "event": event,
        "id": info.id.0,
        "info_hash": info.info_hash.to_string(),
        "name": info.name,
        "save_folder": info.save_folder,
        "total_bytes": info.total_bytes,
    })
}

/// A torrent's status (`status`), as the board and the broker give it.
pub fn status_json(status: &TorrentStatus) -> Value {
    let error = match &status.state {
        proto::TorrentState::Error(message) => Value::from(message.clone()),
        _ => Value::Null,
    };
    json!({
        "event": "status",
        "id": status.id.0,
        "info_hash": status.info_hash.to_string(),
        "name": status.name,
        "state": status.state.as_str(),
        "error": error,
        "progress": status.progress,
        "bytes_done": status.bytes_done,
        "bytes_total": status.bytes_total,
        "download_rate": status.download_rate,
        "upload_rate": status.upload_rate,
        "uploaded": status.uploaded,
        "peers": status.peers,
        "seeds": status.seeds,
        "eta_secs": status.eta_secs,
        "complete": status.complete,
        "queue_position": status.queue_position,
        "downloaded": status.downloaded,
        "ratio": status.ratio(),
        "seeding_secs": status.seeding_secs,
        "ratio_limit": status.seed_limits.ratio,
        "seed_time_limit_secs": status.seed_limits.seed_time_secs,
        "idle_seed_limit_secs": status.seed_limits.idle_secs,
        "labels": status.labels,
    })
}

/// A torrent as `list` shows it (`torrent`): its status, save folder, holders, ephemeral.
pub fn summary_json(summary: &TorrentSummary) -> Value {
    let mut value = status_json(&summary.status);
    value["event"] = "torrent".into();
    value["save_folder"] = summary.info.save_folder.clone().into();
    value["holders"] = summary.holders.into();
    value["ephemeral"] = summary.ephemeral.into();
    value
}

/// The broker as `broker status --json` and pipe mode's `info` print it: `others`, the
/// patrons connected besides the one asking; `started`, what `broker start` did.
pub fn broker_json(info: &proto::BrokerInfo, started: Option<bool>, others: u32) -> Value {
    let mut value = json!({
        "event": "broker",
        "state": "running",
        "started": started,
        "pid": info.pid,
        "version": info.version,
        "state_dir": info.state_dir,
        "listen": info.listen,
        "loopback_only": info.loopback_only,
        "download_roots": info.download_roots,
        "patrons": others,
        "torrents": info.torrents,
        "kept": info.kept,
        "streams": info.streams,
        "open_files": info.open_files,
        "open_files_limit": info.open_files_limit,
        "large_requests": info.large_requests.0,
        "large_requests_limit": info.large_requests.1,
        "large_request_bytes": info.large_request_bytes.0,
        "large_request_bytes_limit": info.large_request_bytes.1,
        "files": info.files.0,
        "files_limit": info.files.1,
        "board_waiters": info.board_waiters.0,
        "board_waiters_limit": info.board_waiters.1,
        "unread_bytes": info.unread_bytes.0,
        "unread_bytes_limit": info.unread_bytes.1,
        "unread_regions": info.unread_regions.0,
        "unread_regions_limit": info.unread_regions.1,
        "max_download_rate": info.limits.download,
        "max_upload_rate": info.limits.upload,
        "alt_download_rate": info.alt.download,
        "alt_upload_rate": info.alt.upload,
        "alt_schedule": info.alt.schedule.map(|s| s.to_string()),
        "alt_hours": info.alt.hours.map(|s| s.to_string()),
        "alt_on": info.alt.on,
        "ratio_limit": info.seeding.0.ratio,
        "seed_time_limit_secs": info.seeding.0.seed_time_secs,
        "idle_seed_limit_secs": info.seeding.0.idle_secs,
        "seed_limit_action": info.seeding.1.as_str(),
        "max_active_downloads": info.queue.max_active_downloads,
        "max_active_seeds": info.queue.max_active_seeds,
        "stalled_after_secs": info.queue.stalled_after_secs,
    });
    // (Past json!'s recursion limit in one object.)
    value["watch_dir"] = info.watch_dir.clone().into();
    value["move_completed_to"] = info.move_completed_to.clone().into();
    // Only `broker start` says whether it started the broker.
    if let (None, Some(object)) = (started, value.as_object_mut()) {
        object.remove("started");
    }
    value
}

/// The broker's global rate limits, as `limits` prints them (`null`: no limit).
pub fn limits_json(limits: &RateLimits, alt: Option<&proto::AltSpeed>) -> Value {
    let mut value = json!({
        "event": "limits",
        "max_download_rate": limits.download,
        "max_upload_rate": limits.upload,
    });
    if let Some(alt) = alt {
        value["alt_download_rate"] = alt.download.into();
        value["alt_upload_rate"] = alt.upload.into();
        value["alt_schedule"] = alt.schedule.map(|s| s.to_string()).into();
        value["alt_hours"] = alt.hours.map(|s| s.to_string()).into();
        value["alt_on"] = alt.on.into();
    }
    value
}

/// The broker's queue settings, as `queue` prints them (`null`: no limit, never stalled).
pub fn queue_json(queue: &QueueSettings) -> Value {
    json!({
        "event": "queue",
        "max_active_downloads": queue.max_active_downloads,
        "max_active_seeds": queue.max_active_seeds,
        "stalled_after_secs": queue.stalled_after_secs,
    })
}

/// Seeding limits in force and what is done past one, as `set` prints them (`null`: none).
pub fn seeding_json(limits: &proto::SeedingLimits, action: proto::SeedAction) -> Value {
    json!({
        "event": "seeding",
        "ratio_limit": limits.ratio,
        "seed_time_limit_secs": limits.seed_time_secs,
        "idle_seed_limit_secs": limits.idle_secs,
        "seed_limit_action": action.as_str(),
    })
}

/// A torrent's own (or a label's) seeding limit as JSON: a number, `"none"` (none at all),
/// or null (not its own: the next one's applies).
fn own_limit<T: Into<Value>>(limit: Option<proto::SeedLimit<T>>) -> Value {
    match limit {
        None => Value::Null,
        Some(proto::SeedLimit::Unlimited) => "none".into(),
        Some(proto::SeedLimit::At(value)) => value.into(),
    }
}

/// One label and what it carries, as `labels` lists it (`label`).
pub fn label_json(label: &proto::LabelSettings) -> Value {
    json!({
        "event": "label",
        "name": label.name,
        "folder": label.folder,
        "max_download_rate": label.limits.download,
        "max_upload_rate": label.limits.upload,
        "ratio_limit": own_limit(label.seeding.ratio),
        "seed_time_limit_secs": own_limit(label.seeding.seed_time_secs),
        "idle_seed_limit_secs": own_limit(label.seeding.idle_secs),
        "torrents": label.torrents,
    })
}

/// One file of a torrent, as `files` lists it.
pub fn file_json(file: &FileEntry) -> serde_json::Value {
    json!({
        "index": file.index,
        "path": file.path,
        "size": file.size,
        "bytes_done": file.bytes_done,
        "selected": file.selected,
    })
}

/// One connected peer, as `peers` lists it.
pub fn peer_json(peer: &PeerEntry) -> serde_json::Value {
    json!({
        "address": peer.address,
        "client": peer.client,
        "incoming": peer.incoming,
        "download_rate": peer.download_rate,
        "upload_rate": peer.upload_rate,
        "downloaded": peer.downloaded,
        "uploaded": peer.uploaded,
        "progress": peer.progress,
    })
}

/// A banned peer as JSON: `address` and `reason`.
pub fn banned_json(peer: &BannedPeer) -> serde_json::Value {
    json!({
        "address": peer.address,
        "reason": peer.reason,
    })
}

/// Any event as its JSON line (without `request`).
pub fn event_json(event: Event) -> Value {
    match event {
        Event::NewTorrentCreated {
            torrent, queued, ..
        } => {
            let mut value = info_json("created", &torrent);
            value["queued"] = queued.into();
            value
        }
        Event::TorrentAlreadyDownloading {
            torrent,
            not_applied,
            ..
        } => {
            let mut value = info_json("already-downloading", &torrent);
            value["not_applied"] = not_applied.into();
            value
        }
        Event::Following { torrent, .. } => info_json("following", &torrent),
        Event::TorrentStartFail { error, .. } => json!({
            "event": "start-failed", "kind": error.kind.to_string(), "message": error.message,
        }),
        Event::Error { error, .. } => json!({
            "event": "error", "kind": error.kind.to_string(), "message": error.message,
        }),
        Event::TorrentClosed {
            id,
            stopped,
            data_deleted,
            ..
        } => json!({
            "event": "closed", "id": id.0, "stopped": stopped, "data_deleted": data_deleted,
        }),
        Event::TorrentList { torrents, .. } => json!({
            "event": "list",
            "torrents": torrents.iter().map(summary_json).collect::<Vec<_>>(),
        }),
        Event::Status { status, .. } | Event::TorrentStatusUpdate(status) => status_json(&status),
        Event::TorrentMade { made, .. } => made_json(&made),
        // As `patron-client --json broker status` prints it (this patron is one of those
        // connected).
        Event::BrokerInfo { info, .. } => {
            let others = info.patrons.saturating_sub(1);
            broker_json(&info, None, others)
        }
        Event::Ok { .. } => json!({"event": "ok"}),
        Event::Limits { limits, alt, .. } => limits_json(&limits, alt.as_ref()),
        Event::Queue { queue, .. } => queue_json(&queue),
        Event::Seeding { limits, action, .. } => seeding_json(&limits, action),
        Event::Labels { labels, .. } => json!({
            "event": "labels",
            "labels": labels.iter().map(label_json).collect::<Vec<_>>(),
        }),
        Event::TorrentGone { id, reason } => {
            json!({"event": "gone", "id": id.0, "reason": reason})
        }
        Event::BrokerStopping { reason } => json!({"event": "broker-stopping", "reason": reason}),
        Event::Disconnected { reason } => json!({"event": "disconnected", "reason": reason}),
        Event::ProtocolError { message } => {
            json!({"event": "error", "kind": "protocol", "message": message})
        }
        Event::Files { torrent, files, .. } => json!({
            "event": "files",
            "id": torrent.0,
            "files": files.iter().map(file_json).collect::<Vec<_>>(),
        }),
        Event::Peers {
            torrent,
            dialled,
            peers,
            banned,
            ..
        } => json!({
            "event": "peers",
            "id": torrent.0,
            "dialled": dialled,
            "peers": peers.iter().map(peer_json).collect::<Vec<_>>(),
            "banned": banned.iter().map(banned_json).collect::<Vec<_>>(),
        }),
        // Streams run on connections of their own (`cat`), never on this one.
        Event::StreamOpened { .. }
        | Event::StreamVerified { .. }
        | Event::StreamProgress { .. }
        | Event::StreamData { .. }
        | Event::StreamEnded { .. } => {
            json!({"event": "error", "kind": "protocol", "message": "a stream event on the pipe's connection"})
        }
        // The library unpacks these before anyone sees them.
        Event::Large(_) => {
            json!({"event": "error", "kind": "protocol", "message": "an unpacked large event"})
        }
    }
}
