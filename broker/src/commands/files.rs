//! `Files`: a torrent's files, and which of them to download.

use crate::service::Service;
use proto::{Event, FileEntry, FilesRequest, ProtoError, RequestId, TorrentId};
use std::collections::HashSet;

pub async fn run(service: &Service, request: RequestId, files: FilesRequest) -> Event {
    match list_or_select(service, files).await {
        Ok((torrent, files)) => Event::Files {
            request,
            torrent,
            files,
        },
        Err(error) => Event::Error { request, error },
    }
}

async fn list_or_select(
    service: &Service,
    request: FilesRequest,
) -> Result<(TorrentId, Vec<FileEntry>), ProtoError> {
    let Some(only) = request.only else {
        let (id, handle) = service.running(request.torrent)?;
        return Ok((id, service.engine.files(&handle)?));
    };
    let _adding = service.adding.lock().await;
    let (id, handle) = service.running(request.torrent)?;
    let files = service.engine.files(&handle)?;
    let chosen = chosen(&only, &files)?;
    let before = handle.only_files();
    service.engine.select_files(&handle, &chosen).await?;
    let mut recorded: Vec<usize> = chosen.iter().copied().collect();
    recorded.sort_unstable();
    if let Err(error) = service.update_record(id, |restore| restore.only_files = Some(recorded)) {
        // Not recorded, so not done.
        let all = || {
            (0..files
                .iter()
                .map(|f| f.index as usize + 1)
                .max()
                .unwrap_or(0))
                .collect()
        };
        let before: HashSet<usize> = before.map_or_else(all, |b| b.into_iter().collect());
        if let Err(e) = service.engine.select_files(&handle, &before).await {
            tracing::warn!(torrent = %id, "cannot restore the file selection: {e}");
        }
        return Err(error);
    }
    tracing::info!(torrent = %id, files = ?only, "file selection changed");
    Ok((id, service.engine.files(&handle)?))
}

/// The indices asked for, checked against the torrent's files.
fn chosen(only: &[u32], files: &[FileEntry]) -> Result<HashSet<usize>, ProtoError> {
    let bad = |why: String| ProtoError::bad_request(why);
    if only.is_empty() {
        return Err(bad(
            "choose at least one file (to download nothing, pause the torrent)".into(),
        ));
    }
    let known: HashSet<u32> = files.iter().map(|f| f.index).collect();
    if let Some(missing) = only.iter().find(|i| !known.contains(i)) {
        let indices: Vec<String> = files.iter().map(|f| f.index.to_string()).collect();
        return Err(bad(format!(
            "the torrent has no file {missing} (its files: {})",
            indices.join(", ")
        )));
    }
    Ok(only.iter().map(|&i| i as usize).collect())
}
