//! The one librqbit `Session`, and the few things the broker asks of it.
//!
//! Everything librqbit-specific stays in this module: the session's network settings
//! (loopback-only really means no packet off 127.0.0.1), id allocation, and turning its
//! stats into the protocol's [`TorrentStatus`].

use crate::config::BrokerConfig;
use crate::fast_resume::FastResume;
use crate::storage::{BeneathStorageFactory, FilePool, FileStamp, Vouched};
use anyhow::Context;
use librqbit::api::TorrentIdOrHash;
use librqbit::limits::{Limits, LimitsConfig};
use librqbit::{
    AddTorrent, AddTorrentOptions, AddTorrentResponse, ConnectionOptions, ListenerMode,
    ListenerOptions, ManagedTorrent, PeerConnectionOptions, Session, SessionOptions,
    TorrentStatsState,
};
use proto::{
    BannedPeer, ErrorKind, FileEntry, InfoHash, PeerEntry, ProtoError, TorrentId, TorrentState,
    TorrentStatus,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a peer link may stay silent. librqbit's default read timeout is 10 s, but
/// BitTorrent peers only owe a keep-alive every two minutes: transmission, leeching, sends its
/// extended handshake and then nothing until its 10 s rechoke decides to be interested, so
/// librqbit hung up on it just before it asked for anything (traced with transmission's
/// `TR_DEBUG_FD`). The same timeout bounds each write and each handshake.
const PEER_CONNECTIONS: PeerConnectionOptions = PeerConnectionOptions {
    connect_timeout: None,
    read_write_timeout: Some(Duration::from_secs(150)),
    // Well inside the two minutes other clients wait before dropping a silent peer.
    keep_alive_interval: Some(Duration::from_secs(60)),
    max_request_window: None,
};

/// librqbit's handle to one torrent.
pub type ManagedTorrentHandle = Arc<ManagedTorrent>;

/// librqbit's reader of one file of a torrent, with its priority window.
pub use librqbit::FileStream;

/// The engine and what the broker knows about driving it.
pub struct Engine {
    session: Arc<Session>,
    /// Ids are chosen here, not by librqbit: its JSON store hands two concurrent adds the same
    /// id (and then wrongly reports the second torrent as already managed).
    next_id: AtomicUsize,
    /// Ids below this one may have been handed out already, in this run or an earlier one
    /// (kept in `<state dir>/next-id`): a restart starts above it, so an id never names two
    /// torrents in one state dir.
    ids_written: std::sync::Mutex<usize>,
    ids_path: PathBuf,
    /// Whether the DHT runs (a magnet can then be resolved without peers or trackers).
    dht: bool,
    /// Where the engine keeps each torrent's verified pieces: fast resume. The broker's
    /// records say which torrents exist; these files only spare a restored torrent the full
    /// hash check.
    fast_resume: FastResume,
    /// The listen address it was asked for.
    listen: SocketAddr,
    /// The data files the engine holds open, for every torrent (through [`crate::storage`]).
    files: Arc<FilePool>,
    /// The download roots (canonical), beneath which every data file is reached.
    roots: Vec<PathBuf>,
    /// What each torrent's files were when last hashed or written by the engine.
    vouched: Arc<Vouched>,
}

/// A torrent the engine accepted.
pub struct Added {
    /// Its id.
    pub id: TorrentId,
    /// The engine's handle.
    pub handle: ManagedTorrentHandle,
    /// False when the engine already ran a torrent with that info hash (a race with another
    /// patron's add): the caller joins it instead.
    pub is_new: bool,
}

/// What to add.
pub struct AddSpec {
    /// Checked .torrent bytes.
    pub torrent: Vec<u8>,
    /// The folder the engine writes the torrent's files into.
    pub data_folder: PathBuf,
    /// Start paused.
    pub paused: bool,
    /// File selection.
    pub only_files: Option<Vec<usize>>,
    /// Open existing files (and hash-check them) instead of refusing.
    pub overwrite: bool,
    /// Peers to dial.
    pub peers: Vec<SocketAddr>,
    /// Keep this id (a restored torrent); `None` allocates one.
    pub id: Option<TorrentId>,
    /// This torrent's own rate limits.
    pub rates: Rates,
    /// Trust what an earlier run of this torrent (this id) verified: a restore. Otherwise
    /// any fast-resume state left under its id is dropped first, and every byte on disk is
    /// checked. Even then only if its files are as they were when that was recorded.
    pub resume: bool,
    /// Its files, relative to `data_folder` (for `resume`: their stamps are compared).
    pub files: Vec<PathBuf>,
}

/// Whether a pause or resume took effect, or waits for the torrent's check to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Now,
    /// The torrent is checking its data; the caller applies it once the check ends.
    AfterCheck,
}

/// Where a torrent is, as far as pausing goes.
enum Stage {
    Checking,
    Paused,
    Live,
    Failed,
}

/// Whether a torrent's check ended in this run (it is paused or live): only then is what its
/// bitfield says known of its files as they are now. One still checking (or waiting for a
/// check slot at a restart of many) has not asked its vouch yet; one failed may have failed
/// before it did.
pub fn checked(handle: &ManagedTorrentHandle) -> bool {
    matches!(stage_of(handle), Stage::Paused | Stage::Live)
}

/// A torrent's own rate limits in force, bytes per second.
pub fn torrent_limits(handle: &ManagedTorrentHandle) -> proto::RateLimits {
    in_force(handle.shared().ratelimits())
}

/// Sets a torrent's own limits now, kept across its pauses (an engine patch of ours:
/// third_party/README.md); `None`: unchanged, `Some(None)`: lifted.
pub fn set_torrent_limits(
    handle: &ManagedTorrentHandle,
    download: Option<Option<NonZeroU32>>,
    upload: Option<Option<NonZeroU32>>,
) {
    set(handle.shared().ratelimits(), download, upload);
}

