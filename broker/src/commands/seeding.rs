//! `SetSeeding`: when torrents stop seeding (the broker's limits, or one torrent's own).

use crate::service::Service;
use proto::{Event, RequestId, SetSeeding};

pub fn run(service: &Service, request: RequestId, change: SetSeeding) -> Event {
    match service.set_seeding(change) {
        Ok((limits, action)) => Event::Seeding {
            request,
            limits,
            action,
        },
        Err(error) => Event::Error { request, error },
    }
}
