//! Moving a torrent's data to another folder (`MoveStorage`, DESIGN §13): one complete copy,
//! the one the record names, at every instant, whatever kills the broker.
//!
//! The move is written down first ([`MoveJournal`] in the torrent's record), then the
//! torrent leaves the engine (its files stamped as verified, so that it needs no new check
//! at the new place) and its data moves: renamed on one file system, or, across two, copied
//! under the move's own names (`.NAME.tp-move`), synced, compared by hash, and only then
//! given their names. Then the record names the new place and the torrent runs from there;
//! a copy's originals go last. A failure (a full disk, a folder swapped for a link) undoes
//! what was done and the torrent runs from the old place, its data as it was. A start that
//! finds a journal finishes or undoes the move before the torrent runs
//! ([`Service::finish_move`]): before the record names the new place the move is undone
//! (the copy's own files deleted, never a file of the user's), unless every file was
//! renamed already or every copy was whole and being named: then it is finished; after,
//! the old files go (once the new place is all there: a disk not mounted keeps them).
//! Files changed by anyone while they move are hashed again at the new place.
//!
//! While its data moves the torrent is out of the engine ([`Life::Moving`]): nothing reads or
//! writes its files, its streams end (exit 6) and every request about it but `status` and
//! `list` is refused with a clear reason. Other torrents and requests go on meanwhile.

use super::{gone, owned_by, Service};
use crate::registry::{Life, RestoreSpec};
use crate::relocate::{Relocation, StepError};
use crate::storage::{stamps_of, FileStamp};
use proto::{ProtoError, TorrentId, TorrentRef, TorrentStatus};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A move under way, in the torrent's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJournal {
    /// Where its data was.
    pub from_save_folder: PathBuf,
    pub from_data_folder: PathBuf,
    /// Where it goes.
    pub to_save_folder: PathBuf,
    pub to_data_folder: PathBuf,
    /// Renamed, or copied.
    pub how: MoveHow,
    /// A copy's files are whole and verified under their move's names, and are being given
    /// their own names: a start finishes that and the move.
    #[serde(default)]
    pub placing: bool,
    /// The record names the new place: what is left at the old one goes.
    #[serde(default)]
    pub done: bool,
}

/// How the files move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveHow {
    /// Renamed, one file system.
    Rename,
    /// Copied across file systems, then the originals deleted.
    Copy,
}

/// What the torrent was when it left the engine, to run it again from either place.
struct Leaving {
    id: TorrentId,
    torrent: Vec<u8>,
    /// Every file the engine lists, padding included, in its order.
    engine_files: Vec<PathBuf>,
    /// Its record before the move.
    restore: RestoreSpec,
    /// Its files were as verified when it left (its fast-resume stamps hold).
    vouched: bool,
    /// Its files' stamps when it left (padding `None`), every file the engine lists.
    stamps: Vec<Option<FileStamp>>,
    /// Its files (full paths) at the old place.
    old_files: Arc<[PathBuf]>,
}

/// A path as a log line or message shows it (no control character reaches a terminal).
fn shown_path(path: &Path) -> String {
    proto::text::shown(&path.display().to_string())
}

/// Whether files are the same as when `before` was taken, but for what a rename changes
/// (their change time).
fn same_files(before: &[Option<FileStamp>], now: &[Option<FileStamp>]) -> bool {
    before.len() == now.len()
        && before.iter().zip(now).all(|(b, n)| match (b, n) {
            (Some(b), Some(n)) => b.ino == n.ino && b.size == n.size && b.mtime_ns == n.mtime_ns,
            (None, None) => true,
            _ => false,
        })
}

/// The device a folder is on (or the nearest folder above it that exists).
fn device_of(folder: &Path) -> Option<u64> {
    folder
        .ancestors()
        .find_map(|a| std::fs::metadata(a).ok())
        .map(|m| m.dev())
}

impl Service {
    /// Moves torrent `torrent`'s data into folder `to` (its own folder inside it, for a
    /// torrent of several files) and runs it from there. On an error it runs from where it
    /// was, its data whole there.
    ///
    /// The move runs in a task of its own: the caller going away (a patron cut off, whose
    /// requests are dropped; a completion watcher aborted as its torrent leaves the engine)
    /// never leaves it half done.
    pub async fn move_storage(
        self: &Arc<Self>,
        torrent: TorrentRef,
        to: &str,
    ) -> Result<TorrentStatus, ProtoError> {
        let service = self.clone();
        let to = to.to_owned();
        // On the broker's runtime: the engine's add needs its threads (a completion
        // watcher runs on the status loop's own).
        self.runtime
            .spawn(async move { service.move_now(torrent, &to).await })
            .await
            .unwrap_or_else(|e| Err(ProtoError::engine(format!("the move stopped: {e}"))))
    }

