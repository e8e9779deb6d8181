//! The service: what the broker does with torrents, for patrons, knowing nothing of IPC.
//!
//! Commands act on a [`Service`] and a patron's [`PatronConnection`]: the engine, the
//! registry of running torrents and who holds them, the crash-safe store of what must survive
//! a restart, and the path policy of where a torrent may write. Connected patrons are known
//! here only as connections (identity and outbox), for holds and status; reading their
//! requests and keeping them in order is the dispatcher's business.

use crate::config::BrokerConfig;
use crate::engine::{self, AddSpec, Added, Engine};
use crate::patron::{Outbox, PatronConnection, PatronId};
use crate::registry::{RestoreSpec, TorrentRegistry, Unrestored};
use crate::shutdown;
use crate::torrent_file::{self, CheckedTorrent};
use anyhow::Context;
use proto::{ProtoError, TorrentId, TorrentInfo, TorrentRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The error for a torrent that went while a request about it was served.
pub fn gone(id: TorrentId) -> ProtoError {
    ProtoError::unknown_torrent(format!("no torrent {id} runs"))
}

/// Mutable state, behind one lock that is never held across an `.await`.
#[derive(Default)]
pub struct ServiceState {
    /// Running torrents and their holders.
    pub registry: TorrentRegistry,
    /// Connected patrons.
    pub patrons: HashMap<PatronId, PatronConnection>,
}

impl ServiceState {
    /// Makes `patron` hold torrent `id`, if both still exist, and returns the torrent. A
    /// patron that left while its request was being served gets no hold: nothing would ever
    /// release it.
    pub fn hold(&mut self, id: TorrentId, patron: PatronId) -> Option<TorrentInfo> {
        let connected = self.patrons.contains_key(&patron);
        let entry = self.registry.get_mut(id)?;
        if connected {
            entry.holders.insert(patron);
        }
        Some(entry.info.clone())
    }
}

/// Configuration, the engine, and the state every thread shares.
pub struct Service {
    /// Settings.
    pub config: BrokerConfig,
    /// The BitTorrent engine.
    pub engine: Engine,
    state: Mutex<ServiceState>,
    /// Stopping is triggered through this (signals, or a patron's stop request).
    pub shutdown: shutdown::Shutdown,
    /// Held from "is it already running?" to "registered", and while a torrent is closed:
    /// the registry and the engine change together under it. Two patrons adding the same
    /// torrent at once must not see each other's half-added files (one would be refused
    /// with file-exists instead of joining). Magnet metadata is fetched before taking it.
    pub adding: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// Held while the registry is saved.
    saving: Mutex<()>,
    /// Every torrent's status, in shared memory for patrons to read (DESIGN §7).
    pub board: crate::board::StatusBoard,
    /// Wakes the status loop ([`crate::fanout`]) before its next pulse: a torrent came,
    /// went, completed, or changed hands.
    pub status_nudge: tokio::sync::Notify,
    /// Readers of a file while it downloads, and their priority windows (DESIGN §8).
    pub streams: crate::streams::Streams,
    /// Patrons' large requests read and not yet answered, all patrons together.
    pub large_requests: Arc<crate::budget::RegionBudget>,
}

impl Service {
    /// Starts the engine and restores the torrents of a previous run.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Arc<Service>> {
        let config_large = (config.max_large_requests, config.max_large_request_bytes);
        let engine = Engine::start(&config).await?;
        let board = crate::board::StatusBoard::create(config.board_slots)
            .context("cannot create the status board (memfd)")?;
        let service = Arc::new(Service {
            config,
            engine,
            state: Mutex::new(ServiceState::default()),
            shutdown: shutdown::Shutdown::default(),
            adding: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
            saving: Mutex::new(()),
            board,
            status_nudge: tokio::sync::Notify::new(),
            streams: Default::default(),
            large_requests: crate::budget::RegionBudget::new(config_large.0, config_large.1),
        });
        service.restore().await?;
        Ok(service)
    }

    fn restore_path(&self) -> PathBuf {
        self.config.state_dir.join("torrents.json")
    }

    /// Adds the recorded torrents again. A record that cannot be restored is kept (shown in
    /// error, retried at the next start); records that cannot be read stop the start, and
    /// nothing is overwritten.
    async fn restore(&self) -> anyhow::Result<()> {
        crate::store::check_state_folder(&self.config.torrents_dir())?;
        let records = TorrentRegistry::load_records(&self.restore_path())
            .map_err(|why| anyhow::anyhow!(why))?;
        for id in records.keys() {
            self.engine.reserve_id(*id);
            // A .torrent that is not a regular file of ours (a FIFO planted there would hang
            // the start while the lock is held) refuses the start, naming it; a missing one
            // is a record kept unrestored, as any other failure to restore.
            crate::store::open_state_file(&self.torrent_file_path(*id))?;
        }
        for (id, spec) in records {
            if let Err((error, info, files)) = self.restore_one(id, &spec).await {
                tracing::error!(torrent = %id, "cannot restore, kept for the next start: {error}");
                let unrestored = Unrestored {
                    info,
                    restore: spec,
                    error: error.message,
                    files,
                };
                self.state().registry.keep_unrestored(id, unrestored);
            }
        }
        // Files of torrents that are no longer recorded (ephemeral, or closed mid-save).
        if let Ok(dir) = std::fs::read_dir(self.config.torrents_dir()) {
            for file in dir.flatten() {
                let id = file
                    .path()
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                    .map(TorrentId);
                let is_record = file.path().extension().is_some_and(|e| e == "torrent");
                // Only `<id>.torrent` of an id no record names: nothing else is ours to sweep.
                if is_record && id.is_some_and(|id| !self.state().registry.remembers(id)) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        // Fast-resume state of torrents no longer recorded (closed while the broker was
        // killed): a later add of the same torrent must check its data afresh.
        let remembered = self.state().registry.ids();
        self.engine.sweep_verified(&remembered);
        // Nothing to save: every record is kept, restored or not. (A start must not need a
        // writable state disk: a full one would lock every patron out.)
        Ok(())
    }

    /// Restores one record; on failure, the reason and what is known of the torrent.
    async fn restore_one(
        &self,
        id: TorrentId,
        spec: &RestoreSpec,
    ) -> Result<(), (ProtoError, TorrentInfo, Arc<[PathBuf]>)> {
        let mut files: Arc<[PathBuf]> = Arc::from(Vec::new());
        let mut info = TorrentInfo {
            id,
            info_hash: proto::InfoHash([0; 20]),
            name: format!("torrent {id}"),
            save_folder: spec.save_folder.display().to_string(),
            total_bytes: 0,
        };
        let path = self.torrent_file_path(id);
        let bytes = match crate::store::read_state_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let why = format!("{} is missing", path.display());
                return Err((ProtoError::io(why), info.clone(), files.clone()));
            }
            Err(e) => {
                let error = ProtoError::io(e.to_string());
                return Err((error, info.clone(), files.clone()));
            }
        };
        let checked = torrent_file::check_torrent_file(&bytes, self.config.loopback_only)
            .map_err(|e| (e, info.clone(), files.clone()))?;
        info = checked.info(id, &spec.save_folder);
        files = checked.full_paths(&spec.data_folder);
        // Two records with a file in common (one kept while the other was added): the
        // second stays a record, not restored over the first's data.
        if let Err(error) = self.room_for_files(&files, Some(id)) {
            return Err((error, info, files));
        }
        self.check_restorable_folder(&spec.save_folder)
            .and_then(|()| crate::roots::check_torrent_paths(&spec.save_folder, &checked, false))
            .map_err(|e| (e, info.clone(), files.clone()))?;
        let added = self
            .engine
            .add(AddSpec {
                torrent: checked.bytes.clone(),
                data_folder: spec.data_folder.clone(),
                paused: spec.paused,
                only_files: spec.only_files.clone(),
                // The files are this torrent's own; the engine re-verifies them.
                overwrite: true,
                peers: spec.all_peers(),
                id: Some(id),
                rates: spec.rates,
                // What the engine verified (under this id) is this torrent's own.
                resume: true,
                files: checked.relative_paths(),
            })
            .await
            .map_err(|e| (e, info.clone(), files.clone()))?;
        if !added.is_new || added.id != id {
            // Two records of one torrent (added again while the first could not be restored):
            // the second is kept, not silently merged away.
            let why = format!(
                "the same torrent is already restored as torrent {}",
                added.id
            );
            return Err((ProtoError::bad_request(why), info, files));
        }
        tracing::info!(torrent = %id, name = %checked.name, "restored torrent");
        let info = checked.info(added.id, &spec.save_folder);
        self.state()
            .registry
            .insert_or_hold(info, added.handle, spec.clone(), None);
        Ok(())
    }

    /// A save folder is used again only as it was: an existing folder inside the roots. A
    /// missing one is not created again (an unmounted disk would have the torrent written
    /// onto the disk beneath the mount point).
    fn check_restorable_folder(&self, folder: &Path) -> Result<(), ProtoError> {
        let io = |why: String| ProtoError::io(why);
        let meta = std::fs::metadata(folder).map_err(|e| {
            io(format!(
                "save folder {} is unusable: {e} (is its disk mounted?)",
                folder.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(io(format!(
                "save folder {} is not a folder",
                folder.display()
            )));
        }
        let canonical = folder.canonicalize().map_err(|e| {
            io(format!(
                "cannot resolve save folder {}: {e}",
                folder.display()
            ))
        })?;
        self.check_inside_roots(&canonical)
    }

    fn torrent_file_path(&self, id: TorrentId) -> PathBuf {
        self.config.torrents_dir().join(format!("{id}.torrent"))
    }

    /// Records a torrent the engine just accepted for `holder` (persisting it, unless it is
    /// ephemeral), or makes `holder` join it if the engine already ran it. A new torrent that
    /// cannot be recorded durably is stopped again and the add fails: a torrent the broker
    /// said it runs is one it will still run after a restart.
    pub async fn register(
        &self,
        added: Added,
        checked: &CheckedTorrent,
        restore: RestoreSpec,
        holder: PatronId,
    ) -> Result<(TorrentInfo, bool), ProtoError> {
        let info = checked.info(added.id, &restore.save_folder);
        let id = added.id;
        let record = added.is_new && !restore.ephemeral;
        let path = self.torrent_file_path(id);
        if record {
            let written = crate::store::check_state_folder(&self.config.torrents_dir())
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    crate::config::create_private_dir(&self.config.torrents_dir())
                        .map_err(|e| format!("{e:#}"))
                })
                .and_then(|()| {
                    crate::store::write_atomically(&path, &checked.bytes)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))
                });
            if let Err(why) = written {
                return Err(self.unrecordable(id, &path, why).await);
            }
        }
        let kept = {
            let mut state = self.state();
            state
                .registry
                .insert_or_hold(info.clone(), added.handle, restore, None);
            let info = state.hold(id, holder);
            // An ephemeral torrent whose creator left before it started has nobody to hold it.
            let entry = state.registry.get(id);
            if entry.is_some_and(|e| e.restore.ephemeral && e.holders.is_empty()) {
                state.registry.remove(id);
                None
            } else {
                info
            }
        };
        // Recorded before the patron is told: every later save includes it too.
        if record {
            if let Err(why) = self.save_registry() {
                self.state().registry.remove(id);
                return Err(self.unrecordable(id, &path, why).await);
            }
        }
        match kept {
            Some(info) => Ok((info, added.is_new)),
            None => {
                tracing::info!(torrent = %id, "closing ephemeral torrent: its creator left");
                if let Err(e) = self.stop_torrent(id, false).await {
                    tracing::warn!(torrent = %id, "cannot close: {e:#}");
                }
                Ok((info, added.is_new))
            }
        }
    }

    /// Undoes a new torrent the broker could not record, and says why.
    async fn unrecordable(&self, id: TorrentId, path: &Path, why: String) -> ProtoError {
        tracing::error!(torrent = %id, "cannot record a new torrent, stopping it: {why}");
        let _ = crate::store::remove_durably(path);
        if let Err(e) = self.engine.remove(id, false).await {
            tracing::warn!(torrent = %id, "cannot stop it: {e:#}");
        }
        ProtoError::io(format!(
            "the broker cannot record the torrent, so it did not start it: {why}"
        ))
    }

    /// A running torrent's id and engine handle.
    pub fn running(
        &self,
        torrent: TorrentRef,
    ) -> Result<(TorrentId, engine::ManagedTorrentHandle), ProtoError> {
        let state = self.state();
        let found = state
            .registry
            .resolve(torrent)
            .and_then(|id| state.registry.get(id).map(|e| (id, e.handle.clone())));
        found.ok_or_else(|| match state.registry.placeholder(torrent) {
            Some((info, state)) => {
                let why = match state {
                    proto::TorrentState::Error(why) => why,
                    other => other.as_str().to_owned(),
                };
                ProtoError::unknown_torrent(format!("torrent {} does not run: {why}", info.id))
            }
            None => ProtoError::unknown_torrent(format!("no torrent {torrent} runs")),
        })
    }

    /// Changes a running torrent's record with `change` and saves the records. If they
    /// cannot be saved, the change is undone and the error says why: what the broker
    /// reports done is what a restart brings back.
    pub fn update_record(
        &self,
        id: TorrentId,
        change: impl FnOnce(&mut RestoreSpec),
    ) -> Result<(), ProtoError> {
        let (before, recorded) = {
            let mut state = self.state();
            let entry = state.registry.get_mut(id).ok_or_else(|| gone(id))?;
            let before = entry.restore.clone();
            change(&mut entry.restore);
            (before, !entry.restore.ephemeral)
        };
        if !recorded {
            return Ok(());
        }
        self.save_registry().map_err(|why| {
            if let Some(entry) = self.state().registry.get_mut(id) {
                entry.restore = before;
            }
            ProtoError::io(format!("the change is not made: {why}"))
        })
    }

    /// Dials the peers a torrent's record names (some named since it was added, which the
    /// engine does not know of); those connected meanwhile are skipped.
    pub fn dial_recorded_peers(&self, id: TorrentId, handle: &engine::ManagedTorrentHandle) {
        let peers = self
            .state()
            .registry
            .get(id)
            .map(|e| e.restore.all_peers())
            .unwrap_or_default();
        if !peers.is_empty() {
            if let Err(e) = self.engine.dial(handle, &peers) {
                tracing::info!(torrent = %id, "its peers are not dialled yet: {e}");
            }
        }
    }

    /// A pause or resume reached a torrent checking its data, which librqbit cannot take
    /// then: once the check ends, the engine is made to agree with the record (paused or
    /// not), unless the torrent went or was added again meanwhile.
    pub fn settle_after_check(
        self: &Arc<Self>,
        id: TorrentId,
        handle: engine::ManagedTorrentHandle,
    ) {
        {
            let mut state = self.state();
            match state.registry.get_mut(id) {
                // One task per torrent: it applies whatever the record says when the check ends.
                Some(entry) if !entry.settling => entry.settling = true,
                _ => return,
            }
        }
        let service = self.clone();
        self.runtime.spawn(async move {
            let checked = handle.wait_until_initialized().await;
            let _adding = service.adding.lock().await;
            let paused = {
                let mut state = service.state();
                match state.registry.get_mut(id) {
                    Some(entry) => {
                        entry.settling = false;
                        let same = Arc::ptr_eq(&entry.handle, &handle);
                        same.then_some(entry.restore.paused)
                    }
                    None => None,
                }
            };
            let Some(paused) = paused else {
                return; // closed or added again meanwhile: nothing to settle
            };
            if let Err(e) = checked {
                tracing::info!(torrent = %id, "its check failed; nothing to settle: {e:#}");
                return;
            }
            let applied = if paused {
                service.engine.pause(&handle).await
            } else {
                let resumed = service.engine.resume(&handle).await;
                service.dial_recorded_peers(id, &handle);
                resumed
            };
            match applied {
                Ok(engine::Applied::Now) => {
                    tracing::info!(torrent = %id, paused, "check done: pause or resume applied")
                }
                // Checking again (a recheck came in between): that one settles it.
                Ok(engine::Applied::AfterCheck) => {}
                Err(e) => tracing::warn!(torrent = %id, "after its check: {e}"),
            }
            service.status_nudge.notify_one();
        });
    }

    /// Remembers peers named for a running torrent (its record keeps them, so that a
    /// restarted broker dials them too), and saves the records.
    pub fn remember_peers(&self, id: TorrentId, peers: &[SocketAddr]) -> Result<(), ProtoError> {
        let new = {
            let state = self.state();
            let entry = state.registry.get(id).ok_or_else(|| gone(id))?;
            peers.iter().any(|p| !entry.restore.knows_peer(p))
        };
        if !new {
            return Ok(());
        }
        self.update_record(id, |restore| restore.remember_peers(peers))
    }

    /// Stops, in the engine, a torrent already out of the registry and of the records
    /// ([`Service::forget_record`]; an ephemeral torrent never had one).
    pub async fn stop_torrent(&self, id: TorrentId, delete_data: bool) -> anyhow::Result<()> {
        self.engine.remove(id, delete_data).await
    }

    /// Removes the .torrent kept for a torrent no record names any more.
    pub fn forget_torrent_file(&self, id: TorrentId) {
        let _ = crate::store::remove_durably(&self.torrent_file_path(id));
    }

    /// Deletes a closed torrent's data through the storage (beneath its root, never through
    /// a symlink): its files, the folders its own paths made once empty, and its own folder
    /// (a multi-file torrent's), never the folder it was saved into.
    pub fn delete_data(&self, entry: &crate::registry::TorrentEntry) -> Result<(), String> {
        let data = &entry.restore.data_folder;
        let relative: Vec<PathBuf> = entry
            .files
            .iter()
            .filter_map(|f| f.strip_prefix(data).ok().map(Path::to_path_buf))
            .collect();
        let own_folder = entry.restore.data_folder != entry.restore.save_folder;
        crate::storage::delete_torrent_data(
            &self.config.download_roots,
            data,
            &relative,
            own_folder,
        )
    }

    /// Forgets the records of a torrent just taken out of the registry: the records are saved
    /// without it first, then its .torrent goes. A crash in between leaves a .torrent no
    /// record names (the next start sweeps it), never a record without its .torrent. If the
    /// save fails nothing is removed, and the caller must put the torrent back.
    pub fn forget_record(&self, id: TorrentId) -> Result<(), String> {
        self.save_registry()?;
        let _ = crate::store::remove_durably(&self.torrent_file_path(id));
        Ok(())
    }

    /// The shared state. Never hold it across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, ServiceState> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the registry's restart records, durably. Saves are serialized, and each takes
    /// its snapshot inside that order, so a later state is never overwritten by an earlier
    /// one; the state lock is not held during the write. A failure is logged and returned.
    pub fn save_registry(&self) -> Result<(), String> {
        let path = self.restore_path();
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let json = self.state().registry.records_json();
        let saved = json
            .and_then(|json| crate::store::write_atomically(&path, &json))
            .map_err(|e| format!("cannot save {}: {e}", path.display()));
        if let Err(why) = &saved {
            tracing::error!("{why}");
        }
        saved
    }

    /// Whether one more torrent may start: the broker is not stopping and runs fewer than its
    /// maximum. Every path that adds a torrent asks (DESIGN §4), holding [`Broker::adding`]
    /// for the count to stay true until the torrent is registered.
    pub fn room_for_one_more(&self) -> Result<(), ProtoError> {
        if self.is_stopping() {
            return Err(ProtoError::shutting_down("the broker is stopping"));
        }
        if self.state().registry.len() >= self.config.max_torrents {
            return Err(ProtoError::limit_reached(format!(
                "the broker already runs its maximum of {} torrents",
                self.config.max_torrents
            )));
        }
        Ok(())
    }

    /// Whether a torrent with these files (full paths) may run (DESIGN §4): none of them is
    /// another torrent's (one owner per file; `except`: its own id, at a restore), and they
    /// fit the file budgets, per torrent and for all torrents run or kept together. Every
    /// path that adds a torrent asks, under [`Service::adding`].
    pub fn room_for_files(
        &self,
        files: &[PathBuf],
        except: Option<TorrentId>,
    ) -> Result<(), ProtoError> {
        if files.len() > self.config.max_files_per_torrent {
            return Err(ProtoError::limit_reached(format!(
                "the torrent has {} files; the broker takes at most {} per torrent (--max-files-per-torrent)",
                files.len(),
                self.config.max_files_per_torrent
            )));
        }
        let state = self.state();
        let owned = state.registry.owned_files();
        if owned + files.len() > self.config.max_files {
            return Err(ProtoError::limit_reached(format!(
                "the broker's torrents have {owned} files; {} more would pass its maximum of {} (--max-files)",
                files.len(),
                self.config.max_files
            )));
        }
        match state.registry.owned_elsewhere(files, except) {
            Some((path, owner)) => Err(owned_by(&path, owner)),
            None => Ok(()),
        }
    }

    /// Whether the broker is stopping (no new patrons, no new torrents).
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Registers a patron that completed the handshake, unless the broker already serves its
    /// maximum: the count and the insertion happen under one lock, so concurrent handshakes
    /// cannot overshoot it.
    pub fn connect(&self, connection: PatronConnection) -> Result<(), String> {
        let mut state = self.state();
        if state.patrons.len() >= self.config.max_patrons {
            return Err(format!(
                "the broker already serves its maximum of {} patrons",
                self.config.max_patrons
            ));
        }
        tracing::info!(
            patron = connection.id,
            pid = connection.pid,
            "patron connected"
        );
        state.patrons.insert(connection.id, connection);
        Ok(())
    }

    /// A patron left (it exited, crashed, was killed or cut off): its outbox closes now and
    /// its holds are released. Ephemeral torrents nobody holds any more are closed.
    pub fn disconnect(self: &Arc<Self>, patron: PatronId) {
        let orphans = {
            let mut state = self.state();
            let Some(connection) = state.patrons.remove(&patron) else {
                return;
            };
            connection.outbox.close();
            tracing::info!(patron, pid = connection.pid, "patron disconnected");
            state.registry.release_all(patron)
        };
        // Its priority windows leave the engine now, not when its torrents do. Outside the
        // state lock: opening a stream takes the streams' lock, then this one.
        self.streams.close_all_of(patron);
        // Its holds are off the board at once (one wake however many leave together).
        self.status_nudge.notify_one();
        if orphans.is_empty() {
            return;
        }
        let service = self.clone();
        self.runtime.spawn(async move {
            // Registry and engine change together, under the add lock: no add of the same
            // torrent can find it in one and not the other.
            let _adding = service.adding.lock().await;
            for id in orphans {
                if !service.state().registry.remove_orphan(id) {
                    continue; // someone joined it meanwhile
                }
                tracing::info!(torrent = %id, "closing ephemeral torrent: its last holder left");
                if let Err(e) = service.stop_torrent(id, false).await {
                    tracing::warn!(torrent = %id, "cannot close: {e:#}");
                }
            }
            service.status_nudge.notify_one();
        });
    }

    /// A torrent's engine handle for a stream: `None` when it no longer runs, `Some(None)`
    /// while it is being added again (a recheck).
    pub fn handle_for_stream(&self, id: TorrentId) -> Option<Option<engine::ManagedTorrentHandle>> {
        self.state().registry.get(id).map(|e| e.live_handle())
    }

    /// A connected patron.
    pub fn connection(&self, patron: PatronId) -> Option<PatronConnection> {
        self.state().patrons.get(&patron).cloned()
    }

    /// Every connected patron's outbox (to say goodbye).
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        let state = self.state();
        state.patrons.values().map(|p| p.outbox.clone()).collect()
    }

    /// A running torrent's status now.
    pub fn current_status(&self, id: TorrentId) -> Option<proto::TorrentStatus> {
        // Stats are computed outside the lock (see the fan-out).
        let (info, handle) = {
            let state = self.state();
            let entry = state.registry.get(id)?;
            (entry.info.clone(), entry.live_handle())
        };
        Some(engine::status_or_checking(&info, handle.as_ref()))
    }

    /// Brings torrent `id`'s line on the board up to date now (shown, changed, or taken off):
    /// a patron that got the reply to its add or close reads the board accordingly.
    pub fn sync_board(&self, id: TorrentId) {
        // The engine's stats first, without any lock; then, under the board's deciding lock
        // (a status pass may hold it), only a look at the registry and the write.
        let handle = self
            .state()
            .registry
            .get(id)
            .and_then(|e| Some((e.info.name.clone(), e.live_handle()?)));
        let status = handle.map(|(name, handle)| engine::status_of(id, &name, &handle));
        let _deciding = self.board.decide();
        let summary = {
            let state = self.state();
            match (state.registry.get(id), status) {
                (Some(entry), Some(status)) => Some(proto::TorrentSummary {
                    status,
                    info: entry.info.clone(),
                    holders: entry.holders.len() as u32,
                    held_by_you: false,
                    ephemeral: entry.restore.ephemeral,
                }),
                // Gone, or new since the first look: the next pass shows it.
                (Some(_), None) => return,
                (None, _) => state
                    .registry
                    .placeholders()
                    .find(|(info, _, _)| info.id == id)
                    .map(|(info, state, holders)| proto::TorrentSummary {
                        status: proto::TorrentStatus::idle(&info, state),
                        info,
                        holders,
                        held_by_you: false,
                        ephemeral: false,
                    }),
            }
        };
        match summary {
            Some(summary) => self.board.show(summary),
            None => self.board.remove(id),
        }
    }

    /// Records that torrent `id`'s files, as they are now, hold what its bitfield says
    /// (see [`crate::storage::FileStamp`]). Blocking: it looks at every file.
    pub fn stamp_verified(&self, id: TorrentId) {
        let found = {
            let state = self.state();
            state
                .registry
                .get(id)
                .and_then(|e| Some((e.restore.data_folder.clone(), e.live_handle()?)))
        };
        let Some((folder, handle)) = found else {
            return;
        };
        // Every file the engine lists, padding included, in its order: as compared at the
        // next restore (`AddSpec::files`).
        let Ok(files) = handle.with_metadata(|meta| {
            meta.file_infos
                .iter()
                .map(|f| (f.relative_filename.clone(), f.attrs.padding))
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        self.engine.stamp_verified(id, &folder, &files);
    }

    /// Resolves a reference to a running torrent's id.
    pub fn resolve(&self, torrent: TorrentRef) -> Result<TorrentId, ProtoError> {
        self.state()
            .registry
            .resolve(torrent)
            .ok_or_else(|| ProtoError::unknown_torrent(format!("no torrent {torrent} runs")))
    }

    /// The canonical save folder for a request: the one named (which must be absolute and
    /// inside a download root) or the default. A missing one is not made here: the storage
    /// makes it, beneath the root, once the torrent is accepted, so a refused add leaves no
    /// folder behind.
    pub fn save_folder(&self, requested: Option<&str>) -> Result<PathBuf, ProtoError> {
        let Some(requested) = requested else {
            return Ok(self.config.default_download_dir.clone());
        };
        let not_allowed = |why: String| ProtoError::path_not_allowed(why);
        let path = Path::new(requested);
        if !path.is_absolute() {
            return Err(not_allowed(format!(
                "save folder {requested:?} is not an absolute path"
            )));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(not_allowed(format!(
                "save folder {requested:?} contains `..`"
            )));
        }
        // Check the nearest existing ancestor (symlinks resolved) before creating anything.
        let existing = path
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        let canonical = existing
            .canonicalize()
            .map_err(|e| not_allowed(format!("cannot resolve {}: {e}", existing.display())))?;
        let rest = path.strip_prefix(existing).unwrap_or(Path::new(""));
        let full = if rest.as_os_str().is_empty() {
            canonical
        } else {
            canonical.join(rest)
        };
        self.check_inside_roots(&full)?;
        Ok(full)
    }

    /// Refuses a canonical path outside every download root.
    pub fn check_inside_roots(&self, path: &Path) -> Result<(), ProtoError> {
        if self
            .config
            .download_roots
            .iter()
            .any(|root| path.starts_with(root))
        {
            return Ok(());
        }
        let roots: Vec<String> = self
            .config
            .download_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        Err(ProtoError::path_not_allowed(format!(
                "{} is outside the broker's download roots ({}); start the broker with --download-root to allow it",
                path.display(),
                roots.join(", ")
            ),
        ))
    }
}

/// The refusal of a torrent with a file that `owner` has (DESIGN §4: one owner per file).
pub fn owned_by(path: &Path, owner: TorrentId) -> ProtoError {
    ProtoError::file_owned(format!(
            "{} is torrent {owner}'s; a file has one torrent at most (with --overwrite too): choose another save folder, or close torrent {owner} first",
            path.display()
        ),
    )
}

impl crate::streams::Torrents for Service {
    fn handle_for_stream(&self, id: TorrentId) -> Option<Option<engine::ManagedTorrentHandle>> {
        Service::handle_for_stream(self, id)
    }

    fn is_connected(&self, patron: PatronId) -> bool {
        self.connection(patron).is_some()
    }
}
