//! The broker's shared state and its life: start, serve, stop.

use crate::config::BrokerConfig;
use crate::engine::{self, AddSpec, Added, Engine};
use crate::patron::{self, Outbox, PatronConnection, PatronId, Pushed, MAX_QUEUED_REPLIES};
use crate::registry::{RestoreSpec, TorrentRegistry, Unrestored};
use crate::requests::RequestReader;
use crate::torrent_file::{self, CheckedTorrent};
use crate::{commands, fanout, rendezvous, shutdown};
use anyhow::Context;
use proto::{ErrorKind, Event, ProtoError, Request, TorrentId, TorrentInfo, TorrentRef};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a stopping broker waits for patrons to take their last event.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// Mutable state, behind one lock that is never held across an `.await`.
#[derive(Default)]
pub struct BrokerState {
    /// Running torrents and their holders.
    pub registry: TorrentRegistry,
    /// Connected patrons.
    pub patrons: HashMap<PatronId, PatronHandle>,
}

impl BrokerState {
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

/// Requests of one patron read and not yet answered, past which its channel is not read until
/// it falls back to half (its own sends then block: back-pressure, DESIGN §4).
pub const MAX_IN_FLIGHT_REQUESTS: usize = 256;
/// Bytes of one patron's requests read and not yet answered, with the same effect.
pub const MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;

/// What became of a request handed to [`Broker::dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatched {
    /// Answered, or queued for its patron's task.
    Taken,
    /// Queued, and its patron has as much in flight as it may: read nothing more of it until
    /// the broker resumes it.
    HoldBack,
    /// The patron is no longer connected (cut off): close its channel.
    Gone,
}

/// What one patron has in flight.
#[derive(Default)]
struct InFlight {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    held_back: std::sync::atomic::AtomicBool,
}

impl InFlight {
    /// At or under half of both limits: a held-back patron is read again.
    fn is_low(&self) -> bool {
        self.requests.load(Ordering::Acquire) <= MAX_IN_FLIGHT_REQUESTS / 2
            && self.bytes.load(Ordering::Acquire) <= MAX_IN_FLIGHT_BYTES / 2
    }
}

/// A connected patron plus the queue of its requests (handled one at a time, in order, so
/// replies come back in request order).
pub struct PatronHandle {
    /// Who it is and where its events go.
    pub connection: PatronConnection,
    requests: mpsc::UnboundedSender<(Request, usize)>,
    /// Requests handed to its task and not yet answered. Only while none is may a request
    /// be answered on the reader thread without overtaking an earlier reply.
    in_flight: Arc<InFlight>,
}

/// The broker: configuration, the engine, and the state every thread shares.
pub struct Broker {
    /// Settings.
    pub config: BrokerConfig,
    /// The BitTorrent engine.
    pub engine: Engine,
    state: Mutex<BrokerState>,
    next_patron: AtomicU64,
    /// Stopping is triggered through this (signals, or a patron's stop request).
    pub shutdown: shutdown::Shutdown,
    /// Held from "is it already running?" to "registered": two patrons adding the same
    /// torrent at once must not see each other's half-added files (one would be refused
    /// with file-exists instead of joining). Magnet metadata is fetched before taking it.
    pub adding: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// The request reader, once serving: told to close a dropped patron's channel at once.
    reader: OnceLock<RequestReader>,
    /// Held while the registry is saved.
    saving: Mutex<()>,
}