/// The limits a limiter keeps, bytes per second.
fn in_force(limits: &Limits) -> proto::RateLimits {
    let config = limits.get_config();
    proto::RateLimits {
        download: config.download_bps.map(|r| u64::from(r.get())),
        upload: config.upload_bps.map(|r| u64::from(r.get())),
    }
}

/// Changes a limiter's limits from its next chunk on (`None`: unchanged; `Some(None)`:
/// lifted).
fn set(limits: &Limits, download: Option<Option<NonZeroU32>>, upload: Option<Option<NonZeroU32>>) {
    if let Some(download) = download {
        limits.set_download_bps(download);
    }
    if let Some(upload) = upload {
        limits.set_upload_bps(upload);
    }
}

fn stage_of(handle: &ManagedTorrentHandle) -> Stage {
    use librqbit::ManagedTorrentState as S;
    handle.with_state(|state| match state {
        S::Initializing(_) => Stage::Checking,
        S::Paused(_) => Stage::Paused,
        S::Live(_) => Stage::Live,
        S::Error(_) | S::None => Stage::Failed,
    })
}

/// A torrent's own rate limits, in bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    /// Download limit.
    pub download: Option<NonZeroU32>,
    /// Upload limit.
    pub upload: Option<NonZeroU32>,
}

/// The DHT's settings: its routing table and node id kept in the state dir (librqbit's
/// default is a per-user cache folder shared by every broker, whose first use also renames
/// unrelated `~/.cache/dht` and `~/.config/dht` folders), on a UDP port of the broker's own
/// (its BitTorrent port's number, as libtorrent does). Two brokers share nothing.
fn dht_config(config: &BrokerConfig) -> anyhow::Result<Option<librqbit::DhtSessionConfig>> {
    if !config.dht {
        return Ok(None);
    }
    let table = config.engine_state_dir().join("dht.json");
    // Read as state: a FIFO there would hang the engine's start.
    crate::store::open_state_file(&table)?;
    Ok(Some(librqbit::DhtSessionConfig {
        bootstrap_addrs: None,
        port: Some(config.listen.port()),
        persistence: Some(librqbit::dht::DhtPersistenceConfig {
            dump_interval: None,
            config_filename: Some(table),
        }),
    }))
}

fn engine_error(context: &str, e: anyhow::Error) -> ProtoError {
    ProtoError::engine(format!("{context}: {e:#}"))
}

