//! `MoveStorage`: move a torrent's data to another folder, and run it from there.

use crate::service::Service;
use proto::{Event, MoveStorage, RequestId};
use std::sync::Arc;

pub async fn run(service: &Arc<Service>, request: RequestId, change: MoveStorage) -> Event {
    match service.move_storage(change.torrent, &change.to).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
