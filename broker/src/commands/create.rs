//! `CreateNewTorrent`: start a torrent, or join it if its info hash already runs.

use crate::engine::{AddSpec, Rates};
use crate::patron::PatronId;
use crate::registry::{RestoreSpec, MAX_RECORDED_PEERS};
use crate::service::Service;
use crate::torrent_file::{self, CheckedTorrent};
use proto::{CreateNewTorrent, Event, ProtoError, RequestId, TorrentInfo, TorrentSource};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

pub async fn run(
    service: &Arc<Service>,
    patron: PatronId,
    request: RequestId,
    create: CreateNewTorrent,
) -> Event {
    match start(service, patron, request, create).await {
        Ok(event) => event,
        Err(error) => Event::TorrentStartFail { request, error },
    }
}

async fn start(
    service: &Arc<Service>,
    patron: PatronId,
    request: RequestId,
    create: CreateNewTorrent,
) -> Result<Event, ProtoError> {
    service.room_for_one_more()?;
    let loopback_only = service.config.loopback_only;
    let mut peers = parse_peers(&create.peers, loopback_only, service.engine.listen_addr())?;
    let rates = Rates {
        download: rate(create.max_download_rate, "max_download_rate")?,
        upload: rate(create.max_upload_rate, "max_upload_rate")?,
    };
    let save_folder = service.save_folder(create.output.as_deref())?;

    let mut preallocated = None;
    let checked = match &create.source {
        TorrentSource::TorrentFile(bytes) => {
            torrent_file::check_torrent_file(bytes, loopback_only)?
        }
        TorrentSource::Magnet(link) => {
            let magnet = torrent_file::check_magnet(link, loopback_only)?;
            if let Some(joined) = join(service, patron, request, &create, &peers, magnet.info_hash)
            {
                return Ok(joined);
            }
            for peer in &magnet.peers {
                if !peers.contains(peer) {
                    peers.push(*peer);
                }
            }
            // Shown as resolving-metadata, under the id it will run with, while it waits.
            let id = service.engine.allocate_id();
            let hash = magnet.info_hash;
            let waiting = TorrentInfo {
                id,
                info_hash: hash,
                name: magnet
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("magnet {hash}")),
                save_folder: save_folder.display().to_string(),
                total_bytes: 0,
            };
            service.state().registry.start_resolving(waiting, patron);
            // Shown until this is dropped, however the wait ends (a panic included).
            let shown = ShownResolving { service, id };
            let resolved = service
                .engine
                .resolve_magnet(&magnet.uri, peers.clone(), service.config.magnet_timeout)
                .await;
            drop(shown);
            let (bytes, seen) = resolved?;
            preallocated = Some(id);
            peers.extend(seen);
            // Metadata from the swarm is as untrusted as a patron's .torrent file.
            torrent_file::check_torrent_file(&bytes, loopback_only)?
        }
    };
    if checked.trackers_removed > 0 {
        tracing::info!(
            removed = checked.trackers_removed,
            "loopback-only: removed off-loopback trackers from {}",
            checked.name
        );
    }
    let _adding = service.adding.lock().await;
    if let Some(joined) = join(service, patron, request, &create, &peers, checked.info_hash) {
        return Ok(joined);
    }
    service.room_for_one_more()?;
    let data_folder = checked.data_folder(&save_folder);
    // One owner per file (DESIGN §4), whatever --overwrite says, and the file budgets.
    service.room_for_files(&checked.full_paths(&data_folder), None)?;
    crate::roots::check_torrent_paths(&save_folder, &checked, true)?;
    if let Some(missing) = create
        .only_files
        .iter()
        .flatten()
        .find(|&&i| i as usize >= checked.files.len())
    {
        return Err(ProtoError::bad_request(format!(
            "the torrent has no file {missing} (it has {} files, from 0)",
            checked.files.len()
        )));
    }
    if !create.overwrite {
        refuse_existing_files(&checked, &data_folder)?;
        refuse_if_it_cannot_fit(&checked, &save_folder)?;
    }

    let restore = RestoreSpec {
        save_folder,
        data_folder: data_folder.clone(),
        peers: peers.clone(),
        added_peers: Vec::new(),
        only_files: create
            .only_files
            .map(|files| files.into_iter().map(|f| f as usize).collect()),
        paused: create.paused,
        ephemeral: create.ephemeral,
        rates,
    };
    let added = service
        .engine
        .add(AddSpec {
            torrent: checked.bytes.clone(),
            data_folder,
            paused: restore.paused,
            only_files: restore.only_files.clone(),
            overwrite: create.overwrite,
            peers,
            id: preallocated,
            rates,
            resume: false,
            files: checked.relative_paths(),
        })
        .await?;
    let (torrent, is_new) = service.register(added, &checked, restore, patron).await?;
    if is_new {
        tracing::info!(patron, torrent = %torrent.id, name = %torrent.name, "torrent started");
        Ok(Event::NewTorrentCreated { request, torrent })
    } else {
        // The engine had it though the registry did not (cannot happen under the add lock).
        Ok(Event::TorrentAlreadyDownloading {
            request,
            torrent,
            not_applied: Vec::new(),
        })
    }
}

