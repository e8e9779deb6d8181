//! A torrent's files, and which of them to download (`Files`).

use super::Service;
use proto::{FileEntry, FileRef, FilesRequest, ProtoError, TorrentId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl Service {
    /// A torrent's files; with `only`, which of them to download first (recorded, so a restart
    /// keeps the choice; if it cannot be recorded, the engine's selection is put back).
    pub async fn files(
        self: &Arc<Self>,
        request: FilesRequest,
    ) -> Result<(TorrentId, Vec<FileEntry>), ProtoError> {
        let service = self;
        let Some(only) = request.only else {
            if let Some(files) = service.dormant_files(request.torrent).await? {
                return Ok(files);
            }
            let (id, handle) = service.live(request.torrent).await?;
            return Ok((id, service.engine.files(&handle)?));
        };
        let _adding = service.adding.lock().await;
        let (id, handle) = service.running_awake(request.torrent).await?;
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
        tracing::info!(torrent = %id, files = chosen.len(), "file selection changed");
        Ok((id, service.engine.files(&handle)?))
    }
}

impl Service {
    /// A dormant seed's files, every one selected and complete, read from its .torrent
    /// without waking it (a client that lists every torrent's files now and then, as
    /// transmission's do, would otherwise keep every seed in the engine). `None`: it is not
    /// dormant, or not every file is selected (the progress of the others is the engine's).
    async fn dormant_files(
        self: &Arc<Self>,
        torrent: proto::TorrentRef,
    ) -> Result<Option<(TorrentId, Vec<FileEntry>)>, ProtoError> {
        let (id, crate::registry::Life::Dormant(_)) = self.life_of(torrent)? else {
            return Ok(None);
        };
        let every_file = self
            .state()
            .registry
            .get(id)
            .is_some_and(|e| e.restore.only_files.is_none());
        if !every_file {
            return Ok(None);
        }
        let service = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            let path = service.torrent_file_path(id);
            let bytes = crate::store::read_state_file(&path).ok().flatten()?;
            crate::torrent_file::check_torrent_file(&bytes, service.config.loopback_only).ok()
        })
        .await
        .ok()
        .flatten();
        // Unreadable now: the engine says (a wake reads it as a start would, and fails as
        // one would).
        Ok(read.map(|checked| {
            let files = checked
                .file_entries()
                .into_iter()
                .map(|file| FileEntry {
                    bytes_done: file.size,
                    ..file
                })
                .collect();
            (id, files)
        }))
    }
}

/// The files `only` names (by index or path), checked against the torrent's files: a name
/// that fits none is an error listing some of them. `name`: the torrent's, which a path
/// may start with (`album/cd1/01.flac`, as other clients show a folder torrent's files).
/// Linear in the files and the names (it runs under the add lock).
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
    let finder = Finder::new(files, name);
    only.iter()
        .map(|wanted| finder.find(wanted).map(|file| file.index as usize))
        .collect()
}

/// The file `wanted` names among `files`, or an error naming some of them. A path is as
/// `files` lists it, or (a folder torrent's) with the torrent's `name` before it.
pub(super) fn find<'a>(
    files: &'a [FileEntry],
    wanted: &FileRef,
    name: Option<&str>,
) -> Result<&'a FileEntry, ProtoError> {
    Finder::new(files, name).find(wanted)
}

/// A torrent's files by index and by path, for lookups in constant time.
struct Finder<'a, 'n> {
    files: &'a [FileEntry],
    by_index: HashMap<u32, &'a FileEntry>,
    by_path: HashMap<&'a str, &'a FileEntry>,
    name: Option<&'n str>,
}

impl<'a, 'n> Finder<'a, 'n> {
    fn new(files: &'a [FileEntry], name: Option<&'n str>) -> Finder<'a, 'n> {
        Finder {
            files,
            by_index: files.iter().map(|f| (f.index, f)).collect(),
            by_path: files.iter().map(|f| (f.path.as_str(), f)).collect(),
            name,
        }
    }

    fn find(&self, wanted: &FileRef) -> Result<&'a FileEntry, ProtoError> {
        let found = match wanted {
            FileRef::Index(index) => self.by_index.get(index).copied(),
            FileRef::Path(path) => self.by_path.get(path.as_str()).copied().or_else(|| {
                let inside = path.strip_prefix(self.name?)?.strip_prefix('/')?;
                self.by_path.get(inside).copied()
            }),
        };
        found.ok_or_else(|| {
            let what = match wanted {
                FileRef::Index(index) => format!("no file {index}"),
                FileRef::Path(path) => format!("no file {:?}", proto::text::truncate(path, 200)),
            };
            ProtoError::bad_request(format!(
                "the torrent has {what}; its {} files: {}",
                self.files.len(),
                some_of(self.files)
            ))
        })
    }
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