impl Engine {
    /// Starts the session; torrents persisted by a previous run come back with it.
    pub async fn start(config: &BrokerConfig) -> anyhow::Result<Engine> {
        let state = config.engine_state_dir();
        crate::store::check_state_folder(&state)?;
        crate::config::create_private_dir(&state)?;
        if config.loopback_only {
            // The next start listens here again if it can: peers that knew it find it.
            let path = crate::config::listen_port_file(&config.state_dir);
            let port = config.listen.port().to_string();
            if let Err(e) = crate::store::write_atomically(&path, port.as_bytes()) {
                tracing::warn!("cannot remember the listen port in {}: {e}", path.display());
            }
        }
        let fast_resume = FastResume::open(&state.join("fastresume"))?;
        let allowlist_url = if config.loopback_only {
            // Belt and braces: even a peer learned from a loopback tracker or PEX is dialled
            // only if it is on loopback.
            let path = state.join("loopback-allowlist.txt");
            // Written once: a start must not need a writable state disk.
            crate::store::write_if_changed(
                &path,
                b"loopback:127.0.0.0-127.255.255.255\nloopback6:::1-::1\n",
            )?;
            Some(format!("file://{}", path.display()))
        } else {
            None
        };
        let files = FilePool::new(config.open_files);
        let vouched = Arc::new(Vouched::default());
        let options = SessionOptions {
            // Every read, write, truncate and delete of a torrent's files goes through our
            // storage: beneath a download root, never through a symlink, a bounded pool of
            // open files (DESIGN §4).
            default_storage_factory: Some(
                BeneathStorageFactory::new(
                    config.download_roots.clone(),
                    files.clone(),
                    vouched.clone(),
                )
                .boxed_factory(),
            ),
            dht: dht_config(config)?,
            disable_local_service_discovery: !config.lsd,
            // The broker persists torrents itself (see `registry`); the engine keeps only each
            // torrent's verified pieces, without a session store of its own (a patch of ours:
            // third_party/README.md).
            persistence: None,
            fastresume_folder: Some(fast_resume.dir().to_path_buf()),
            ratelimits: LimitsConfig {
                upload_bps: config.max_upload_rate.and_then(NonZeroU32::new),
                download_bps: config.max_download_rate.and_then(NonZeroU32::new),
            },
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: config.listen,
                enable_upnp_port_forwarding: !config.loopback_only,
                // librqbit announces port 4240 when it listens on loopback unless told.
                announce_port: Some(config.listen.port()),
                ipv4_only: config.listen.is_ipv4(),
                ..Default::default()
            }),
            allowlist_url,
            // librqbit 9.1 opens its UDP tracker socket on [::]:0 whatever the listen
            // address; bound to the loopback device, no socket of the engine can receive
            // or send beyond it.
            bind_device_name: config.loopback_only.then(|| "lo".to_owned()),
            ipv4_only: config.listen.is_ipv4(),
            connect: Some(ConnectionOptions {
                peer_opts: Some(PEER_CONNECTIONS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let session = Session::new_with_opts(config.default_download_dir.clone(), options)
            .await
            .context("cannot start the BitTorrent engine")?;
        let ids_path = config.state_dir.join("next-id");
        let first_id = read_next_id(&ids_path)?;
        Ok(Engine {
            session,
            next_id: AtomicUsize::new(first_id),
            ids_written: std::sync::Mutex::new(first_id),
            ids_path,
            dht: config.dht,
            fast_resume,
            listen: config.listen,
            files,
            roots: config.download_roots.clone(),
            vouched,
        })
    }

    /// Where the engine listens for peers (the address it actually bound).
    pub fn listen_addr(&self) -> SocketAddr {
        self.session.listen_addr().unwrap_or(self.listen)
    }

    /// The pool of open data files (its use is a budget `broker status` shows).
    pub fn file_pool(&self) -> &FilePool {
        &self.files
    }

    /// The global rate limits in force, bytes per second.
    pub fn limits(&self) -> proto::RateLimits {
        in_force(&self.session.ratelimits)
    }

    /// Sets the global limits now, for every torrent's transfers from their next chunk on
    /// (`None`: unchanged; `Some(None)`: lifted).
    pub fn set_limits(
        &self,
        download: Option<Option<NonZeroU32>>,
        upload: Option<Option<NonZeroU32>>,
    ) {
        set(&self.session.ratelimits, download, upload);
    }

    /// A fresh id, for a torrent known before the engine has it (a resolving magnet).
    pub fn allocate_id(&self) -> TorrentId {
        TorrentId(self.take_id() as u64)
    }

    /// The next id, never handed out before in this state dir: past the mark written in
    /// `next-id`, the mark moves [`IDS_AHEAD`] further (durably, before the id is used),
    /// so one write covers many adds; a clean stop writes the exact next id.
    fn take_id(&self) -> usize {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut written = self.ids_written.lock().unwrap_or_else(|e| e.into_inner());
        if id >= *written {
            let mark = id.saturating_add(IDS_AHEAD);
            match crate::store::write_atomically(&self.ids_path, mark.to_string().as_bytes()) {
                Ok(()) => *written = mark,
                // The add goes on: at worst a restart hands out an id that was used before.
                Err(e) => tracing::warn!(
                    "cannot record the next torrent id in {}: {e}",
                    self.ids_path.display()
                ),
            }
        }
        id
    }

    /// Makes sure ids handed out from now on are above `id` (restored torrents keep theirs).
    pub fn reserve_id(&self, id: TorrentId) {
        let next = usize::try_from(id.0).unwrap_or(usize::MAX - 1) + 1;
        self.next_id.fetch_max(next, Ordering::Relaxed);
    }

    /// Fetches a magnet's metadata (bounded by `timeout`) and returns the .torrent bytes and
    /// the peers seen meanwhile.
    ///
    /// The engine tries each address it has once and gives up when none answered: a named
    /// peer that dropped the first connection (a client still starting, or busy with this
    /// broker's other connections: qBittorrent does both) would fail the add in
    /// milliseconds. So every address is tried again after a pause that doubles (0.5, 1, 2
    /// and 4 s: [`MAGNET_RETRIES`] times, while the time allows). A peer that answers but
    /// does not have the torrent looks the same, so the retries stop there: such an add is
    /// refused after 7.5 s, not after the whole timeout. (With DHT on, the engine's stream of
    /// addresses never ends and it never gives up early, so there is nothing to retry: it
    /// does not dial again an address it has seen.)
    pub async fn resolve_magnet(
        &self,
        uri: &str,
        peers: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<SocketAddr>), ProtoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = MAGNET_RETRY_FIRST;
        let mut retries = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .resolve_magnet_once(uri, peers.clone(), left, timeout)
                .await
            {
                Err(e)
                    if e.kind == ErrorKind::MetadataTimeout
                        && retries < MAGNET_RETRIES
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!("no peer gave the magnet's metadata yet; again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    retries += 1;
                }
                done => return done,
            }
        }
    }

    /// One try of [`Engine::resolve_magnet`], bounded by `left` (of the whole `timeout`).
    async fn resolve_magnet_once(
        &self,
        uri: &str,
        peers: Vec<SocketAddr>,
        left: Duration,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<SocketAddr>), ProtoError> {
        let no_source = peers.is_empty() && !self.dht;
        let named = peers.len();
        let options = AddTorrentOptions {
            list_only: true,
            initial_peers: Some(peers),
            ..Default::default()
        };
        let add = self
            .session
            .add_torrent(AddTorrent::from_url(uri.to_owned()), Some(options));
        match tokio::time::timeout(left, add).await {
            Err(_) => Err(ProtoError::metadata_timeout(format!("no peer sent the magnet's metadata within {timeout:?}"),
            )),
            // Not a timeout: the engine gave up at once, having nothing to ask.
            Ok(Err(_)) if no_source => Err(ProtoError::engine(
                "cannot fetch the magnet's metadata: it names no peer and no tracker this broker may use, and DHT is off: add it with --peer HOST:PORT (a peer that has the torrent)",
            )),
            // Every address it had was tried (the engine says its "address stream" is
            // exhausted): none had the torrent, or none answered.
            Ok(Err(e)) if format!("{e:#}").contains("exhausted") => Err(ProtoError::metadata_timeout(format!(
                "no peer gave the magnet's metadata: the peers it could reach ({named} named, and any its trackers gave) do not have the torrent or did not answer; name a peer that has it with --peer HOST:PORT"
            ))),
            Ok(Err(e)) => Err(ProtoError::engine(format!("cannot fetch the magnet's metadata: {e:#}"),
            )),
            Ok(Ok(AddTorrentResponse::ListOnly(listed))) => {
                Ok((listed.torrent_bytes.to_vec(), listed.seen_peers))
            }
            Ok(Ok(_)) => Err(ProtoError::engine("the engine started a torrent it was only asked to list",
            )),
        }
    }

