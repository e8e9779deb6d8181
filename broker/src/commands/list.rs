//! `List`: every torrent the broker runs, with its status.

use crate::engine;
use crate::patron::PatronId;
use crate::service::Service;
use proto::{Event, RequestId, TorrentInfo, TorrentState, TorrentSummary};

pub fn run(service: &Service, patron: PatronId, request: RequestId) -> Event {
    // The engine's stats are computed after the broker's lock is let go: with many torrents
    // that is most of the work, and every other request needs the lock.
    let (listed, placeholders): (Vec<_>, Vec<_>) = {
        let state = service.state();
        // Known but not running: magnets whose metadata is on its way, and records not
        // restored (in error, saying why; DESIGN §4a).
        let placeholders = state
            .registry
            .placeholders()
            .map(|(info, state, holders)| placeholder_summary(info, state, holders))
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
                (entry.info.clone(), entry.live_handle(), held)
            })
            .collect();
        (listed, placeholders)
    };
    let mut torrents: Vec<TorrentSummary> = listed
        .into_iter()
        .map(
            |(info, handle, (holders, held_by_you, ephemeral))| TorrentSummary {
                status: engine::status_or_checking(&info, handle.as_ref()),
                info,
                holders,
                held_by_you,
                ephemeral,
            },
        )
        .collect();
    // Running torrents come in id order; placeholders fall in between.
    if !placeholders.is_empty() {
        torrents.extend(placeholders);
        torrents.sort_by_key(|t| t.info.id);
    }
    Event::TorrentList { request, torrents }
}

fn placeholder_summary(info: TorrentInfo, state: TorrentState, holders: u32) -> TorrentSummary {
    TorrentSummary {
        status: proto::TorrentStatus::idle(&info, state),
        info,
        holders,
        held_by_you: false,
        ephemeral: false,
    }
}
