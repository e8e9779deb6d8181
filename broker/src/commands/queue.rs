//! `SetQueue` and `MoveInQueue`: how many torrents run at once, and in which order the
//! others start.

use crate::service::Service;
use proto::{Event, MoveInQueue, RequestId, SetQueue};
use std::sync::Arc;

pub fn set(service: &Service, request: RequestId, change: SetQueue) -> Event {
    match service.set_queue(change) {
        Ok(queue) => Event::Queue { request, queue },
        Err(error) => Event::Error { request, error },
    }
}

pub async fn move_in(service: &Arc<Service>, request: RequestId, change: MoveInQueue) -> Event {
    match service.move_in_queue(change.torrent, change.to).await {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}