    /// Adds a torrent.
    pub async fn add(&self, spec: AddSpec) -> Result<Added, ProtoError> {
        let output_folder = spec
            .data_folder
            .to_str()
            .ok_or_else(|| ProtoError::path_not_allowed("the save folder is not UTF-8"))?
            .to_owned();
        let id = match spec.id {
            Some(id) => usize::try_from(id.0)
                .map_err(|_| ProtoError::engine(format!("torrent id {id} is too large")))?,
            None => self.take_id(),
        };
        let stamps = self.fast_resume.stamps_path(TorrentId(id as u64));
        if spec.resume {
            crate::stop_point::at("add:fast-resume-vouched");
        } else {
            self.forget_verified(TorrentId(id as u64))
                .map_err(|e| engine_error("cannot start the torrent afresh", e))?;
        }
        // Whether its files are as when its bitfield was last true of them (DESIGN §4,
        // "verified means verified"): then the engine need not read and hash a piece of each
        // again. Asked when its check begins, not now (behind other torrents' checks at a
        // restart of many): a file changed meanwhile is not vouched for, and the engine then
        // hashes every piece.
        let vouch = spec.resume.then(|| {
            let roots = self.roots.clone();
            let (folder, files) = (spec.data_folder.clone(), spec.files.clone());
            Arc::new(move || {
                crate::stop_point::hold("check:vouch-asked");
                let now = crate::storage::stamps_of(&roots, &folder, &files);
                if crate::fast_resume::stamps_at_match(&stamps, &now) {
                    return true;
                }
                tracing::info!(
                    torrent = id,
                    "its files are not as they were when last verified (or that is not known): every piece is hashed again"
                );
                // The engine drops the bitfield: stamps without one vouch for nothing.
                if let Err(e) = crate::store::remove_durably(&stamps) {
                    tracing::warn!(torrent = id, "{e}");
                }
                false
            }) as librqbit::FastResumeVouch
        });
        let options = AddTorrentOptions {
            paused: spec.paused,
            only_files: spec.only_files,
            overwrite: spec.overwrite,
            output_folder: Some(output_folder),
            initial_peers: Some(spec.peers),
            preferred_id: Some(id),
            trust_fastresume: vouch,
            ratelimits: LimitsConfig {
                download_bps: spec.rates.download,
                upload_bps: spec.rates.upload,
            },
            ..Default::default()
        };
        let response = self
            .session
            .add_torrent(AddTorrent::from_bytes(spec.torrent), Some(options))
            .await
            .map_err(|e| engine_error("the engine refused the torrent", e))?;
        match response {
            AddTorrentResponse::Added(id, handle) => Ok(Added {
                id: TorrentId(id as u64),
                handle,
                is_new: true,
            }),
            AddTorrentResponse::AlreadyManaged(id, handle) => Ok(Added {
                id: TorrentId(id as u64),
                handle,
                is_new: false,
            }),
            AddTorrentResponse::ListOnly(_) => {
                Err(ProtoError::engine("the engine only listed the torrent"))
            }
        }
    }

    /// Stops a torrent and forgets it (its fast-resume state too), optionally deleting its
    /// data.
    pub async fn remove(&self, id: TorrentId, delete_data: bool) -> anyhow::Result<()> {
        let key = TorrentIdOrHash::Id(id.0 as usize);
        self.session.delete(key, delete_data).await?;
        self.vouched.forget(id.0 as usize);
        self.forget_verified(id)
    }

    /// The engine's handle of torrent `id`, if the engine has it.
    pub fn handle(&self, id: TorrentId) -> Option<ManagedTorrentHandle> {
        self.session.get(TorrentIdOrHash::Id(id.0 as usize))
    }

    /// What the engine asks for an incoming connection whose info hash no torrent in it has
    /// (a seed the broker took out while idle): `wake` returns its handle once it is back,
    /// or none. An engine patch of ours (third_party/README.md).
    pub fn set_incoming_waker<F, Fut>(&self, wake: F)
    where
        F: Fn(proto::InfoHash) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<ManagedTorrentHandle>> + Send + 'static,
    {
        use futures::FutureExt;
        let wake = Arc::new(wake);
        self.session.set_incoming_waker(Arc::new(move |hash| {
            let wake = wake.clone();
            async move { wake(proto::InfoHash(hash.0)).await }.boxed()
        }));
    }

    /// Stops a torrent and takes it out of the engine, its data and what it verified kept
    /// (a close that cannot be recorded puts it back as it was).
    pub async fn stop_torrent(&self, id: TorrentId) -> anyhow::Result<()> {
        self.session
            .delete(TorrentIdOrHash::Id(id.0 as usize), false)
            .await?;
        self.vouched.forget(id.0 as usize);
        Ok(())
    }

    /// Forgets which pieces of a torrent were verified: its next start checks every byte.
    /// Done when a torrent is closed, rechecked, or added anew (a file left by an earlier
    /// torrent of the same info hash must not vouch for whatever is on disk now).
    pub fn forget_verified(&self, id: TorrentId) -> anyhow::Result<()> {
        // The stamps first: a bitfield without them is never trusted.
        for path in [self.fast_resume.stamps_path(id), self.fast_resume.path(id)] {
            crate::store::remove_durably(&path)
                .with_context(|| format!("cannot remove the fast-resume state of torrent {id}"))?;
        }
        Ok(())
    }

