//! `CloseStream`: a reader is done; its priority window leaves the engine.

use crate::service::Service;
use crate::sink::PatronConnection;
use proto::{Event, RequestId, StreamId};

pub fn run(
    service: &Service,
    patron: &PatronConnection,
    request: RequestId,
    stream: StreamId,
) -> Event {
    match service.streams.close(patron.id, stream) {
        Ok(()) => Event::Ok { request },
        Err(error) => Event::Error { request, error },
    }
}
