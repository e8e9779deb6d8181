//! A torrent's files, and which of them to download (`Files`).

use super::Service;
use proto::{FileEntry, FileRef, FilesRequest, ProtoError, TorrentId};
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
        let chosen = chosen(&only, &files, handle.name().as_deref())?;
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

/// The files `only` names (by index or path), checked against the torrent's files: a name
/// that fits none is an error listing some of them. `name`: the torrent's, which a path
/// may start with (`album/cd1/01.flac`, as other clients show a folder torrent's files).
pub(super) fn chosen(
    only: &[FileRef],
    files: &[FileEntry],
    name: Option<&str>,
) -> Result<HashSet<usize>, ProtoError> {
    if only.is_empty() {
        return Err(ProtoError::bad_request(
            "choose at least one file (to download nothing, pause the torrent)",
        ));
    }
    only.iter()
        .map(|wanted| find(files, wanted, name).map(|file| file.index as usize))
        .collect()
}

/// The file `wanted` names among `files`, or an error naming some of them. A path is as
/// `files` lists it, or (a folder torrent's) with the torrent's `name` before it.
pub(super) fn find<'a>(
    files: &'a [FileEntry],
    wanted: &FileRef,
    name: Option<&str>,
) -> Result<&'a FileEntry, ProtoError> {
    let found = match wanted {
        FileRef::Index(index) => files.iter().find(|f| f.index == *index),
        FileRef::Path(path) => files.iter().find(|f| f.path == *path).or_else(|| {
            let inside = path.strip_prefix(name?)?.strip_prefix('/')?;
            files.iter().find(|f| f.path == inside)
        }),
    };
    found.ok_or_else(|| {
        let what = match wanted {
            FileRef::Index(index) => format!("no file {index}"),
            FileRef::Path(path) => format!("no file {path:?}"),
        };
        ProtoError::bad_request(format!(
            "the torrent has {what}; its {} files: {}",
            files.len(),
            some_of(files)
        ))
    })
}

/// The first few files, `INDEX PATH`, for an error that must say what there is.
pub(super) fn some_of(files: &[FileEntry]) -> String {
    let some: Vec<String> = files
        .iter()
        .take(10)
        .map(|f| format!("{} {}", f.index, f.path))
        .collect();
    let more = if files.len() > 10 { ", ..." } else { "" };
    format!("{}{more}", some.join(", "))
}
