//! The service: what the broker does with torrents, for patrons, knowing nothing of IPC.
//!
//! It is the only door to the engine, the registry of running torrents and who holds them,
//! and the crash-safe records of what must survive a restart: those are private here. Every
//! change that touches them together is one method, in a file of its own (`add`, `close`,
//! `recheck`, `pause`, `files`, `peers`, `make`, ...), that either completes or leaves all
//! three as they were; commands parse a request, call one method and answer. Connected
//! patrons are known here only as [`PatronConnection`]s (a number and an [`EventSink`]):
//! reading their requests and keeping them in order is the dispatcher's business.

mod add;
mod close;
pub mod fanout;
mod files;
pub mod labels;
pub mod limits;
mod make;
mod move_storage;
mod patrons;
mod pause;
mod peers;
mod policy;
mod queries;
pub mod queue;
mod recheck;
mod restore;
mod seeding;
pub mod sleep;
mod streams;
#[cfg(test)]
mod tests;

pub use add::{parse_peers, Started};
pub use close::Closed;
pub use move_storage::MoveJournal;
pub use seeding::SeedStop;

/// The "patron" the broker's own policies act as (a seeding limit's close): no patron
/// has this number.
pub const POLICY: PatronId = 0;

use crate::config::BrokerConfig;
use crate::engine::{self, Engine};
use crate::registry::{Life, RestoreSpec, TorrentRegistry};
use crate::shutdown;
use crate::sink::{PatronConnection, PatronId};
use proto::{ProtoError, TorrentId, TorrentInfo, TorrentRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The error for a torrent that went while a request about it was served.
pub fn gone(id: TorrentId) -> ProtoError {
    ProtoError::unknown_torrent(format!("no torrent {id} runs"))
}

/// The error for a request about a torrent whose data is being moved (out of the engine
/// until it runs from one place or the other).
pub fn moving(id: TorrentId) -> ProtoError {
    ProtoError::bad_request(format!(
        "torrent {id} is moving its data: ask again once the move is done"
    ))
}

/// Mutable state, behind one lock that is never held across an `.await`.
#[derive(Default)]
struct ServiceState {
    /// Running torrents and their holders.
    registry: TorrentRegistry,
    /// Connected patrons.
    patrons: HashMap<PatronId, PatronConnection>,
}

impl ServiceState {
    /// Makes `patron` hold torrent `id`, if both still exist, and returns the torrent. A
    /// patron that left while its request was being served gets no hold: nothing would ever
    /// release it.
    fn hold(&mut self, id: TorrentId, patron: PatronId) -> Option<TorrentInfo> {
        let connected = self.patrons.contains_key(&patron);
        let entry = self.registry.get_mut(id)?;
        if connected {
            entry.holders.insert(patron);
        }
        Some(entry.info.clone())
    }
}

/// Failures the service's own tests make happen where the engine or the disk would rarely
/// fail on cue. Nothing sets them outside those tests.
#[derive(Default)]
struct Faults {
    #[cfg(test)]
    engine_stop: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    engine_add: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    save: std::sync::atomic::AtomicBool,
}

impl Faults {
    #[cfg(test)]
    fn take(flag: &std::sync::atomic::AtomicBool) -> bool {
        flag.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether the engine's next stop of a torrent fails.
    fn engine_stop(&self) -> bool {
        #[cfg(test)]
        return Self::take(&self.engine_stop);
        #[cfg(not(test))]
        false
    }

    /// Whether the engine's next add fails.
    fn engine_add(&self) -> bool {
        #[cfg(test)]
        return Self::take(&self.engine_add);
        #[cfg(not(test))]
        false
    }

    /// Whether the next save of the records fails.
    fn save(&self) -> bool {
        #[cfg(test)]
        return Self::take(&self.save);
        #[cfg(not(test))]
        false
    }
}

/// Configuration, the engine, and the state every thread shares.
pub struct Service {
    /// Settings.
    pub config: BrokerConfig,
    /// The BitTorrent engine.
    engine: Engine,
    state: Mutex<ServiceState>,
    /// Stopping is triggered through this (signals, or a patron's stop request).
    pub shutdown: shutdown::Shutdown,
    /// Held from "is it already running?" to "registered", and while a torrent is closed,
    /// rechecked, paused or resumed: the registry, the records and the engine change
    /// together under it. Two patrons adding the same torrent at once must not see each
    /// other's half-added files (one would be refused with file-exists instead of joining).
    /// Magnet metadata is fetched before taking it.
    adding: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// The records on disk, one file per torrent (see [`crate::records`]); held while they
    /// are written.
    records: Mutex<crate::records::RecordStore>,
    /// Every torrent's status, in shared memory for patrons to read (DESIGN §7).
    pub board: crate::board::StatusBoard,
    /// Wakes the status loop ([`fanout`]) before its next pulse: a torrent came, went,
    /// completed, or changed hands.
    pub status_nudge: tokio::sync::Notify,
    /// Torrents the engine says changed, for the status loop's next pass.
    pub woken: fanout::Woken,
    /// Torrents awake at the status loop's last pass (see [`fanout::Awake`]).
    pub awake: fanout::Awake,
    /// Readers of a file while it downloads, and their priority windows (DESIGN §8).
    pub streams: crate::streams::Streams,
    /// Patrons' large requests read and not yet answered, all patrons together.
    pub large_requests: Arc<crate::budget::RegionBudget>,
    /// Events patrons leave unread, all patrons together (every outbox counts in it).
    pub unread: Arc<crate::budget::UnreadBudget>,
    /// Downloads left in place by closes without --delete-data (see [`crate::left`]).
    left: crate::left::LeftData,
    /// What was changed while running and is recorded (`settings.json`); held while it is
    /// written.
    settings: Mutex<crate::settings::RunSettings>,
    /// The broker's usual and alternative rate limits (see [`limits`]).
    pub rates: limits::BrokerRates,
    /// How many torrents run at once (see [`queue`]).
    pub queue: queue::Queue,
    /// When torrents stop seeding, and what they moved in all (see [`seeding`]).
    pub seeding: seeding::Seeding,
    /// What labels carry (see [`labels`]).
    labels: labels::Labels,
    /// Idle seeds out of the engine (see [`sleep`]).
    sleeper: sleep::Sleeper,
    /// Programs run when a torrent is added, completes or fails.
    hooks: crate::hooks::Hooks,
    faults: Faults,
}

impl Service {
    /// Starts the engine and restores the torrents of a previous run.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Arc<Service>> {
        use anyhow::Context;
        let config_large = (config.max_large_requests, config.max_large_request_bytes);
        let config_queue = config.queue;
        let config_rates = proto::RateLimits {
            download: config.max_download_rate.map(u64::from),
            upload: config.max_upload_rate.map(u64::from),
        };
        let config_seeding = config.seeding;
        let config_hooks = config.hooks.clone();
        let config_hook_timeout = config.hook_timeout;
        let unread = crate::budget::UnreadBudget::new(
            crate::patron::MAX_UNREAD_REGIONS,
            crate::patron::MAX_UNREAD_REGION_BYTES,
            config.max_unread_bytes,
        );
        let engine = Engine::start(&config).await?;
        let board = crate::board::StatusBoard::create(config.board_slots)
            .context("cannot create the status board (memfd)")?;
        let left = crate::left::LeftData::load(config.state_dir.join("left-data.json"));
        let settings = crate::settings::RunSettings::load(&config.state_dir)
            .map_err(|why| anyhow::anyhow!(why))?;
        let settings_now = settings;
        let labels = labels::Labels::load(&config.state_dir).map_err(|why| anyhow::anyhow!(why))?;
        let records = crate::records::RecordStore::open(&config.state_dir)
            .map_err(|why| anyhow::anyhow!(why))?;
        let service = Arc::new(Service {
            config,
            engine,
            state: Mutex::new(ServiceState::default()),
            shutdown: shutdown::Shutdown::default(),
            adding: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
            records: Mutex::new(records),
            board,
            status_nudge: tokio::sync::Notify::new(),
            woken: Default::default(),
            awake: Default::default(),
            streams: Default::default(),
            large_requests: crate::budget::RegionBudget::new(config_large.0, config_large.1),
            unread,
            left,
            settings: Mutex::new(settings),
            queue: queue::Queue::new(config_queue),
            rates: limits::BrokerRates::new(config_rates, &settings_now),
            seeding: seeding::Seeding::new(config_seeding),
            labels,
            sleeper: Default::default(),
            hooks: crate::hooks::Hooks::new(
                config_hooks.0,
                config_hooks.1,
                config_hooks.2,
                config_hook_timeout,
            ),
            faults: Faults::default(),
        });
        service.apply_rates();
        let waking = Arc::downgrade(&service);
        service.engine.set_incoming_waker(move |info_hash| {
            let service = waking.upgrade();
            async move { service?.wake_for_peer(info_hash).await }
        });
        service.restore().await?;
        policy::start(&service);
        sleep::start(&service);
        service.resume_due_moves();
        Ok(service)
    }

    /// Stops the engine at the broker's stop, its records saved first and every torrent's
    /// files stamped once nothing writes them (see [`Service::stamp_verified`]).
    pub async fn stop_engine(self: &Arc<Self>) {
        let _ = self.save_registry();
        if let Err(why) = self.save_counts() {
            tracing::warn!(
                "what the torrents moved and seeded since the last minute is lost: {why}"
            );
        }
        self.engine.stop().await;
        // Nothing writes the torrents' files now: what they are is what their bitfields
        // say (synced to disk by the clean stop that follows).
        let ids: Vec<_> = self.state().registry.iter().map(|(id, _)| *id).collect();
        let stamping = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                stamping.stamp_verified(id);
            }
        })
        .await;
        self.engine.stop_cleanly().await;
    }

    /// The engine's add: the one way every path (add, make, restore, recheck) puts a
    /// torrent into the engine.
    async fn engine_add(&self, spec: engine::AddSpec) -> Result<engine::Added, ProtoError> {
        if self.faults.engine_add() {
            return Err(ProtoError::engine("a failure injected by a test"));
        }
        self.engine.add(spec).await
    }

    /// Adds a recorded torrent to the engine again under its own id, as its record says
    /// (its own files: overwrite; its rates, labels' included): for a restore, a recheck
    /// (`resume` false: every piece hashed) and a move. `files`: every file the engine
    /// lists, for fast resume's stamps.
    async fn engine_add_again(
        &self,
        id: TorrentId,
        torrent: Vec<u8>,
        restore: &RestoreSpec,
        resume: bool,
        files: Vec<PathBuf>,
    ) -> Result<engine::Added, ProtoError> {
        self.engine_add(engine::AddSpec {
            torrent,
            data_folder: restore.data_folder.clone(),
            paused: restore.engine_paused(),
            only_files: restore.only_files.clone(),
            overwrite: true,
            peers: restore.all_peers(),
            id: Some(id),
            rates: self.label_rates(&restore.labels, restore.rates),
            resume,
            files,
        })
        .await
    }

    /// The engine's stop of one torrent, for a close (its fast-resume state is kept until
    /// the close is certain).
    async fn engine_stop(&self, id: TorrentId) -> anyhow::Result<()> {
        if self.faults.engine_stop() {
            anyhow::bail!("a failure injected by a test");
        }
        self.engine.stop_torrent(id).await
    }

    fn torrent_file_path(&self, id: TorrentId) -> PathBuf {
        self.config.torrents_dir().join(format!("{id}.torrent"))
    }

    /// A running torrent's id and engine handle. One being added again for its recheck has
    /// none until it is back (a moment: the recheck holds the add lock meanwhile, so the
    /// transactions that take it never see that).
    fn running(
        &self,
        torrent: TorrentRef,
    ) -> Result<(TorrentId, engine::ManagedTorrentHandle), ProtoError> {
        let (id, life) = self.life_of(torrent)?;
        match life {
            Life::Running(handle) | Life::Settling(handle) => Ok((id, handle)),
            Life::Restarting => Err(ProtoError::engine(format!(
                "torrent {id} is being added again for its recheck: ask again in a moment"
            ))),
            Life::Moving(_) => Err(moving(id)),
            // The transactions that take the add lock wake it first (`running_awake`).
            Life::Dormant(_) => Err(ProtoError::engine(format!(
                "torrent {id} is out of the engine while idle: ask again in a moment"
            ))),
        }
    }

    /// A running torrent's id and engine handle, a dormant seed woken first (see
    /// [`sleep`]). The caller holds the add lock.
    async fn running_awake(
        self: &Arc<Self>,
        torrent: TorrentRef,
    ) -> Result<(TorrentId, engine::ManagedTorrentHandle), ProtoError> {
        if let (id, Life::Dormant(_)) = self.life_of(torrent)? {
            return Ok((id, self.wake_locked(id).await?));
        }
        self.running(torrent)
    }

    /// A running torrent's id and engine handle, or none for a dormant seed: for a change
    /// recorded with it that the engine takes when it wakes (its rates).
    fn running_or_dormant(
        &self,
        torrent: TorrentRef,
    ) -> Result<(TorrentId, Option<engine::ManagedTorrentHandle>), ProtoError> {
        match self.life_of(torrent)? {
            (id, Life::Dormant(_)) => Ok((id, None)),
            _ => self.running(torrent).map(|(id, handle)| (id, Some(handle))),
        }
    }

    /// A running torrent's id and engine handle, for a request that does not take the add
    /// lock: one being added again for its recheck is waited for (the recheck holds the add
    /// lock until it is back), not refused.
    async fn live(
        self: &Arc<Self>,
        torrent: TorrentRef,
    ) -> Result<(TorrentId, engine::ManagedTorrentHandle), ProtoError> {
        loop {
            match self.life_of(torrent)? {
                (id, Life::Running(handle) | Life::Settling(handle)) => return Ok((id, handle)),
                (_, Life::Restarting) => drop(self.adding.lock().await),
                (id, Life::Moving(_)) => return Err(moving(id)),
                (id, Life::Dormant(_)) => {
                    let _adding = self.adding.lock().await;
                    // Woken meanwhile, or not: the next look says.
                    if matches!(self.life_of(torrent)?, (_, Life::Dormant(_))) {
                        self.wake_locked(id).await?;
                    }
                }
            }
        }
    }

    /// A running torrent's id and where it is in the engine; for one that does not run,
    /// why (a magnet resolving, a record not restored, or nothing of that name).
    fn life_of(&self, torrent: TorrentRef) -> Result<(TorrentId, Life), ProtoError> {
        let state = self.state();
        let found = state
            .registry
            .resolve(torrent)
            .and_then(|id| Some((id, state.registry.get(id)?.life.clone())));
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
    /// reports done is what a restart brings back. Its line on the board shows the change
    /// before the caller replies (a record holds its limits, labels, counts).
    fn update_record(
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
        if recorded {
            self.save_record(id).map_err(|why| {
                if let Some(entry) = self.state().registry.get_mut(id) {
                    entry.restore = before;
                }
                ProtoError::io(format!("the change is not made: {why}"))
            })?;
        }
        self.sync_board(id);
        Ok(())
    }

    /// Dials the peers a torrent's record names (some named since it was added, which the
    /// engine does not know of); those connected meanwhile are skipped.
    fn dial_recorded_peers(&self, id: TorrentId, handle: &engine::ManagedTorrentHandle) {
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

    /// Remembers peers named for a running torrent (its record keeps them, so that a
    /// restarted broker dials them too), and saves the records.
    fn remember_peers(&self, id: TorrentId, peers: &[SocketAddr]) -> Result<(), ProtoError> {
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

    /// Runs the hook for `event` on torrent `id`, if one is set (returns at once).
    pub(crate) fn fire_hook(
        &self,
        event: crate::hooks::HookEvent,
        id: TorrentId,
        error: Option<String>,
    ) {
        let torrent = {
            let state = self.state();
            let Some(entry) = state.registry.get(id) else {
                return;
            };
            crate::hooks::HookTorrent {
                id: id.0,
                info_hash: entry.info.info_hash.to_string(),
                name: entry.info.name.clone(),
                save_folder: entry.info.save_folder.clone(),
                labels: entry.restore.labels.join(","),
                error,
            }
        };
        self.hooks.fire(&self.runtime, event, torrent);
    }

    /// Removes the .torrent kept for a torrent no record names any more.
    fn forget_torrent_file(&self, id: TorrentId) {
        let _ = crate::store::remove_durably(&self.torrent_file_path(id));
    }

    /// Deletes a closed torrent's data through the storage (beneath its root, never through
    /// a symlink): its files, the folders its own paths made once empty, and its own folder
    /// (a multi-file torrent's), never the folder it was saved into.
    fn delete_data(&self, entry: &crate::registry::TorrentEntry) -> Result<(), String> {
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
    fn forget_record(&self, id: TorrentId) -> Result<(), String> {
        self.save_record(id)?;
        let _ = crate::store::remove_durably(&self.torrent_file_path(id));
        Ok(())
    }

    /// The shared state. Never hold it across an `.await`.
    fn state(&self) -> MutexGuard<'_, ServiceState> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the registry's restart records, durably: those that changed since they were
    /// last written (see [`crate::records`]). Saves are serialized, and each takes its
    /// snapshot inside that order, so a later state is never overwritten by an earlier one;
    /// the state lock is not held during the write. A failure is logged and returned.
    fn save_registry(&self) -> Result<(), String> {
        let mut store = self.records();
        let records = self.state().registry.records();
        let saved = self
            .injected_save_failure()
            .and(records)
            .and_then(|records| store.save_all(records));
        self.saved(&store, saved)
    }

    /// Writes one torrent's record (or removes it, if it has none any more): one small
    /// write, however many torrents the broker has. As [`Service::save_registry`] otherwise.
    fn save_record(&self, id: TorrentId) -> Result<(), String> {
        let mut store = self.records();
        let record = self.state().registry.record(id);
        let saved = self
            .injected_save_failure()
            .and(record)
            .and_then(|record| store.save(id, record.as_deref()));
        self.saved(&store, saved)
    }

    fn records(&self) -> MutexGuard<'_, crate::records::RecordStore> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn injected_save_failure(&self) -> std::io::Result<()> {
        match self.faults.save() {
            true => Err(std::io::Error::other("a failure injected by a test")),
            false => Ok(()),
        }
    }

    fn saved(
        &self,
        store: &crate::records::RecordStore,
        saved: std::io::Result<()>,
    ) -> Result<(), String> {
        saved.map_err(|e| {
            let why = format!("cannot save the records in {}: {e}", store.dir().display());
            tracing::error!("{why}");
            why
        })
    }

    /// Whether one more torrent may start: the broker is not stopping and runs fewer than its
    /// maximum. Every path that adds a torrent asks (DESIGN §4), holding [`Broker::adding`]
    /// for the count to stay true until the torrent is registered.
    fn room_for_one_more(&self) -> Result<(), ProtoError> {
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
    fn room_for_files(
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

    /// Changes whenever a torrent, a record or a magnet comes or goes (see
    /// [`TorrentRegistry::version`]).
    pub fn registry_version(&self) -> u64 {
        self.state().registry.version()
    }

    /// Whether a patron is connected (it completed the handshake and has not left).
    pub fn is_connected(&self, patron: PatronId) -> bool {
        self.state().patrons.contains_key(&patron)
    }

    /// A running torrent's status now.
    pub fn current_status(&self, id: TorrentId) -> Option<proto::TorrentStatus> {
        // Stats are computed outside the lock (see the fan-out).
        let seeding = self.seed_policy();
        let (info, handle, place) = {
            let state = self.state();
            let entry = state.registry.get(id)?;
            (entry.info.clone(), entry.source(), entry.overlay(&seeding))
        };
        Some(crate::registry::shown_status(&info, &handle, place))
    }

    /// A torrent the engine would not take back (after a recheck, a move, a wake): out of
    /// the registry, kept as a record not restored (shown in error with `error`, retried at
    /// the next start) unless ephemeral, its holders told it went (`gone`). `info`: what
    /// patrons are told of it, else what the registry knew.
    fn lose_to_unrestored(
        &self,
        id: TorrentId,
        info: Option<TorrentInfo>,
        restore: RestoreSpec,
        error: String,
        gone: String,
    ) {
        let mut state = self.state();
        let (holders, files, known) = match state.registry.remove(id) {
            Some(entry) => (entry.holders, entry.files, Some(entry.info)),
            None => Default::default(),
        };
        if let Some(info) = info.or(known).filter(|_| !restore.ephemeral) {
            state.registry.keep_unrestored(
                id,
                crate::registry::Unrestored {
                    info,
                    restore,
                    error,
                    files,
                },
            );
        }
        for holder in holders {
            if let Some(patron) = state.patrons.get(&holder) {
                patron.send(proto::Event::TorrentGone {
                    id,
                    reason: gone.clone(),
                });
            }
        }
    }

    /// Brings torrent `id`'s line on the board up to date now (shown, changed, or taken off):
    /// a patron that got the reply to its add or close reads the board accordingly.
    pub fn sync_board(&self, id: TorrentId) {
        // The engine's stats first, without any lock; then, under the board's deciding lock
        // (a status pass may hold it), only a look at the registry and the write.
        let seeding = self.seed_policy();
        let handle = self
            .state()
            .registry
            .get(id)
            .and_then(|e| match e.source() {
                // Being added again: its line stays as it is until it is back.
                crate::registry::Source::Restarting => None,
                source => Some((e.info.clone(), source, e.overlay(&seeding))),
            });
        let status = handle
            .map(|(info, source, place)| crate::registry::shown_status(&info, &source, place));
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
    fn stamp_verified(&self, id: TorrentId) -> bool {
        let found = {
            let state = self.state();
            state
                .registry
                .get(id)
                .and_then(|e| Some((e.restore.data_folder.clone(), e.live_handle()?)))
        };
        let Some((folder, handle)) = found else {
            return false;
        };
        // Its check has not ended (a clean stop while it waited behind other torrents'
        // checks): the bitfield on disk is the one its vouch has not yet been asked about,
        // perhaps over files changed while the broker was down. Stamping the files as they
        // are now would vouch for it at the next start; the last stamps still say what it
        // is true of.
        if !crate::engine::checked(&handle) {
            tracing::info!(torrent = %id, "its check has not ended: its last stamps are kept");
            return false;
        }
        // Every file the engine lists, padding included, in its order: as compared at the
        // next restore (`AddSpec::files`).
        let Ok(files) = handle.with_metadata(|meta| {
            meta.file_infos
                .iter()
                .map(|f| (f.relative_filename.clone(), f.attrs.padding))
                .collect::<Vec<_>>()
        }) else {
            return false;
        };
        self.engine.stamp_verified(id, &folder, &files)
    }

    /// The runtime the service runs on (for threads of the broker's own that add through it).
    pub fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.runtime.clone()
    }

    /// The seeding limits torrents get where they have none of their own.
    pub fn seed_policy(&self) -> crate::registry::SeedPolicy {
        crate::registry::SeedPolicy {
            broker: self.seeding.limits(),
            labels: self.labels.book(),
        }
    }

    /// Resolves a reference to a running torrent's id.
    fn resolve(&self, torrent: TorrentRef) -> Result<TorrentId, ProtoError> {
        self.state()
            .registry
            .resolve(torrent)
            .ok_or_else(|| ProtoError::unknown_torrent(format!("no torrent {torrent} runs")))
    }

    /// The canonical save folder for a request: the one named (which must be absolute and
    /// inside a download root) or the default. A missing one is not made here: the storage
    /// makes it, beneath the root, once the torrent is accepted, so a refused add leaves no
    /// folder behind.
    fn save_folder(&self, requested: Option<&str>) -> Result<PathBuf, ProtoError> {
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
    fn check_inside_roots(&self, path: &Path) -> Result<(), ProtoError> {
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
            "{} is outside the broker's download roots ({}); {}",
            path.display(),
            roots.join(", "),
            self.config.roots_advice
        )))
    }
}

/// The refusal of a torrent with a file that `owner` has (DESIGN §4: one owner per file).
pub fn owned_by(path: &Path, owner: TorrentId) -> ProtoError {
    ProtoError::file_owned(format!(
            "{} is torrent {owner}'s; a file has one torrent at most (with --overwrite too): close torrent {owner} first, or save elsewhere",
            path.display()
        ),
    )
}

impl crate::streams::Torrents for Service {
    fn life(&self, id: TorrentId) -> Option<Life> {
        self.state().registry.get(id).map(|e| e.life.clone())
    }

    fn is_connected(&self, patron: PatronId) -> bool {
        Service::is_connected(self, patron)
    }
}