/// If a torrent with this info hash runs, makes `patron` hold it and says so, naming the
/// options of `create` that the running torrent does not take. The peers it names are
/// dialled for the running torrent, and remembered with it.
fn join(
    service: &Service,
    patron: PatronId,
    request: RequestId,
    create: &CreateNewTorrent,
    peers: &[SocketAddr],
    info_hash: proto::InfoHash,
) -> Option<Event> {
    let mut state = service.state();
    let id = state.registry.by_info_hash(info_hash)?;
    let entry = state.registry.get(id)?;
    let (ephemeral, handle) = (entry.restore.ephemeral, entry.handle.clone());
    let torrent = state.hold(id, patron)?;
    drop(state);
    let mut peers_applied = true;
    if !peers.is_empty() {
        // Remembered first: a paused torrent dials them when it resumes, a restarted
        // broker at its start.
        peers_applied = service.remember_peers(id, peers).is_ok();
        match service.engine.dial(&handle, peers) {
            Ok(dialled) if !dialled.is_empty() => {
                tracing::info!(patron, torrent = %id, "dialling {} peers named by a joiner", dialled.len())
            }
            Ok(_) => {}
            Err(e) => tracing::info!(patron, torrent = %id, "peers of a joiner not dialled: {e}"),
        }
    }
    let mut not_applied = Vec::new();
    let elsewhere = create.output.as_deref().is_some_and(|output| {
        let asked = std::path::Path::new(output);
        let asked = asked.canonicalize().unwrap_or_else(|_| asked.to_path_buf());
        asked != std::path::Path::new(&torrent.save_folder)
    });
    for (name, differs) in [
        ("output", elsewhere),
        ("paused", create.paused),
        ("ephemeral", create.ephemeral != ephemeral),
        ("peers", !peers_applied),
        ("only_files", create.only_files.is_some()),
        // The engine takes a torrent's rates at add only.
        ("max_download_rate", create.max_download_rate.is_some()),
        ("max_upload_rate", create.max_upload_rate.is_some()),
    ] {
        if differs {
            not_applied.push(name.to_owned());
        }
    }
    if !not_applied.is_empty() {
        tracing::info!(patron, torrent = %id, "joined; not applied: {}", not_applied.join(", "));
    }
    Some(Event::TorrentAlreadyDownloading {
        request,
        torrent,
        not_applied,
    })
}

/// A rate limit as the engine takes it: 1 to 2³²−1 bytes per second.
fn rate(limit: Option<u64>, name: &str) -> Result<Option<NonZeroU32>, ProtoError> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    u32::try_from(limit)
        .ok()
        .and_then(NonZeroU32::new)
        .map(Some)
        .ok_or_else(|| {
            ProtoError::bad_request(format!(
                    "{name} {limit} is not a rate the engine can keep: give 1 to {} bytes per second, or none for no limit",
                    u32::MAX
                ),
            )
        })
}

/// Parses `IP:PORT` peers, refusing any the broker may not or need not dial: off loopback
/// in loopback-only mode, port 0, or the broker itself (`own`, its listen address).
pub fn parse_peers(
    peers: &[String],
    loopback_only: bool,
    own: SocketAddr,
) -> Result<Vec<SocketAddr>, ProtoError> {
    if peers.len() > MAX_RECORDED_PEERS {
        return Err(ProtoError::invalid_peer(format!(
            "{} peers named: at most {MAX_RECORDED_PEERS} per request",
            peers.len()
        )));
    }
    peers
        .iter()
        .map(|peer| {
            let addr: SocketAddr = peer.parse().map_err(|_| {
                ProtoError::invalid_peer(format!("peer {peer:?} is not an IP:PORT address"))
            })?;
            if !torrent_file::peer_allowed(addr.ip(), loopback_only) {
                return Err(ProtoError::invalid_peer(format!(
                    "peer {addr} is off loopback, and this broker is loopback-only"
                )));
            }
            if addr.port() == 0 {
                return Err(ProtoError::invalid_peer(format!(
                    "peer {addr} has port 0, where nothing can listen"
                )));
            }
            let at_own_port = addr.port() == own.port();
            let ip = addr.ip().to_canonical();
            let own_ip = own.ip().to_canonical();
            // Listening on every address (0.0.0.0) includes loopback.
            let ours = ip == own_ip || (ip.is_loopback() && own_ip.is_unspecified());
            if at_own_port && ours {
                return Err(ProtoError::invalid_peer(format!(
                    "peer {addr} is this broker's own listen address"
                )));
            }
            Ok(addr)
        })
        .collect()
}

/// A user's existing file is never opened by surprise: the engine would hash-check it and
/// rewrite every piece that does not match.
fn refuse_existing_files(
    checked: &CheckedTorrent,
    data_folder: &std::path::Path,
) -> Result<(), ProtoError> {
    for (path, _) in &checked.files {
        let full = data_folder.join(path);
        if full.symlink_metadata().is_ok() {
            return Err(ProtoError::file_exists(format!(
                    "{} already exists; add with overwrite (--overwrite) to verify it and reuse what matches",
                    full.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A torrent larger than the free space would fail half-way; say so before it starts.
/// (Reused files are not counted, so `overwrite` skips this check.)
fn refuse_if_it_cannot_fit(
    checked: &CheckedTorrent,
    save_folder: &std::path::Path,
) -> Result<(), ProtoError> {
    // The folder may not exist yet: its nearest existing folder is on the same disk.
    let existing = save_folder
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(std::path::Path::new("/"));
    let Ok(stats) = nix::sys::statvfs::statvfs(existing) else {
        return Ok(()); // cannot tell: let the engine find out
    };
    let free = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    if checked.total_bytes > free {
        return Err(ProtoError::no_space(format!(
            "{} needs {} bytes, but only {free} are free in {}",
            checked.name,
            checked.total_bytes,
            save_folder.display()
        )));
    }
    Ok(())
}

/// A magnet shown as resolving while this lives.
struct ShownResolving<'a> {
    service: &'a Service,
    id: proto::TorrentId,
}

impl Drop for ShownResolving<'_> {
    fn drop(&mut self) {
        self.service.state().registry.stop_resolving(self.id);
    }
}