impl Broker {
    /// Starts the engine and restores the torrents of a previous run.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Arc<Broker>> {
        let engine = Engine::start(&config).await?;
        let broker = Arc::new(Broker {
            config,
            engine,
            state: Mutex::new(BrokerState::default()),
            next_patron: AtomicU64::new(1),
            shutdown: shutdown::Shutdown::default(),
            adding: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
            reader: OnceLock::new(),
            saving: Mutex::new(()),
        });
        broker.restore().await?;
        Ok(broker)
    }

    /// Runs until SIGTERM/SIGINT or a patron's stop request, then stops cleanly.
    pub async fn serve(self: &Arc<Self>) -> anyhow::Result<()> {
        self.shutdown.on_signals()?;
        let incoming = RequestReader::start(self.clone())?;
        let _ = self.reader.set(incoming.clone());
        let listener = rendezvous::Rendezvous::bind(&self.config.socket_path)?;
        tracing::info!(
            pid = std::process::id(),
            socket = %self.config.socket_path.display(),
            listen = %self.config.listen,
            loopback_only = self.config.loopback_only,
            "broker ready"
        );
        listener.start(self.clone(), incoming)?;
        let fanout = tokio::spawn(fanout::run(self.clone()));
        // systemd (`Type=notify`): patrons can connect from now on.
        notify_service_manager(&[sd_notify::NotifyState::Ready]);
        let reason = self.shutdown.wait().await;
        notify_service_manager(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status(&format!("stopping: {reason}")),
        ]);
        self.stop(&reason).await;
        fanout.abort();
        Ok(())
    }

    fn restore_path(&self) -> PathBuf {
        self.config.state_dir.join("torrents.json")
    }

    /// Adds the recorded torrents again. A record that cannot be restored is kept (shown in
    /// error, retried at the next start); records that cannot be read stop the start, and
    /// nothing is overwritten.
    async fn restore(&self) -> anyhow::Result<()> {
        let records = TorrentRegistry::load_records(&self.restore_path())
            .map_err(|why| anyhow::anyhow!(why))?;
        for id in records.keys() {
            self.engine.reserve_id(*id);
        }
        for (id, spec) in records {
            if let Err((error, info)) = self.restore_one(id, &spec).await {
                tracing::error!(torrent = %id, "cannot restore, kept for the next start: {error}");
                let unrestored = Unrestored {
                    info,
                    restore: spec,
                    error: error.message,
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
                if is_record && id.is_none_or(|id| !self.state().registry.remembers(id)) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
        // Nothing to save: every record is kept, restored or not. (A start must not need a
        // writable state disk: a full one would lock every patron out.)
        Ok(())
    }

    /// Restores one record; on failure, the reason and what is known of the torrent.
    async fn restore_one(
        &self,
        id: TorrentId,
        spec: &RestoreSpec,
    ) -> Result<(), (ProtoError, TorrentInfo)> {
        let mut info = TorrentInfo {
            id,
            info_hash: proto::InfoHash([0; 20]),
            name: format!("torrent {id}"),
            save_folder: spec.save_folder.display().to_string(),
            total_bytes: 0,
        };
        let path = self.torrent_file_path(id);
        let bytes = std::fs::read(&path).map_err(|e| {
            let why = format!("cannot read {}: {e}", path.display());
            (ProtoError::new(ErrorKind::Io, why), info.clone())
        })?;
        let checked = torrent_file::check_torrent_file(&bytes, self.config.loopback_only)
            .map_err(|e| (e, info.clone()))?;
        info = checked.info(id, &spec.save_folder);
        self.check_restorable_folder(&spec.save_folder)
            .and_then(|()| crate::roots::check_torrent_paths(&spec.save_folder, &checked, false))
            .map_err(|e| (e, info.clone()))?;
        let added = self
            .engine
            .add(AddSpec {
                torrent: checked.bytes.clone(),
                data_folder: spec.data_folder.clone(),
                paused: spec.paused,
                only_files: spec.only_files.clone(),
                // The files are this torrent's own; the engine re-verifies them.
                overwrite: true,
                peers: spec.peers.clone(),
                id: Some(id),
            })
            .await
            .map_err(|e| (e, info.clone()))?;
        if !added.is_new || added.id != id {
            // Two records of one torrent (added again while the first could not be restored):
            // the second is kept, not silently merged away.
            let why = format!(
                "the same torrent is already restored as torrent {}",
                added.id
            );
            return Err((ProtoError::new(ErrorKind::BadRequest, why), info));
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
        let io = |why: String| ProtoError::new(ErrorKind::Io, why);
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
            let written = crate::config::create_private_dir(&self.config.torrents_dir())
                .map_err(|e| format!("{e:#}"))
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
        ProtoError::new(
            ErrorKind::Io,
            format!("the broker cannot record the torrent, so it did not start it: {why}"),
        )
    }

    /// Stops a torrent already removed from the registry, and forgets its persisted files.
    pub async fn stop_torrent(&self, id: TorrentId, delete_data: bool) -> anyhow::Result<()> {
        // The records first: a crash (or a full disk) in between leaves a .torrent that no
        // record names, which the next start sweeps, never a record without its .torrent.
        if self.save_registry().is_ok() {
            self.forget_torrent_file(id);
        }
        self.engine.remove(id, delete_data).await
    }

    /// Removes the .torrent of a torrent no record names any more.
    pub fn forget_torrent_file(&self, id: TorrentId) {
        let _ = crate::store::remove_durably(&self.torrent_file_path(id));
    }

    /// The shared state. Never hold it across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, BrokerState> {
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
            return Err(ProtoError::new(
                ErrorKind::ShuttingDown,
                "the broker is stopping",
            ));
        }
        if self.state().registry.len() >= self.config.max_torrents {
            return Err(ProtoError::new(
                ErrorKind::LimitReached,
                format!(
                    "the broker already runs its maximum of {} torrents",
                    self.config.max_torrents
                ),
            ));
        }
        Ok(())
    }

    /// Whether the broker is stopping (no new patrons, no new torrents).
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Registers a patron that completed the handshake, unless the broker already serves
    /// its maximum: the count and the insertion happen under one lock, so concurrent
    /// handshakes cannot overshoot it. Its requests are then served in order by a task of
    /// its own.
    pub fn add_patron(
        self: &Arc<Self>,
        id: PatronId,
        pid: i32,
        outbox: Arc<Outbox>,
    ) -> Result<(), String> {
        let (requests, mut queue) = mpsc::unbounded_channel::<(Request, usize)>();
        let connection = PatronConnection { id, pid, outbox };
        let in_flight = Arc::new(InFlight::default());
        {
            let mut state = self.state();
            if state.patrons.len() >= self.config.max_patrons {
                return Err(format!(
                    "the broker already serves its maximum of {} patrons",
                    self.config.max_patrons
                ));
            }
            state.patrons.insert(
                id,
                PatronHandle {
                    connection: connection.clone(),
                    requests,
                    in_flight: in_flight.clone(),
                },
            );
        }
        let broker = self.clone();
        self.runtime.spawn(async move {
            while let Some((request, size)) = queue.recv().await {
                // A patron that left gets no more work done for it.
                if broker.connection(connection.id).is_some() {
                    commands::serve(&broker, &connection, request).await;
                }
                // After the reply is queued, so a later immediate reply cannot overtake it.
                in_flight.requests.fetch_sub(1, Ordering::AcqRel);
                in_flight.bytes.fetch_sub(size, Ordering::AcqRel);
                if in_flight.is_low() && in_flight.held_back.swap(false, Ordering::AcqRel) {
                    if let Some(reader) = broker.reader.get() {
                        reader.resume(connection.id);
                    }
                }
            }
        });
        tracing::info!(patron = id, pid, "patron connected");
        Ok(())
    }

    /// A fresh patron number.
    pub fn next_patron_id(&self) -> PatronId {
        self.next_patron.fetch_add(1, Ordering::Relaxed)
    }

    /// Answers a decoded request (of `size` bytes on the wire) at once if it never waits on
    /// the engine and nothing of its patron is in flight; otherwise queues it for the
    /// patron's task, and says when the patron has as much in flight as it may.
    pub fn dispatch(
        self: &Arc<Self>,
        patron: PatronId,
        request: Request,
        size: usize,
    ) -> Dispatched {
        let found = self.state().patrons.get(&patron).map(|handle| {
            (
                handle.connection.clone(),
                handle.in_flight.clone(),
                handle.requests.clone(),
            )
        });
        let Some((connection, in_flight, requests)) = found else {
            return Dispatched::Gone;
        };
        tracing::info!(
            patron,
            pid = connection.pid,
            request = %request.id,
            kind = %request.body.kind(),
            "request"
        );
        // Only this thread adds to `in_flight`, so zero here means nothing can be overtaken.
        // A hop to the patron's task costs more than answering a quick request here.
        let request = if in_flight.requests.load(Ordering::Acquire) == 0 {
            match commands::serve_immediate(self, &connection, request) {
                Ok(()) => return Dispatched::Taken,
                Err(request) => request,
            }
        } else {
            request
        };
        // Held back before the counts can fall, so a resume cannot be missed.
        let requests_now = in_flight.requests.load(Ordering::Acquire) + 1;
        let bytes_now = in_flight.bytes.load(Ordering::Acquire) + size;
        let full = requests_now >= MAX_IN_FLIGHT_REQUESTS || bytes_now >= MAX_IN_FLIGHT_BYTES;
        if full {
            in_flight.held_back.store(true, Ordering::Release);
        }
        in_flight.requests.fetch_add(1, Ordering::AcqRel);
        in_flight.bytes.fetch_add(size, Ordering::AcqRel);
        if requests.send((request, size)).is_err() {
            return Dispatched::Gone;
        }
        if !full {
            return Dispatched::Taken;
        }
        // If the task drained to the low mark meanwhile, whoever clears the flag decides:
        // the task (it sends a resume, which the reader handles after holding back) or we
        // (nothing is held back).
        if in_flight.is_low() && in_flight.held_back.swap(false, Ordering::AcqRel) {
            return Dispatched::Taken;
        }
        Dispatched::HoldBack
    }

    /// Tells a patron its message could not be decoded.
    pub fn protocol_error(self: &Arc<Self>, patron: PatronId, message: String) {
        let Some(connection) = self.connection(patron) else {
            return;
        };
        tracing::warn!(
            patron,
            pid = connection.pid,
            "undecodable message: {message}"
        );
        self.deliver(&connection, Event::ProtocolError { message });
    }

    /// A connected patron.
    pub fn connection(&self, patron: PatronId) -> Option<PatronConnection> {
        let state = self.state();
        state.patrons.get(&patron).map(|p| p.connection.clone())
    }

    /// Queues an event that must not be lost for a patron. One that left
    /// [`MAX_QUEUED_REPLIES`] unread is dropped as if it had disconnected.
    pub fn deliver(self: &Arc<Self>, patron: &PatronConnection, event: Event) {
        match patron.outbox.push(event) {
            Pushed::Queued | Pushed::Closed => {}
            Pushed::CutOff => {
                tracing::warn!(
                    patron = patron.id,
                    pid = patron.pid,
                    "cut off: it left {MAX_QUEUED_REPLIES} events unread"
                );
                self.patron_gone(patron.id);
            }
            Pushed::Broken => self.patron_gone(patron.id),
        }
    }

    /// A patron's channel closed (it exited, crashed or was killed): release what it held.
    pub fn patron_gone(self: &Arc<Self>, patron: PatronId) {
        let orphans = {
            let mut state = self.state();
            let Some(handle) = state.patrons.remove(&patron) else {
                return;
            };
            handle.connection.outbox.close();
            tracing::info!(patron, pid = handle.connection.pid, "patron disconnected");
            state.registry.release_all(patron)
        };
        // Its sockets close now, not when its process exits.
        if let Some(reader) = self.reader.get() {
            reader.forget(patron);
        }
        if orphans.is_empty() {
            return;
        }
        let broker = self.clone();
        self.runtime.spawn(async move {
            // Registry and engine change together, under the add lock: no add of the same
            // torrent can find it in one and not the other.
            let _adding = broker.adding.lock().await;
            for id in orphans {
                if !broker.state().registry.remove_orphan(id) {
                    continue; // someone joined it meanwhile
                }
                tracing::info!(torrent = %id, "closing ephemeral torrent: its last holder left");
                if let Err(e) = broker.stop_torrent(id, false).await {
                    tracing::warn!(torrent = %id, "cannot close: {e:#}");
                }
            }
        });
    }

    /// A running torrent's status now.
    pub fn current_status(&self, id: TorrentId) -> Option<proto::TorrentStatus> {
        // Stats are computed outside the lock (see the fan-out).
        let (name, handle) = {
            let state = self.state();
            let entry = state.registry.get(id)?;
            (entry.info.name.clone(), entry.handle.clone())
        };
        Some(engine::status_of(id, &name, &handle))
    }

    /// Resolves a reference to a running torrent's id.
    pub fn resolve(&self, torrent: TorrentRef) -> Result<TorrentId, ProtoError> {
        self.state().registry.resolve(torrent).ok_or_else(|| {
            ProtoError::new(
                ErrorKind::UnknownTorrent,
                format!("no torrent {torrent} runs"),
            )
        })
    }

    /// The canonical save folder for a request: the one named (which must be absolute and
    /// inside a download root, and is created if missing) or the default.
    pub fn save_folder(&self, requested: Option<&str>) -> Result<PathBuf, ProtoError> {
        let Some(requested) = requested else {
            return Ok(self.config.default_download_dir.clone());
        };
        let not_allowed = |why: String| ProtoError::new(ErrorKind::PathNotAllowed, why);
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
        std::fs::create_dir_all(&full).map_err(|e| {
            ProtoError::new(
                ErrorKind::Io,
                format!("cannot create save folder {}: {e}", full.display()),
            )
        })?;
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
        Err(ProtoError::new(
            ErrorKind::PathNotAllowed,
            format!(
                "{} is outside the broker's download roots ({}); start the broker with --download-root to allow it",
                path.display(),
                roots.join(", ")
            ),
        ))
    }

    /// Stops: no new patrons, every patron told, state persisted, engine stopped.
    async fn stop(&self, reason: &str) {
        tracing::info!("stopping: {reason}");
        let _ = std::fs::remove_file(&self.config.socket_path);
        let outboxes: Vec<Arc<Outbox>> = self
            .state()
            .patrons
            .values()
            .map(|p| p.connection.outbox.clone())
            .collect();
        // Say goodbye to everyone at once, then wait (bounded) for the slowest reader.
        let goodbye = Event::BrokerStopping {
            reason: reason.to_owned(),
        };
        let _ = tokio::task::spawn_blocking(move || {
            patron::say_goodbye(&outboxes, goodbye, GOODBYE_WAIT)
        })
        .await;
        let _ = self.save_registry();
        self.engine.stop().await;
        tracing::info!("stopped");
    }
}

/// Starts the broker on a fresh runtime and serves until stopped. What `main` calls.
pub fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("broker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let broker = Broker::start(config).await?;
        broker.serve().await
    })?;
    // Patron reader/writer threads may still block in ipc calls; they die with the process.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) how the broker is doing. Nothing
/// happens without that variable.
fn notify_service_manager(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}
