//! `Files`: a torrent's files, and which of them to download.

use crate::service::Service;
use proto::{Event, FilesRequest, RequestId};

pub async fn run(
    service: &std::sync::Arc<Service>,
    request: RequestId,
    files: FilesRequest,
) -> Event {
    match service.files(files).await {
        Ok((torrent, files)) => Event::Files {
            request,
            torrent,
            files,
        },
        Err(error) => Event::Error { request, error },
    }
}
