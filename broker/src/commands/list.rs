//! `List`: every torrent the broker runs, with its status.

use crate::engine;
use crate::patron::PatronId;
use crate::service::Service;
use proto::{Event, RequestId, TorrentInfo, TorrentRef, TorrentState, TorrentSummary};

pub fn run(service: &Service, patron: PatronId, request: RequestId) -> Event {
    // The engine's stats are computed after the broker's lock is let go: with many torrents
    // that is most of the work, and every other request needs the lock.
    let (listed, unrestored): (Vec<_>, Vec<_>) = {
        let state = service.state();
        // Known but not running: records not restored (in error, saying why) and magnets
        // whose metadata is on its way (DESIGN §4a, and `resolving-metadata`).
        let registry = &state.registry;
        let unrestored = registry
            .unrestored()
            .filter_map(|(id, _)| registry.placeholder(TorrentRef::Id(*id)))
            .map(|(info, state)| placeholder_summary(info, state, 0))
            .chain(registry.resolving().map(|(_, r)| {
                placeholder_summary(
                    r.info.clone(),
                    TorrentState::ResolvingMetadata,
                    r.holders.len() as u32,
                )
            }))
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

fn placeholder_summary(info: TorrentInfo, state: TorrentState, holders: u32) -> TorrentSummary {
    TorrentSummary {
        status: super::placeholder_status(&info, state),
        info,
        holders,
        held_by_you: false,
        ephemeral: false,
    }
}