    /// Records what a torrent's files (`files`, relative to `data_folder`) are now, its
    /// verified pieces being known true of them: once it is complete, and at a clean stop.
    /// Blocking (it looks at every file). `files` says which are padding (never on disk).
    /// A file that is not there now (its
    /// disk unmounted) leaves the last stamps as they were: they still say what the
    /// bitfield is true of, should the same file come back.
    /// Returns whether the stamps now vouch for the files as they are.
    pub fn stamp_verified(
        &self,
        id: TorrentId,
        data_folder: &Path,
        files: &[(PathBuf, bool)],
    ) -> bool {
        let paths: Vec<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();
        let stamps = crate::storage::stamps_of(&self.roots, data_folder, &paths);
        let missing = stamps
            .iter()
            .zip(files)
            .any(|(stamp, (_, padding))| stamp.is_none() && !padding);
        if missing {
            tracing::info!(torrent = %id, "a file of it is not there: its last stamps are kept");
            return false;
        }
        if !self.vouched.holds(id.0 as usize, &stamps) {
            // Changed by someone else since it was last hashed or written by the engine (an
            // edit while the broker runs): nothing vouches for it, so the next start hashes
            // it again instead of trusting the bitfield.
            tracing::warn!(
                torrent = %id,
                "a file of it changed since the engine last hashed or wrote it: it is hashed again at the next start"
            );
            if let Err(e) = crate::store::remove_durably(&self.fast_resume.stamps_path(id)) {
                tracing::warn!(torrent = %id, "{e}");
            }
            return false;
        }
        if let Err(e) = self.fast_resume.write_stamps(id, &stamps) {
            tracing::warn!(torrent = %id, "{e:#}; its data is hashed again at the next start");
            return false;
        }
        true
    }

    /// Whether torrent `id`'s fast-resume state vouches, with no engine, for all its
    /// `pieces`: its bitfield has every one, and its files (`files`, relative to
    /// `data_folder`, every file the engine would list, in its order) are as when that was
    /// last known true. What a resume's vouch asks (DESIGN §4), and more. Blocking.
    pub fn vouches_complete(
        &self,
        id: TorrentId,
        data_folder: &Path,
        files: &[PathBuf],
        pieces: u64,
    ) -> bool {
        self.fast_resume.has_every_piece(id, pieces)
            && self.fast_resume.stamps_match(
                id,
                &crate::storage::stamps_of(&self.roots, data_folder, files),
            )
    }

    /// Whether torrent `id`'s files are as its fast-resume record says they were when
    /// verified (`now`: their stamps, every file the engine lists, in its order).
    pub fn stamps_match(&self, id: TorrentId, now: &[Option<FileStamp>]) -> bool {
        self.fast_resume.stamps_match(id, now)
    }

    /// Records torrent `id`'s files at `data_folder` as what its bitfield is true of: they
    /// are the files that were so, moved there by the broker itself (renamed, or copied and
    /// compared by hash).
    pub fn stamp_moved(&self, id: TorrentId, data_folder: &Path, files: &[PathBuf]) {
        let now = crate::storage::stamps_of(&self.roots, data_folder, files);
        if let Err(e) = self.fast_resume.write_stamps(id, &now) {
            tracing::warn!(torrent = %id, "{e:#}; its data is hashed again when it starts");
            let _ = crate::store::remove_durably(&self.fast_resume.stamps_path(id));
        }
    }

    /// Removes the fast-resume files of torrents the broker no longer remembers (closed while
    /// the broker was killed, say).
    pub fn sweep_verified(&self, remembered: &HashSet<TorrentId>) {
        self.fast_resume.sweep(Some(remembered));
    }

    /// Pauses a torrent; a paused one stays as it is. One checking its data is left to
    /// finish the check ([`Applied::AfterCheck`]): librqbit would stop the check for good.
    pub async fn pause(&self, handle: &ManagedTorrentHandle) -> Result<Applied, ProtoError> {
        match stage_of(handle) {
            Stage::Checking => return Ok(Applied::AfterCheck),
            Stage::Paused => return Ok(Applied::Now),
            Stage::Live | Stage::Failed => {}
        }
        self.session
            .pause(handle)
            .await
            .map_err(|e| engine_error("the engine cannot pause it", e))?;
        Ok(Applied::Now)
    }

    /// Resumes a torrent (one in error starts again); a running one stays as it is. One
    /// checking its data is left to finish the check ([`Applied::AfterCheck`]): librqbit
    /// ignores a resume then, and the check ends paused if it began so.
    pub async fn resume(&self, handle: &ManagedTorrentHandle) -> Result<Applied, ProtoError> {
        match stage_of(handle) {
            Stage::Checking => return Ok(Applied::AfterCheck),
            Stage::Live => return Ok(Applied::Now),
            Stage::Paused | Stage::Failed => {}
        }
        self.session
            .unpause(handle)
            .await
            .map_err(|e| engine_error("the engine cannot resume it", e))?;
        Ok(Applied::Now)
    }

    /// Downloads only `files` of a torrent from now on (not while it checks its data).
    pub async fn select_files(
        &self,
        handle: &ManagedTorrentHandle,
        files: &HashSet<usize>,
    ) -> Result<(), ProtoError> {
        if matches!(stage_of(handle), Stage::Checking) {
            return Err(ProtoError::bad_request(
                "the torrent is checking its data: choose its files once the check is done",
            ));
        }
        self.session
            .update_only_files(handle, files)
            .await
            .map_err(|e| engine_error("the engine cannot change the file selection", e))
    }

    /// Refuses a torrent that cannot dial peers now (paused, checking or failed).
    pub fn check_live(&self, handle: &ManagedTorrentHandle) -> Result<(), ProtoError> {
        let state = match stage_of(handle) {
            Stage::Live => None,
            Stage::Paused => Some("paused"),
            Stage::Checking => Some("checking its data"),
            Stage::Failed => Some("failed"),
        };
        match state {
            None => Ok(()),
            Some(why) => Err(ProtoError::bad_request(format!("the torrent is {why}, so it dials no peer now: resume it (or wait for its check), then add them"),
            )),
        }
    }