    async fn move_now(
        self: &Arc<Self>,
        torrent: TorrentRef,
        to: &str,
    ) -> Result<TorrentStatus, ProtoError> {
        let dest = self.save_folder(Some(to))?;
        let adding = self.adding.lock().await;
        let (id, handle) = self.running_awake(torrent).await?;
        if handle.with_state(|s| matches!(s, librqbit::ManagedTorrentState::Initializing(_))) {
            return Err(ProtoError::bad_request(format!(
                "torrent {id} is checking its data: move it once the check is done"
            )));
        }
        let engine_error = |e: anyhow::Error| ProtoError::engine(format!("{e:#}"));
        let (torrent_bytes, files) = handle
            .with_metadata(|meta| {
                let files: Vec<(PathBuf, bool)> = meta
                    .file_infos
                    .iter()
                    .map(|f| (f.relative_filename.clone(), f.attrs.padding))
                    .collect();
                (meta.torrent_bytes.to_vec(), files)
            })
            .map_err(engine_error)?;
        let (restore, old_files) = {
            let state = self.state();
            let entry = state.registry.get(id).ok_or_else(|| gone(id))?;
            (entry.restore.clone(), entry.files.clone())
        };
        if restore.ephemeral {
            return Err(ProtoError::bad_request(format!(
                "torrent {id} is ephemeral (closed when its last holder goes, never recorded): only a recorded torrent is moved"
            )));
        }
        if restore.save_folder == dest {
            return self.current_status(id).ok_or_else(|| gone(id));
        }
        let inside = restore
            .data_folder
            .strip_prefix(&restore.save_folder)
            .map_err(|_| {
                ProtoError::bad_request(format!(
                    "torrent {id}'s data ({}) is not inside its save folder ({}): it cannot be moved",
                    restore.data_folder.display(),
                    restore.save_folder.display()
                ))
            })?
            .to_path_buf();
        let own_folder = !inside.as_os_str().is_empty();
        let to_data = dest.join(&inside);
        if own_folder && dest.starts_with(&restore.data_folder) {
            return Err(ProtoError::path_not_allowed(format!(
                "{} is inside torrent {id}'s own folder: move it elsewhere",
                dest.display()
            )));
        }
        let on_disk: Vec<PathBuf> = files
            .iter()
            .filter(|(_, padding)| !padding)
            .map(|(path, _)| path.clone())
            .collect();
        let new_files: Arc<[PathBuf]> = on_disk.iter().map(|f| to_data.join(f)).collect();
        if let Some((path, owner)) = self.state().registry.owned_elsewhere(&new_files, Some(id)) {
            return Err(owned_by(&path, owner));
        }
        let relocation = Relocation::new(
            &self.config.download_roots,
            &restore.data_folder,
            &to_data,
            on_disk,
            own_folder,
        )
        .map_err(|e| ProtoError::path_not_allowed(format!("{e:#}")))?;
        relocation
            .check_free()
            .map_err(|e| ProtoError::file_exists(format!("{e:#}")))?;
        let same_device =
            device_of(&restore.data_folder).is_some_and(|d| Some(d) == device_of(&dest));
        let mut journal = MoveJournal {
            from_save_folder: restore.save_folder.clone(),
            from_data_folder: restore.data_folder.clone(),
            to_save_folder: dest.clone(),
            to_data_folder: to_data.clone(),
            how: if same_device {
                MoveHow::Rename
            } else {
                MoveHow::Copy
            },
            placing: false,
            done: false,
        };
        // Both places are its own until it runs from one: no add may take the new one.
        let both: Arc<[PathBuf]> = old_files.iter().chain(new_files.iter()).cloned().collect();
        self.state().registry.set_files(id, both);
        let written = self.update_record(id, |r| r.moving = Some(Box::new(journal.clone())));
        if let Err(error) = written {
            self.state().registry.set_files(id, old_files);
            return Err(error);
        }
        // Out of the engine, its files stamped as verified first (nothing writes them once
        // it is paused).
        let frozen = self.current_status(id).ok_or_else(|| gone(id))?;
        let leaving = async {
            self.engine.pause(&handle).await?;
            let stamping = self.clone();
            let _ = tokio::task::spawn_blocking(move || stamping.stamp_verified(id)).await;
            Ok::<_, ProtoError>(())
        }
        .await;
        let engine_files: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
        let stamps = stamps_of(
            &self.config.download_roots,
            &restore.data_folder,
            &engine_files,
        );
        let vouched = self.engine.stamps_match(id, &stamps);
        let leaving = match leaving {
            Ok(()) => {
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.life = Life::Moving(Arc::new(frozen));
                }
                self.sync_board(id);
                self.engine_stop(id)
                    .await
                    .map_err(|e| ProtoError::engine(format!("the engine cannot stop it: {e:#}")))
            }
            Err(error) => Err(error),
        };
        let leaving = match leaving {
            Ok(()) => Leaving {
                id,
                torrent: torrent_bytes,
                engine_files,
                restore,
                vouched,
                stamps,
                old_files,
            },
            Err(error) => {
                // Still in the engine: as it was.
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.life = Life::Running(handle.clone());
                }
                if !restore.engine_paused() {
                    let _ = self.engine.resume(&handle).await;
                }
                self.state().registry.set_files(id, old_files);
                let _ = self.update_record(id, |r| r.moving = None);
                self.sync_board(id);
                return Err(error);
            }
        };
        tracing::info!(torrent = %id, to = %shown_path(&to_data), how = ?journal.how, "moving its data");
        crate::stop_point::at("move:stopped");
        drop(adding);

        // The files move, with no lock held: other torrents and requests go on.
        let relocation = Arc::new(relocation);
        let mut moved = self.move_files(&relocation, journal.how, &leaving).await;
        if journal.how == MoveHow::Rename && moved.as_ref().is_err_and(|e| e.cross_device) {
            // One device number, yet two file systems (a bind mount): a copy it is, written
            // down as such before anything is copied.
            journal.how = MoveHow::Copy;
            moved = match self.update_record(id, |r| r.moving = Some(Box::new(journal.clone()))) {
                Ok(()) => self.move_files(&relocation, MoveHow::Copy, &leaving).await,
                Err(error) => Err(StepError::from(anyhow::anyhow!(error.message))),
            };
        }
        if journal.how == MoveHow::Copy && moved.is_ok() {
            // Whole and verified under the move's names: written down before they take
            // their own, so that a start finishes this rather than deleting them.
            crate::stop_point::at("move:copied");
            journal.placing = true;
            let unchanged = matches!(moved, Ok(true));
            moved = match self.update_record(id, |r| r.moving = Some(Box::new(journal.clone()))) {
                Ok(()) => {
                    let placing = relocation.clone();
                    tokio::task::spawn_blocking(move || placing.place_each())
                        .await
                        .unwrap_or_else(|e| {
                            Err(StepError::from(anyhow::anyhow!("the move stopped: {e}")))
                        })
                        .map(|()| unchanged)
                }
                Err(error) => {
                    let _ = relocation.remove_parts();
                    Err(StepError::from(anyhow::anyhow!(error.message)))
                }
            };
        }
        crate::stop_point::at("move:moved");
        let adding = self.adding.lock().await;
        if let Err(failed) = moved {
            let error = if failed.no_space {
                ProtoError::no_space(format!(
                    "torrent {id} is not moved: {:#}; it runs from {} as before",
                    failed.error,
                    leaving.restore.data_folder.display()
                ))
            } else {
                ProtoError::io(format!(
                    "torrent {id} is not moved: {:#}; it runs from {} as before",
                    failed.error,
                    leaving.restore.data_folder.display()
                ))
            };
            // The step undid what it did.
            self.undo_move(&relocation, None, &leaving).await;
            drop(adding);
            return Err(error);
        }
        // The record names the new place: from here the move is done, whatever happens.
        journal.done = true;
        let committed = self.update_record(id, |r| {
            r.save_folder = dest.clone();
            r.data_folder = to_data.clone();
            r.moving = Some(Box::new(journal.clone()));
            // Moved (by the policy or by hand): no move is due any more.
            r.move_due = false;
        });
        if let Err(error) = committed {
            self.undo_move(&relocation, Some(journal.how), &leaving)
                .await;
            drop(adding);
            return Err(error);
        }
        crate::stop_point::at("move:committed");
        let new_restore = {
            let mut state = self.state();
            state.registry.set_files(id, new_files);
            let entry = state.registry.get_mut(id).ok_or_else(|| gone(id))?;
            entry.info.save_folder = dest.display().to_string();
            entry.restore.clone()
        };
        // Vouched for at the new place only if nothing changed the files from when they
        // left the engine to when they were moved (an edit then is hashed at the start).
        let still_vouched = moved.unwrap_or(false);
        if still_vouched {
            self.engine.stamp_moved(id, &to_data, &leaving.engine_files);
        } else if let Err(e) = self.engine.forget_verified(id) {
            tracing::warn!(torrent = %id, "{e:#}");
        }
        self.run_again(&leaving, &new_restore, true).await?;
        drop(adding);
        crate::stop_point::at("move:running");
        // What is left at the old place goes; a failure here leaves the journal for the
        // next start to finish.
        let left = relocation.clone();
        let how = journal.how;
        let tidied = tokio::task::spawn_blocking(move || match how {
            MoveHow::Copy => left.remove_at_from(),
            MoveHow::Rename => left.tidy_from(),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match tidied {
            Ok(()) => {
                let _ = self.update_record(id, |r| r.moving = None);
            }
            Err(why) => {
                tracing::warn!(torrent = %id, "the old place is not cleared yet (the next start tries again): {why}")
            }
        }
        tracing::info!(torrent = %id, to = %shown_path(&to_data), "moved its data");
        self.settled_status(id).await
    }

    /// A torrent's status once the engine has taken it back (its fast-resume check is
    /// quick; a full check is not waited for past a few seconds).
    async fn settled_status(&self, id: TorrentId) -> Result<TorrentStatus, ProtoError> {
        let handle = self.state().registry.get(id).and_then(|e| e.live_handle());
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                handle.wait_until_initialized(),
            )
            .await;
        }
        self.current_status(id).ok_or_else(|| gone(id))
    }

    /// Moves a torrent that completed to its `--move-completed-to` folder (its own, or the
    /// broker's), if it has one and is not there: the broker's policy, so a failure is
    /// logged (and the torrent runs on from where it is). The move is recorded as due
    /// first (`just_completed`), so that a start after a crash, or after a failure, does it
    /// (see [`Service::resume_due_moves`]).
    pub(super) async fn move_completed(self: &Arc<Self>, id: TorrentId, just_completed: bool) {
        if just_completed {
            let due = {
                let state = self.state();
                state.registry.get(id).is_some_and(|e| {
                    e.restore
                        .move_completed_to
                        .as_ref()
                        .or(self.config.move_completed_to.as_ref())
                        .is_some_and(|t| *t != e.restore.save_folder && !e.restore.ephemeral)
                })
            };
            if due {
                if let Err(e) = self.update_record(id, |r| r.move_due = true) {
                    tracing::warn!(torrent = %id, "the move it is due is not recorded: {}", e.message);
                }
            }
        }
        let target = {
            let state = self.state();
            let Some(entry) = state.registry.get(id) else {
                return;
            };
            let target = entry
                .restore
                .move_completed_to
                .clone()
                .or_else(|| self.config.move_completed_to.clone());
            match target {
                Some(target) if target != entry.restore.save_folder && !entry.restore.ephemeral => {
                    target
                }
                _ => {
                    drop(state);
                    if !just_completed {
                        // Nowhere to go (the broker's folder was taken away): none is due.
                        let _ = self.update_record(id, |r| r.move_due = false);
                    }
                    return;
                }
            }
        };
        let Some(to) = target.to_str() else {
            tracing::warn!(torrent = %id, "--move-completed-to is not UTF-8: not moved");
            return;
        };
        match self.move_storage(TorrentRef::Id(id), to).await {
            Ok(_) => tracing::info!(torrent = %id, "completed: moved to {to}"),
            Err(e) => {
                tracing::warn!(torrent = %id, "completed, but not moved to {to}: {}", e.message)
            }
        }
    }

    /// At the start: the moves due to completed torrents that a crash or a failure left
    /// undone are done now.
    pub(super) fn resume_due_moves(self: &Arc<Self>) {
        let due: Vec<TorrentId> = {
            let state = self.state();
            state
                .registry
                .iter()
                .filter(|(_, e)| e.restore.move_due)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in due {
            let service = self.clone();
            self.runtime.spawn(async move {
                // After its check: a move waits for nothing else.
                let handle = service
                    .state()
                    .registry
                    .get(id)
                    .and_then(|e| e.live_handle());
                if let Some(handle) = handle {
                    let _ = handle.wait_until_initialized().await;
                }
                service.move_completed(id, false).await;
            });
        }
    }

    /// The file work of a move, off the async threads. Returns whether the files are
    /// still what they were when the torrent left the engine (vouched for then, and
    /// unchanged since: nobody wrote them in between).
    async fn move_files(
        &self,
        relocation: &Arc<Relocation>,
        how: MoveHow,
        leaving: &Leaving,
    ) -> Result<bool, StepError> {
        let relocation = relocation.clone();
        let roots = self.config.download_roots.clone();
        let from = leaving.restore.data_folder.clone();
        let files = leaving.engine_files.clone();
        let (vouched, before) = (leaving.vouched, leaving.stamps.clone());
        tokio::task::spawn_blocking(move || {
            let unchanged = || vouched && stamps_of(&roots, &from, &files) == before;
            match how {
                MoveHow::Rename => {
                    // Looked at last thing before: a rename keeps all but the change time.
                    let still = unchanged();
                    relocation.rename_each().map(|()| still)
                }
                // The originals stay as they are through the copy: looked at after it.
                MoveHow::Copy => relocation
                    .copy_each(&AtomicU64::new(0))
                    .map(|()| unchanged()),
            }
        })
        .await
        .unwrap_or_else(|e| Err(StepError::from(anyhow::anyhow!("the move stopped: {e}"))))
    }

    /// Puts a torrent whose move failed back as it was: what moved (`moved`: how, when its
    /// files had all moved) goes back, renamed back or the copy deleted; the journal goes,
    /// and it runs from the old place.
    async fn undo_move(
        &self,
        relocation: &Arc<Relocation>,
        moved: Option<MoveHow>,
        leaving: &Leaving,
    ) {
        let id = leaving.id;
        let back = relocation.clone();
        let undone = tokio::task::spawn_blocking(move || match moved {
            Some(MoveHow::Rename) => back.rename_back().map_err(|e| format!("{e:#}")),
            Some(MoveHow::Copy) => back.remove_at_to(),
            None => Ok(()),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match undone {
            Ok(()) => {
                let _ = self.update_record(id, |r| r.moving = None);
            }
            // The journal stays: the next start undoes the rest.
            Err(why) => {
                tracing::error!(torrent = %id, "a failed move is not wholly undone (the next start tries again): {why}")
            }
        }
        // The same files, verified as they were (renamed back, or never touched), unless
        // someone changed them meanwhile: then they are hashed again.
        let now = stamps_of(
            &self.config.download_roots,
            &leaving.restore.data_folder,
            &leaving.engine_files,
        );
        if leaving.vouched && same_files(&leaving.stamps, &now) {
            self.engine
                .stamp_moved(id, &leaving.restore.data_folder, &leaving.engine_files);
        } else if let Err(e) = self.engine.forget_verified(id) {
            tracing::warn!(torrent = %id, "{e:#}");
        }
        self.state()
            .registry
            .set_files(id, leaving.old_files.clone());
        let _ = self.run_again(leaving, &leaving.restore, false).await;
    }

    /// Adds a torrent that left the engine for its move back, from the place `restore`
    /// names. Should the engine refuse, it is kept as a record not restored (shown in
    /// error, tried again at the next start) and its holders are told.
    async fn run_again(
        &self,
        leaving: &Leaving,
        restore: &RestoreSpec,
        moved: bool,
    ) -> Result<(), ProtoError> {
        let id = leaving.id;
        let added = self
            .engine_add_again(
                id,
                leaving.torrent.clone(),
                restore,
                true,
                leaving.engine_files.clone(),
            )
            .await
            .and_then(|added| match added.id == id {
                true => Ok(added),
                false => Err(ProtoError::engine(format!(
                    "the engine took it back as torrent {}",
                    added.id
                ))),
            });
        match added {
            Ok(added) => {
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.life = Life::Running(added.handle);
                }
                self.sync_board(id);
                self.status_nudge.notify_one();
                Ok(())
            }
            Err(error) => {
                let place = if moved {
                    "its new place"
                } else {
                    "its old place"
                };
                let why = format!("it could not start again from {place}: {}", error.message);
                tracing::error!(torrent = %id, "{why}");
                self.lose_to_unrestored(
                    id,
                    None,
                    restore.clone(),
                    format!("stopped for a move, then {why}"),
                    why.clone(),
                );
                Err(ProtoError::engine(format!("torrent {id}: {why}")))
            }
        }
    }

    /// At the start: finishes or undoes the move `spec`'s journal says was under way when
    /// the broker stopped, so that the record names the one complete copy. `files`: the
    /// torrent's files on disk (padding left out). Returns whether the record changed.
    pub(super) fn finish_move(
        &self,
        id: TorrentId,
        spec: &mut RestoreSpec,
        files: Vec<PathBuf>,
    ) -> Result<bool, ProtoError> {
        let Some(journal) = spec.moving.clone() else {
            return Ok(false);
        };
        let own_folder = journal.from_data_folder != journal.from_save_folder;
        let relocation = Relocation::new(
            &self.config.download_roots,
            &journal.from_data_folder,
            &journal.to_data_folder,
            files,
            own_folder,
        )
        .map_err(|e| {
            ProtoError::io(format!(
                "a move of its data was under way and cannot be finished: {e:#}"
            ))
        })?;
        let unfinished = |why: String| {
            ProtoError::io(format!(
                "a move of its data from {} to {} was under way and cannot be finished or undone yet: {why}",
                journal.from_data_folder.display(),
                shown_path(&journal.to_data_folder)
            ))
        };
        if journal.done {
            if journal.how == MoveHow::Copy && !relocation.all_at_to() {
                // The new place is not all there (its disk not mounted?): the old copy
                // stays, and so does the journal, for a start that finds the new one.
                return Err(unfinished(format!(
                    "its new place, {}, is not all there (is its disk mounted?); the old copy is kept",
                    shown_path(&journal.to_data_folder)
                )));
            }
            let tidied = match journal.how {
                MoveHow::Copy => relocation.remove_at_from(),
                MoveHow::Rename => relocation.tidy_from(),
            };
            if let Err(why) = tidied {
                // It runs from the new place all the same; the old files are left.
                tracing::warn!(torrent = %id, "the old place of a finished move is not cleared: {why}");
            }
            tracing::info!(torrent = %id, "finished the move to {}", shown_path(&journal.to_data_folder));
        } else {
            match journal.how {
                MoveHow::Rename if relocation.any_at_to() && !relocation.any_at_from() => {
                    // Every file went: the move is finished as asked.
                    spec.save_folder = journal.to_save_folder.clone();
                    spec.data_folder = journal.to_data_folder.clone();
                    if let Err(why) = relocation.tidy_from() {
                        tracing::warn!(torrent = %id, "the old place of a finished move is not cleared: {why}");
                    }
                    tracing::info!(torrent = %id, "finished the move to {}", shown_path(&journal.to_data_folder));
                }
                MoveHow::Rename => {
                    relocation
                        .rename_back()
                        .map_err(|e| unfinished(format!("{e:#}")))?;
                    tracing::info!(torrent = %id, "undid an unfinished move to {}", shown_path(&journal.to_data_folder));
                }
                MoveHow::Copy if journal.placing && relocation.place_each().is_ok() => {
                    // Whole and verified, only their names were being given: finished.
                    spec.save_folder = journal.to_save_folder.clone();
                    spec.data_folder = journal.to_data_folder.clone();
                    if let Err(why) = relocation.remove_at_from() {
                        tracing::warn!(torrent = %id, "the old place of a finished move is not cleared: {why}");
                    }
                    tracing::info!(torrent = %id, "finished the move to {}", shown_path(&journal.to_data_folder));
                }
                MoveHow::Copy => {
                    // Only the copy's own files go: those under the move's names (a file of
                    // the user's at a copy's name is never touched). While placing, a copy
                    // whose move's name is gone was given its own name by the move.
                    if journal.placing {
                        relocation.unplace();
                    }
                    relocation.remove_parts().map_err(unfinished)?;
                    tracing::info!(torrent = %id, "undid an unfinished copy to {}", shown_path(&journal.to_data_folder));
                }
            }
        }
        spec.moving = None;
        Ok(true)
    }
}
