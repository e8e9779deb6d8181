//! `List`: every torrent the broker runs, with its status.

use crate::broker::Broker;
use crate::engine;
use crate::patron::PatronId;
use proto::{Event, RequestId, TorrentSummary};

pub fn run(broker: &Broker, patron: PatronId, request: RequestId) -> Event {
    let state = broker.state();
    let torrents = state
        .registry
        .iter()
        .map(|(id, entry)| TorrentSummary {
            info: entry.info.clone(),
            status: engine::status_of(*id, &entry.info.name, &entry.handle),
            holders: entry.holders.len() as u32,
            held_by_you: entry.holders.contains(&patron),
            ephemeral: entry.restore.ephemeral,
        })
        .collect();
    Event::TorrentList { request, torrents }
}