    /// Dials `peers` for a running torrent now; returns those dialled (the others were
    /// already connected or being dialled).
    pub fn dial(
        &self,
        handle: &ManagedTorrentHandle,
        peers: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, ProtoError> {
        self.check_live(handle)?;
        let Some(live) = handle.live() else {
            return Ok(Vec::new()); // paused since the look above: dialled at resume
        };
        // A banned peer among others is skipped (the engine does not dial it); named alone it
        // is refused, saying why.
        Self::refuse_banned_by(|peer| live.banned_why(peer), peers)?;
        let mut dialled = Vec::new();
        for peer in peers {
            match live.add_peer(*peer) {
                Ok(true) => dialled.push(*peer),
                Ok(false) => {}
                Err(e) => {
                    return Err(ProtoError::engine(format!(
                        "the engine cannot dial {peer}: {e}"
                    )))
                }
            }
        }
        Ok(dialled)
    }

    /// Refuses a list of peers that are all banned by the torrent (each sent a piece that
    /// failed its hash check), saying why: the engine does not dial them, whoever names them,
    /// for as long as the torrent runs (until it is paused, goes to sleep or the broker
    /// restarts). Among others, banned peers are only skipped.
    pub fn refuse_banned(
        &self,
        handle: &ManagedTorrentHandle,
        peers: &[SocketAddr],
    ) -> Result<(), ProtoError> {
        match handle.live() {
            Some(live) => Self::refuse_banned_by(|peer| live.banned_why(peer), peers),
            None => Ok(()),
        }
    }

    fn refuse_banned_by(
        banned_why: impl Fn(SocketAddr) -> Option<String>,
        peers: &[SocketAddr],
    ) -> Result<(), ProtoError> {
        let mut first = None;
        for peer in peers {
            match banned_why(*peer) {
                Some(why) => {
                    first.get_or_insert((*peer, why));
                }
                None => return Ok(()),
            }
        }
        match first {
            Some((peer, why)) => Err(ProtoError::invalid_peer(format!(
                "{peer} is banned by this torrent while it runs: it {why}"
            ))),
            None => Ok(()),
        }
    }

    /// A torrent's files (padding files left out): path, size, bytes verified, selected.
    pub fn files(&self, handle: &ManagedTorrentHandle) -> Result<Vec<FileEntry>, ProtoError> {
        let progress = handle.stats().file_progress;
        let selected = handle.only_files();
        handle
            .with_metadata(|meta| {
                meta.file_infos
                    .iter()
                    .enumerate()
                    .filter(|(_, file)| !file.attrs.padding)
                    .map(|(index, file)| FileEntry {
                        index: index as u32,
                        path: path_text(&file.relative_filename),
                        size: file.len,
                        bytes_done: progress.get(index).copied().unwrap_or(0),
                        selected: selected.as_ref().is_none_or(|only| only.contains(&index)),
                    })
                    .collect()
            })
            .map_err(|e| engine_error("the torrent's files are not known yet", e))
    }

    /// Opens a stream of file `index` (DESIGN §8): its priority window starts at the file's
    /// start. Waits for the torrent's check of its data, if it runs.
    pub async fn open_stream(
        &self,
        handle: &ManagedTorrentHandle,
        index: usize,
    ) -> Result<FileStream, ProtoError> {
        handle
            .clone()
            .stream(index)
            .await
            .map_err(|e| engine_error("the engine cannot stream the file", e))
    }

    /// Where file `index` of a torrent is on disk.
    pub fn local_path(&self, handle: &ManagedTorrentHandle, index: usize) -> Option<PathBuf> {
        let relative = handle
            .with_metadata(|meta| {
                meta.file_infos
                    .get(index)
                    .map(|f| f.relative_filename.clone())
            })
            .ok()??;
        Some(handle.output_folder().join(relative))
    }

    /// A torrent's connected peers, with rates measured over `window`, and those it banned.
    pub async fn peers(
        &self,
        handle: &ManagedTorrentHandle,
        window: Duration,
    ) -> Result<(Vec<PeerEntry>, Vec<BannedPeer>), ProtoError> {
        let total_pieces = handle
            .with_metadata(|meta| meta.info.lengths().total_pieces())
            .map_err(|e| engine_error("the torrent's pieces are not known yet", e))?;
        let sample = || {
            handle
                .live()
                .map(|live| live.per_peer_stats_snapshot(Default::default()).peers)
                .unwrap_or_default()
        };
        let before = sample();
        tokio::time::sleep(window).await;
        let after = sample();
        let per_sec = |now: u64, then: Option<u64>| {
            let delta = now.saturating_sub(then.unwrap_or(now));
            (delta as f64 / window.as_secs_f64().max(0.001)) as u64
        };
        let mut peers: Vec<PeerEntry> = after
            .into_iter()
            .map(|(address, stats)| {
                let then = before.get(&address).map(|b| &b.counters);
                let counters = &stats.counters;
                PeerEntry {
                    download_rate: per_sec(counters.fetched_bytes, then.map(|c| c.fetched_bytes)),
                    upload_rate: per_sec(counters.uploaded_bytes, then.map(|c| c.uploaded_bytes)),
                    downloaded: counters.fetched_bytes,
                    uploaded: counters.uploaded_bytes,
                    incoming: counters.incoming_connections > 0,
                    client: stats.client_name,
                    progress: stats.have_pieces.map(|have| {
                        if total_pieces == 0 {
                            1.0
                        } else {
                            (f64::from(have) / f64::from(total_pieces)).min(1.0)
                        }
                    }),
                    address,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.address.cmp(&b.address));
        let banned = handle
            .live()
            .map(|live| live.banned_peers())
            .unwrap_or_default()
            .into_iter()
            .map(|(address, reason)| BannedPeer {
                address: address.to_string(),
                reason,
            })
            .collect();
        Ok((peers, banned))
    }

    /// Stops the engine (pausing every torrent): nothing writes a torrent's files after.
    pub async fn stop(&self) {
        self.session.stop().await;
    }

    /// Then syncs the file systems, so that what the bitfields say is on disk (see
    /// [`FastResume`]), and marks the run clean.
    pub async fn stop_cleanly(&self) {
        self.fast_resume.stopped_cleanly().await;
        // The exact next id, not the mark ahead of it: after a clean stop ids go on where
        // they were (only a crash skips to the mark).
        let next = self.next_id.load(Ordering::Relaxed);
        if let Err(e) = crate::store::write_atomically(&self.ids_path, next.to_string().as_bytes())
        {
            tracing::warn!("cannot record the next torrent id: {e}");
        }
    }
}

/// A path inside a torrent as `/`-separated text.
pub fn path_text(path: &Path) -> String {
    let parts: Vec<_> = path.iter().map(|p| p.to_string_lossy()).collect();
    parts.join("/")
}

/// A registered torrent's status: [`status_of`] its handle, or `checking` while it has none
/// to read (being added again, see [`crate::registry::TorrentEntry::live_handle`]).
/// Ids handed out ahead of what `next-id` says, per write of it (after a crash, the ids go
/// on from the mark: a gap of at most this many).
const IDS_AHEAD: usize = 64;

/// The first pause before a magnet's addresses are all tried again ([`Engine::resolve_magnet`]).
const MAGNET_RETRY_FIRST: Duration = Duration::from_millis(500);
/// How many times a magnet's addresses are tried again, each pause twice the one before.
const MAGNET_RETRIES: u32 = 4;

/// The first id a start may hand out: what `next-id` says (0 in a new state dir). A file
/// that is there but cannot be read as one number refuses the start, as the records do.
pub(crate) fn read_next_id(path: &Path) -> anyhow::Result<usize> {
    let Some(bytes) = crate::store::read_state_file(path)? else {
        return Ok(0);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is damaged (it should hold the next torrent id): move it aside to start",
                path.display()
            )
        })
}

/// The protocol's view of a torrent's state right now.
pub fn status_of(id: TorrentId, name: &str, handle: &ManagedTorrentHandle) -> TorrentStatus {
    let stats = handle.stats();
    let complete = stats.finished;
    let state = match (&stats.state, &stats.error) {
        (TorrentStatsState::Error, error) => {
            TorrentState::Error(error.clone().unwrap_or_else(|| "unknown error".into()))
        }
        (TorrentStatsState::Initializing { .. }, _) => TorrentState::Checking,
        (TorrentStatsState::Paused, _) => TorrentState::Paused,
        (TorrentStatsState::Live, _) if complete => TorrentState::Seeding,
        (TorrentStatsState::Live, _) => TorrentState::Downloading,
    };
    let (download_rate, upload_rate, peers, seeds) = match &stats.live {
        Some(live) => (
            mib_per_sec_to_bytes(live.download_speed.mbps),
            mib_per_sec_to_bytes(live.upload_speed.mbps),
            live.snapshot.peer_stats.live,
            live.snapshot.peer_stats.live_seeders,
        ),
        None => (0, 0, 0, 0),
    };
    // A complete torrent downloads nothing more; the engine's estimate decays over seconds
    // and showed a seeding torrent "downloading" at hundreds of MiB/s.
    let download_rate = if complete { 0 } else { download_rate };
    let remaining = stats.total_bytes.saturating_sub(stats.progress_bytes);
    let eta_secs = (!complete && download_rate > 0).then(|| remaining.div_ceil(download_rate));
    let progress = if stats.total_bytes == 0 {
        if complete {
            1.0
        } else {
            0.0
        }
    } else {
        stats.progress_bytes as f64 / stats.total_bytes as f64
    };
    TorrentStatus {
        id,
        info_hash: InfoHash(handle.info_hash().0),
        name: name.to_owned(),
        state,
        progress,
        bytes_done: stats.progress_bytes,
        bytes_total: stats.total_bytes,
        download_rate,
        upload_rate,
        uploaded: stats.uploaded_bytes,
        peers,
        seeds,
        eta_secs,
        complete,
        // The broker, not the engine, knows these (see `registry::Overlay`).
        queue_position: None,
        downloaded: 0,
        seeding_secs: 0,
        seed_limits: proto::SeedingLimits::default(),
        labels: Vec::new(),
    }
}

fn mib_per_sec_to_bytes(mib: f64) -> u64 {
    if mib.is_finite() && mib > 0.0 {
        (mib * 1024.0 * 1024.0) as u64
    } else {
        0
    }
}

/// Why a torrent failed, if it did.
pub fn failure(handle: &ManagedTorrentHandle) -> Option<String> {
    match stage_of(handle) {
        Stage::Failed => Some(
            handle
                .stats()
                .error
                .unwrap_or_else(|| "stopped by the engine".into()),
        ),
        _ => None,
    }
}

/// The name the engine knows a torrent by.
pub fn name_of(handle: &ManagedTorrentHandle) -> String {
    handle
        .name()
        .unwrap_or_else(|| handle.info_hash().as_string())
}

/// Whether a torrent is private (BEP 27): the engine announces it to its trackers only,
/// never on DHT or LSD. (Not known until its metadata is: not private then.)
pub fn is_private(handle: &ManagedTorrentHandle) -> bool {
    handle
        .with_metadata(|meta| meta.info.info().private)
        .unwrap_or(false)
}

/// Peers a torrent knows of and may talk to now: queued to be dialled, connecting, or live.
pub fn peers_known(handle: &ManagedTorrentHandle) -> u32 {
    handle.live().map_or(0, |live| {
        let peers = live.stats_snapshot().peer_stats;
        peers.queued + peers.connecting + peers.live
    })
}

/// A cheap look at a torrent: counters only, no allocation. When it changes the torrent's
/// full status is worth computing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pulse {
    /// Initializing, paused, live, error (and whether everything selected is verified).
    pub stage: (u8, bool),
    /// Bytes verified.
    pub have: u64,
    /// Bytes uploaded.
    pub uploaded: u64,
    /// Connected peers.
    pub peers: u32,
}

