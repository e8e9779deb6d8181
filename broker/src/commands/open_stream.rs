//! `OpenStream`: read one file of a torrent in order while it downloads (DESIGN §8).

use crate::service::Service;
use crate::sink::PatronConnection;
use proto::{Event, OpenStream, RequestId};
use std::sync::Arc;

pub async fn run(
    service: &Arc<Service>,
    patron: &PatronConnection,
    request: RequestId,
    open: OpenStream,
) -> Event {
    match service.open_stream(patron, open).await {
        Ok(stream) => Event::StreamOpened { request, stream },
        Err(error) => Event::Error { request, error },
    }
}
