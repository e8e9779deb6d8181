//! A raw librqbit swarm on 127.0.0.1 for the download and fan-out rows: a seeder session, raw
//! leecher sessions (the anchor), and a minimal HTTP tracker for clients that cannot be handed
//! a peer directly (aria2c). Nothing here leaves loopback: no DHT, no local discovery, no
//! UPnP, and the only tracker is the one below.

use anyhow::{bail, Context};
use librqbit::limits::LimitsConfig;
use librqbit::{
    AddTorrent, AddTorrentOptions, AddTorrentResponse, ListenerMode, ListenerOptions,
    ManagedTorrent, Session, SessionOptions,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

/// A session that talks to nobody unless told: no DHT, LSD, UPnP or trackers.
async fn session(
    dir: &Path,
    listen: bool,
    upload_bps: Option<u32>,
) -> anyhow::Result<Arc<Session>> {
    let options = SessionOptions {
        dht: None,
        disable_local_service_discovery: true,
        disable_trackers: true,
        persistence: None,
        ipv4_only: true,
        ratelimits: LimitsConfig {
            upload_bps: upload_bps.and_then(NonZeroU32::new),
            download_bps: None,
        },
        listen: listen.then(|| ListenerOptions {
            mode: ListenerMode::TcpOnly,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            enable_upnp_port_forwarding: false,
            ipv4_only: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    Session::new_with_opts(dir.to_owned(), options)
        .await
        .context("cannot start a librqbit session")
}

async fn add(
    session: &Arc<Session>,
    torrent: &[u8],
    folder: &Path,
    peers: Vec<SocketAddr>,
) -> anyhow::Result<Arc<ManagedTorrent>> {
    let options = AddTorrentOptions {
        output_folder: Some(folder.display().to_string()),
        overwrite: true,
        initial_peers: Some(peers),
        ..Default::default()
    };
    match session
        .add_torrent(AddTorrent::from_bytes(torrent.to_vec()), Some(options))
        .await?
    {
        AddTorrentResponse::Added(_, handle) => Ok(handle),
        _ => bail!("librqbit did not add the torrent"),
    }
}

/// A raw librqbit session seeding one torrent from `folder`, listening on 127.0.0.1.
pub struct Seeder {
    _session: Arc<Session>,
    /// Where leechers dial it.
    pub addr: SocketAddr,
}

impl Seeder {
    /// Starts seeding (after librqbit has hash-checked the data), at most `upload_bps`.
    pub async fn start(
        torrent: &[u8],
        folder: &Path,
        upload_bps: Option<u32>,
    ) -> anyhow::Result<Seeder> {
        Seeder::start_many(&[torrent.to_vec()], folder, upload_bps).await
    }

    /// One session seeding every torrent of `torrents` from `folder`, at most `upload_bps`
    /// in all.
    pub async fn start_many(
        torrents: &[Vec<u8>],
        folder: &Path,
        upload_bps: Option<u32>,
    ) -> anyhow::Result<Seeder> {
        let session = session(folder, true, upload_bps).await?;
        let addr = session
            .listen_addr()
            .context("the seeder does not listen")?;
        for torrent in torrents {
            let handle = add(&session, torrent, folder, Vec::new()).await?;
            handle.wait_until_initialized().await?;
        }
        Ok(Seeder {
            _session: session,
            addr,
        })
    }
}

/// The anchor: a fresh raw librqbit session downloads `torrent` from `seeder` into `folder`.
/// Times the add until every piece is written and verified, as for the broker (whose session
/// is already up): starting and stopping the session are not counted.
pub async fn raw_download(
    torrent: &[u8],
    folder: &Path,
    seeder: SocketAddr,
) -> anyhow::Result<std::time::Duration> {
    let session = session(folder, false, None).await?;
    let started = std::time::Instant::now();
    let handle = add(&session, torrent, folder, vec![seeder]).await?;
    handle.wait_until_completed().await?;
    let took = started.elapsed();
    session.stop().await;
    Ok(took)
}

/// A tracker that answers every announce with one peer. Enough for aria2c, which has no way
/// to be handed a peer; it stays on 127.0.0.1. Returns its announce URL.
pub fn tracker(peer: SocketAddr) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/announce", listener.local_addr()?);
    let SocketAddr::V4(peer) = peer else {
        bail!("the tracker serves IPv4 peers only");
    };
    let mut body = b"d8:intervali1800e5:peers6:".to_vec();
    body.extend_from_slice(&peer.ip().octets());
    body.extend_from_slice(&peer.port().to_be_bytes());
    body.push(b'e');
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            // One request per connection; its content does not matter.
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    Ok(url)
}

/// The engine's own add of `torrent` (paused, into a fresh folder, as the broker adds it),
/// in process, `rounds` times after one to warm up: each add's time in µs. The anchor of
/// the large-add row: what adding those bytes costs librqbit itself.
pub async fn engine_adds(torrent: &[u8], work: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let dir = work.join("engine-add");
    std::fs::create_dir_all(&dir)?;
    let session = session(&dir, false, None).await?;
    let mut times = Vec::new();
    for round in 0..=rounds {
        let folder = dir.join(format!("round-{round}"));
        let options = AddTorrentOptions {
            output_folder: Some(folder.display().to_string()),
            paused: true,
            overwrite: false,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let added = session
            .add_torrent(AddTorrent::from_bytes(torrent.to_vec()), Some(options))
            .await?;
        let took = started.elapsed().as_secs_f64() * 1e6;
        let AddTorrentResponse::Added(id, _) = added else {
            bail!("librqbit did not add the torrent");
        };
        if round > 0 {
            times.push(took);
        }
        session
            .delete(librqbit::api::TorrentIdOrHash::Id(id), true)
            .await?;
    }
    session.stop().await;
    Ok(times)
}
