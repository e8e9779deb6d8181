//! `StreamRead`: verified bytes of a stream over the channel, for a reader that cannot read
//! the file itself.

use crate::service::Service;
use crate::sink::PatronConnection;
use crate::streams::MAX_UNREAD_STREAM_BYTES;
use proto::{Event, ProtoError, RequestId, StreamRead};

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
    // A reader reads each reply before asking again; one that asks without reading would
    // have the broker copy a MiB per 30-byte request into its queue.
    let unread = patron.events.pending_bytes();
    if unread > MAX_UNREAD_STREAM_BYTES {
        let error = ProtoError::limit_reached(format!(
            "{unread} bytes of replies wait for this patron: read them before asking for more"
        ));
        return Event::Error { request, error };
    }
    let read = service.streams.read(patron.id, stream, position, length);
    match read.await {
        Ok(bytes) => Event::StreamData {
            request,
            stream,
            position,
            bytes,
        },
        Err(error) => Event::Error { request, error },
    }
}
