//! `List`: every torrent the broker runs, with its status.

use crate::broker::Broker;
use crate::engine;
use crate::patron::PatronId;
use proto::{Event, RequestId, TorrentSummary};

pub fn run(broker: &Broker, patron: PatronId, request: RequestId) -> Event {
    // The engine's stats are computed after the broker's lock is let go: with many torrents
    // that is most of the work, and every other request needs the lock.
    let listed: Vec<_> = {
        let state = broker.state();
        state
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
            .collect()
    };
    let torrents = listed
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
    Event::TorrentList { request, torrents }
}
