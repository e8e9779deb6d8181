//! The one librqbit `Session`, and the few things the broker asks of it.
//!
//! Everything librqbit-specific stays in this module: the session's network settings
//! (loopback-only really means no packet off 127.0.0.1), id allocation, and turning its
//! stats into the protocol's [`TorrentStatus`].

use crate::config::BrokerConfig;
use anyhow::Context;
use librqbit::api::TorrentIdOrHash;
use librqbit::limits::LimitsConfig;
use librqbit::{
    AddTorrent, AddTorrentOptions, AddTorrentResponse, ConnectionOptions, ListenerMode,
    ListenerOptions, ManagedTorrent, PeerConnectionOptions, Session, SessionOptions,
    TorrentStatsState,
};
use proto::{ErrorKind, InfoHash, ProtoError, TorrentId, TorrentState, TorrentStatus};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
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

/// The engine and what the broker knows about driving it.
pub struct Engine {
    session: Arc<Session>,
    /// Ids are chosen here, not by librqbit: its JSON store hands two concurrent adds the same
    /// id (and then wrongly reports the second torrent as already managed).
    next_id: AtomicUsize,
    /// Whether the DHT runs (a magnet can then be resolved without peers or trackers).
    dht: bool,
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
}

fn engine_error(context: &str, e: anyhow::Error) -> ProtoError {
    ProtoError::new(ErrorKind::Engine, format!("{context}: {e:#}"))
}

impl Engine {
    /// Starts the session; torrents persisted by a previous run come back with it.
    pub async fn start(config: &BrokerConfig) -> anyhow::Result<Engine> {
        let state = config.engine_state_dir();
        crate::config::create_private_dir(&state)?;
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
        let options = SessionOptions {
            dht: if config.dht {
                Some(Default::default())
            } else {
                None
            },
            disable_local_service_discovery: !config.lsd,
            // The broker persists torrents itself (see `registry`).
            persistence: None,
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
        Ok(Engine {
            session,
            next_id: AtomicUsize::new(0),
            dht: config.dht,
        })
    }

    /// A fresh id, for a torrent known before the engine has it (a resolving magnet).
    pub fn allocate_id(&self) -> TorrentId {
        TorrentId(self.next_id.fetch_add(1, Ordering::Relaxed) as u64)
    }

    /// Makes sure ids handed out from now on are above `id` (restored torrents keep theirs).
    pub fn reserve_id(&self, id: TorrentId) {
        let next = usize::try_from(id.0).unwrap_or(usize::MAX - 1) + 1;
        self.next_id.fetch_max(next, Ordering::Relaxed);
    }

    /// Fetches a magnet's metadata (bounded by `timeout`) and returns the .torrent bytes and
    /// the peers seen meanwhile.
    pub async fn resolve_magnet(
        &self,
        uri: &str,
        peers: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<SocketAddr>), ProtoError> {
        let no_source = peers.is_empty() && !self.dht;
        let options = AddTorrentOptions {
            list_only: true,
            initial_peers: Some(peers),
            ..Default::default()
        };
        let add = self
            .session
            .add_torrent(AddTorrent::from_url(uri.to_owned()), Some(options));
        match tokio::time::timeout(timeout, add).await {
            Err(_) => Err(ProtoError::new(
                ErrorKind::MetadataTimeout,
                format!("no peer sent the magnet's metadata within {timeout:?}"),
            )),
            // Not a timeout: the engine gave up at once, having nothing to ask.
            Ok(Err(e)) if no_source => Err(ProtoError::new(
                ErrorKind::Engine,
                format!(
                    "cannot fetch the magnet's metadata: it names no peer (x.pe) and no tracker this broker may use, and DHT is off ({e:#})"
                ),
            )),
            Ok(Err(e)) => Err(ProtoError::new(
                ErrorKind::Engine,
                format!("cannot fetch the magnet's metadata: {e:#}"),
            )),
            Ok(Ok(AddTorrentResponse::ListOnly(listed))) => {
                Ok((listed.torrent_bytes.to_vec(), listed.seen_peers))
            }
            Ok(Ok(_)) => Err(ProtoError::new(
                ErrorKind::Engine,
                "the engine started a torrent it was only asked to list",
            )),
        }
    }

    /// Adds a torrent.
    pub async fn add(&self, spec: AddSpec) -> Result<Added, ProtoError> {
        let output_folder = spec
            .data_folder
            .to_str()
            .ok_or_else(|| {
                ProtoError::new(ErrorKind::PathNotAllowed, "the save folder is not UTF-8")
            })?
            .to_owned();
        let id = match spec.id {
            Some(id) => usize::try_from(id.0).map_err(|_| {
                ProtoError::new(ErrorKind::Engine, format!("torrent id {id} is too large"))
            })?,
            None => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let options = AddTorrentOptions {
            paused: spec.paused,
            only_files: spec.only_files,
            overwrite: spec.overwrite,
            output_folder: Some(output_folder),
            initial_peers: Some(spec.peers),
            preferred_id: Some(id),
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
            AddTorrentResponse::ListOnly(_) => Err(ProtoError::new(
                ErrorKind::Engine,
                "the engine only listed the torrent",
            )),
        }
    }

    /// Stops a torrent and forgets it (its persisted state too), optionally deleting its data.
    pub async fn remove(&self, id: TorrentId, delete_data: bool) -> anyhow::Result<()> {
        self.session
            .delete(TorrentIdOrHash::Id(id.0 as usize), delete_data)
            .await
    }

    /// Stops the engine (pausing every torrent).
    pub async fn stop(&self) {
        self.session.stop().await;
    }
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
    }
}

fn mib_per_sec_to_bytes(mib: f64) -> u64 {
    if mib.is_finite() && mib > 0.0 {
        (mib * 1024.0 * 1024.0) as u64
    } else {
        0
    }
}

/// The name the engine knows a torrent by.
pub fn name_of(handle: &ManagedTorrentHandle) -> String {
    handle
        .name()
        .unwrap_or_else(|| handle.info_hash().as_string())
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
