//! `StreamAt`: "I read here" from a stream's reader; the answer is what it may read next.

use crate::service::Service;
use crate::sink::PatronConnection;
use proto::{Event, RequestId, StreamAt};

pub async fn run(
    service: &Service,
    patron: &PatronConnection,
    request: RequestId,
    at: StreamAt,
) -> Event {
    match service.streams.at(patron.id, at.stream, at.position).await {
        Ok(verified_to) => Event::StreamVerified {
            request,
            stream: at.stream,
            position: at.position,
            verified_to,
        },
        Err(error) => Event::Error { request, error },
    }
}
