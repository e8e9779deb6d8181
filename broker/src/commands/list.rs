//! `List`: every torrent the broker runs, with its status.

use crate::engine;
use crate::patron::PatronId;
use crate::registry::Unrestored;
use crate::service::Service;
use proto::{Event, RequestId, TorrentState, TorrentStatus, TorrentSummary};

pub fn run(service: &Service, patron: PatronId, request: RequestId) -> Event {
    // The engine's stats are computed after the broker's lock is let go: with many torrents
    // that is most of the work, and every other request needs the lock.
    let (listed, unrestored): (Vec<_>, Vec<_>) = {
        let state = service.state();
        let unrestored = state
            .registry
            .unrestored()
            .map(|(_, u)| unrestored_summary(u))
            .collect();
        let listed = state
            .registry
            .iter()
            .map(|(_, entry)| {
                let held = (
                    entry.holders.len() as u32,
                    entry.holders.contains(&patron),
                    entry.restore.ephemeral,
                );
                (entry.info.clone(), entry.handle.clone(), held)
            })
            .collect();
        (listed, unrestored)
    };
    let mut torrents: Vec<TorrentSummary> = listed
        .into_iter()
        .map(
            |(info, handle, (holders, held_by_you, ephemeral))| TorrentSummary {
                status: engine::status_of(info.id, &info.name, &handle),
                info,
                holders,
                held_by_you,
                ephemeral,
            },
        )
        .collect();
    // Remembered but not restored: shown, in error, with the reason (DESIGN §4a).
    torrents.extend(unrestored);
    torrents.sort_by_key(|t| t.info.id);
    Event::TorrentList { request, torrents }
}

fn unrestored_summary(unrestored: &Unrestored) -> TorrentSummary {
    let info = unrestored.info.clone();
    TorrentSummary {
        status: TorrentStatus {
            id: info.id,
            info_hash: info.info_hash,
            name: info.name.clone(),
            state: TorrentState::Error(format!(
                "not restored (retried at the next start): {}",
                unrestored.error
            )),
            progress: 0.0,
            bytes_done: 0,
            bytes_total: info.total_bytes,
            download_rate: 0,
            upload_rate: 0,
            uploaded: 0,
            peers: 0,
            seeds: 0,
            eta_secs: None,
            complete: false,
        },
        info,
        holders: 0,
        held_by_you: false,
        ephemeral: false,
    }
}
