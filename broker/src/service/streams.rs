//! Opening a stream (`OpenStream`): read one file of a torrent in order while it
//! downloads (DESIGN §8).

use super::Service;
use crate::sink::PatronConnection;
use proto::{FileEntry, FileIdentity, FileRef, OpenStream, ProtoError, StreamInfo};
use std::sync::Arc;

impl Service {
    /// Opens a stream of one file of a torrent for `patron` (DESIGN §8): the engine fetches
    /// the bytes at its position first, and the reader is told where the file is and which
    /// file it is (device and inode, off the engine's own descriptor).
    pub async fn open_stream(
        self: &Arc<Self>,
        patron: &PatronConnection,
        open: OpenStream,
    ) -> Result<StreamInfo, ProtoError> {
        let service = self;
        service.streams.room_for_one_more(patron.id)?;
        // A torrent being added again (a recheck) is waited for, as the engine waits out a
        // first check of its data.
        let (torrent, handle) = service.live(open.torrent).await?;
        let files = service.engine.files(&handle)?;
        let file = pick(&files, open.file.as_ref(), handle.name().as_deref())?;
        if !file.selected {
            return Err(ProtoError::bad_request(format!(
                    "file {} ({}) is not selected for download: select it first (`files {torrent} --only ...`)",
                    file.index, file.path
                ),
            ));
        }
        if open.position > file.size {
            return Err(ProtoError::bad_request(format!(
                "offset {} is past the end of {} ({})",
                proto::text::bytes(open.position),
                file.path,
                proto::text::bytes(file.size)
            )));
        }
        let index = file.index as usize;
        let local = service
            .engine
            .local_path(&handle, index)
            .ok_or_else(|| ProtoError::engine("the engine does not say where the file is"))?;
        let stream = service.engine.open_stream(&handle, index).await?;
        // Read off the engine's own descriptor: a symlink planted on the path since the engine
        // opened the file leads a reader elsewhere, and the reader must find out.
        let local_file = stream
            .file_identity()
            .map(|(device, inode)| FileIdentity { device, inode });
        let (id, verified_to) = service.streams.start(
            service.clone(),
            patron,
            torrent,
            handle,
            stream,
            open.position,
        )?;
        Ok(StreamInfo {
            id,
            torrent,
            file,
            local_path: local.to_string_lossy().into_owned(),
            local_file,
            verified_to,
        })
    }
}

/// The file a request names; the only one when it names none. A name that fits none lists
/// some of the files, whatever was wrong with it.
fn pick(
    files: &[FileEntry],
    wanted: Option<&FileRef>,
    name: Option<&str>,
) -> Result<FileEntry, ProtoError> {
    match (wanted, files) {
        (Some(wanted), _) => super::files::find(files, wanted, name).cloned(),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(ProtoError::bad_request("the torrent has no files")),
        (None, _) => Err(ProtoError::bad_request(format!(
            "the torrent has {} files: name one by index or path ({})",
            files.len(),
            super::files::some_of(files)
        ))),
    }
}