/// The torrent's [`Pulse`] now.
pub fn pulse_of(handle: &ManagedTorrentHandle) -> Pulse {
    use librqbit::ManagedTorrentState as S;
    let (kind, live) = handle.with_state(|state| match state {
        S::Initializing(_) => (1, None),
        S::Paused(_) => (2, None),
        S::Live(live) => (3, Some(live.clone())),
        S::Error(_) => (4, None),
        S::None => (0, None),
    });
    let Some(live) = live else {
        return Pulse {
            stage: (kind, false),
            ..Pulse::default()
        };
    };
    let hns = live.get_hns();
    let snapshot = live.stats_snapshot();
    Pulse {
        stage: (kind, hns.is_some_and(|h| h.needed_bytes == 0)),
        have: hns.map_or(0, |h| h.have_bytes),
        uploaded: snapshot.uploaded_bytes,
        peers: snapshot.peer_stats.live,
    }
}

/// A running torrent's transfer counters, for the broker's own counts (librqbit's start
/// again at each resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Which run of it these count (a new one at each resume).
    pub run: usize,
    /// Bytes uploaded in this run.
    pub uploaded: u64,
    /// Bytes received from peers in this run.
    pub downloaded: u64,
    /// Everything selected is verified.
    pub complete: bool,
    /// Bytes verified.
    pub have: u64,
}

