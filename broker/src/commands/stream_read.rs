//! `StreamRead`: verified bytes of a stream over the channel, for a reader that cannot read
//! the file itself.

use crate::patron::PatronConnection;
use crate::service::Service;
use proto::{Event, RequestId, StreamRead};

pub async fn run(
    service: &Service,
    patron: &PatronConnection,
    request: RequestId,
    read: StreamRead,
) -> Event {
    let StreamRead {
        stream,
        position,
        length,
    } = read;
    match service
        .streams
        .read(patron.id, stream, position, length)
        .await
    {
        Ok(bytes) => Event::StreamData {
            request,
            stream,
            position,
            bytes,
        },
        Err(error) => Event::Error { request, error },
    }
}
