//! A torrent's files, and which of them to download (`Files`).

use super::Service;
use proto::{FileEntry, FilesRequest, ProtoError, TorrentId};
use std::collections::HashSet;

impl Service {
    /// A torrent's files; with `only`, which of them to download first (recorded, so a restart
    /// keeps the choice; if it cannot be recorded, the engine's selection is put back).
    pub async fn files(
        &self,
        request: FilesRequest,
    ) -> Result<(TorrentId, Vec<FileEntry>), ProtoError> {
        let service = self;
        let Some(only) = request.only else {
            let (id, handle) = service.live(request.torrent).await?;
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
        if let Err(error) = service.update_record(id, |restore| restore.only_files = Some(recorded))
        {
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