/// The torrent's [`Transfer`] counters, while it runs.
pub fn transfer(handle: &ManagedTorrentHandle) -> Option<Transfer> {
    let live = handle.live()?;
    let snapshot = live.stats_snapshot();
    Some(Transfer {
        run: Arc::as_ptr(&live) as usize,
        uploaded: snapshot.uploaded_bytes,
        downloaded: snapshot.fetched_bytes,
        complete: live.get_hns().is_some_and(|h| h.needed_bytes == 0),
        have: live.get_hns().map_or(0, |h| h.have_bytes),
    })
}

/// What the queue needs of a torrent: where it is, whether everything selected is verified,
/// and a counter that moves with every byte it exchanges (for stalls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLook {
    /// Checking its data (completeness not known yet).
    Checking,
    /// Paused.
    Paused {
        /// Everything selected is verified.
        complete: bool,
    },
    /// Running.
    Live {
        /// Everything selected is verified.
        complete: bool,
        /// Bytes verified plus bytes uploaded.
        moved: u64,
    },
    /// Failed.
    Failed,
}

/// The torrent's [`QueueLook`] now.
pub fn queue_look(handle: &ManagedTorrentHandle) -> QueueLook {
    let pulse = pulse_of(handle);
    match pulse.stage {
        (1, _) => QueueLook::Checking,
        // A paused torrent's counters are not in its pulse: its stats have them.
        (2, _) => QueueLook::Paused {
            complete: handle.stats().finished,
        },
        // Any byte received or sent counts as moving, as in transmission (bytes verified
        // alone would call a download stalled while a large piece comes in).
        (3, complete) => QueueLook::Live {
            complete,
            moved: transfer(handle).map_or(pulse.have, |t| t.downloaded.saturating_add(t.uploaded)),
        },
        _ => QueueLook::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(state: &Path, listen: &str, dht: bool) -> BrokerConfig {
        let mut args = vec!["torrent-broker", "--state-dir", state.to_str().unwrap()];
        args.extend([
            "--listen",
            listen,
            "--download-root",
            state.to_str().unwrap(),
        ]);
        let args = crate::config::BrokerArgs::try_parse_from(args).unwrap();
        // Set here, whatever the environment says (tests run with loopback-only on, which
        // turns the DHT off): only the settings are looked at, nothing is started.
        BrokerConfig {
            dht,
            ..BrokerConfig::resolve(args).unwrap()
        }
    }

    #[test]
    fn each_broker_keeps_its_dht_in_its_own_state_dir_on_its_own_port() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let one = dht_config(&config(a.path(), "127.0.0.1:40001", true))
            .unwrap()
            .unwrap();
        let two = dht_config(&config(b.path(), "127.0.0.1:40002", true))
            .unwrap()
            .unwrap();
        let table = |c: &librqbit::DhtSessionConfig| {
            c.persistence
                .as_ref()
                .and_then(|p| p.config_filename.clone())
                .unwrap()
        };
        assert!(table(&one).starts_with(a.path().canonicalize().unwrap()));
        assert!(table(&two).starts_with(b.path().canonicalize().unwrap()));
        assert_eq!((one.port, two.port), (Some(40001), Some(40002)));
        assert!(dht_config(&config(a.path(), "127.0.0.1:40001", false))
            .unwrap()
            .is_none());
        // A FIFO planted at the table refuses the start instead of hanging it.
        let fifo = a.path().join("engine");
        std::fs::create_dir_all(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo.join("dht.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let Err(e) = dht_config(&config(a.path(), "127.0.0.1:40001", true)) else {
            panic!("a FIFO as the DHT's table was accepted");
        };
        assert!(format!("{e:#}").contains("dht.json"), "{e:#}");
    }
}
