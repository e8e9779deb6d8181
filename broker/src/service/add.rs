//! Adding a torrent (`CreateNewTorrent`): start it, or join it if its info hash already runs.

use super::Service;
use crate::engine::{AddSpec, Added, Rates};
use crate::registry::{RestoreSpec, MAX_RECORDED_PEERS};
use crate::sink::PatronId;
use crate::torrent_file::{self, CheckedTorrent};
use proto::{CreateNewTorrent, ProtoError, TorrentId, TorrentInfo, TorrentSource};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What an add did.
pub enum Started {
    /// The torrent is new: it runs now (or waits in the queue, `queued`), held by the
    /// patron.
    New { torrent: TorrentInfo, queued: bool },
    /// It ran already: the patron holds it too. `not_applied` names the options of the
    /// request the running torrent does not take.
    Joined {
        torrent: TorrentInfo,
        not_applied: Vec<String>,
    },
}

impl Service {
    /// Starts the torrent `create` names for `patron`, or makes it join the same torrent
    /// already running. Registry, records and engine change together under the add lock,
    /// after every check: one owner per file, the roots, the budgets, free space.
    pub async fn add(
        self: &Arc<Self>,
        patron: PatronId,
        create: CreateNewTorrent,
    ) -> Result<Started, ProtoError> {
        let service = self;
        service.room_for_one_more()?;
        let loopback_only = service.config.loopback_only;
        let mut peers = parse_peers(&create.peers, loopback_only, service.engine.listen_addr())?;
        let rates = Rates {
            download: rate(create.max_download_rate, "max_download_rate")?,
            upload: rate(create.max_upload_rate, "max_upload_rate")?,
        };
        proto::valid_labels(&create.labels).map_err(ProtoError::bad_request)?;
        // No folder named: its labels' (the first that has one), else the default.
        // (Checked as a named folder is: the roots may have changed since it was set.)
        let label_folder = service.label_folder(&create.labels);
        let save_folder = match (&create.output, &label_folder) {
            (None, Some(folder)) => service.save_folder(Some(&folder.display().to_string()))?,
            (output, _) => service.save_folder(output.as_deref())?,
        };
        super::seeding::check_own(&create.seeding)?;
        let move_completed_to = match &create.move_completed_to {
            Some(folder) => Some(service.save_folder(Some(folder))?),
            None => None,
        };

        let mut preallocated = None;
        let checked = match &create.source {
            TorrentSource::TorrentFile(bytes) => {
                torrent_file::check_torrent_file(bytes, loopback_only)?
            }
            TorrentSource::Magnet(link) => {
                let magnet = torrent_file::check_magnet(link, loopback_only)?;
                if let Some(joined) = service.join(patron, &create, &peers, magnet.info_hash) {
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
        // A joiner's peers are dialled: a dormant seed of the same torrent wakes for them.
        if !peers.is_empty() {
            let dormant = {
                let state = service.state();
                state.registry.by_info_hash(checked.info_hash).filter(|id| {
                    state
                        .registry
                        .get(*id)
                        .is_some_and(|e| matches!(e.life, crate::registry::Life::Dormant(_)))
                })
            };
            if let Some(id) = dormant {
                if let Err(e) = service.wake_locked(id).await {
                    tracing::info!(torrent = %id, "not woken for a joiner's peers: {}", e.message);
                }
            }
        }
        if let Some(joined) = service.join(patron, &create, &peers, checked.info_hash) {
            return Ok(joined);
        }
        service.room_for_one_more()?;
        let data_folder = checked.data_folder(&save_folder);
        // One owner per file (DESIGN §4), whatever --overwrite says, and the file budgets.
        service.room_for_files(&checked.full_paths(&data_folder), None)?;
        crate::roots::check_torrent_paths(&save_folder, &checked, crate::roots::OwnFolder::New)?;
        let only_files = match &create.only_files {
            Some(only) => {
                let mut chosen: Vec<usize> = super::files::chosen(
                    only,
                    &checked.file_entries(),
                    Some(checked.name.as_str()),
                )?
                .into_iter()
                .collect();
                chosen.sort_unstable();
                Some(chosen)
            }
            None => None,
        };
        if !create.overwrite {
            refuse_existing_files(&checked, &data_folder)?;
            refuse_if_it_cannot_fit(&checked, &save_folder)?;
        }
        // Files reused with --overwrite were there before: the user's, unless this broker
        // downloaded them for this torrent and left them at a close.
        let reused_own = service.left.holds(checked.info_hash, &data_folder);
        let data_was_there = create.overwrite
            && !reused_own
            && checked
                .full_paths(&data_folder)
                .iter()
                .any(|path| std::fs::symlink_metadata(path).is_ok());

        let restore = RestoreSpec {
            save_folder,
            data_folder: data_folder.clone(),
            peers: peers.clone(),
            added_peers: Vec::new(),
            only_files,
            paused: create.paused,
            ephemeral: create.ephemeral,
            rates,
            queue_position: 0,
            // A download, unless the queue's downloads are all taken (a paused one waits
            // for its resume, outside the queue).
            queued: !create.paused && !service.queue_admits(super::queue::Kind::Download),
            seeding: create.seeding,
            data_was_there,
            move_completed_to,
            labels: create.labels.clone(),
            ..RestoreSpec::new(PathBuf::new(), PathBuf::new())
        };
        let torrent_data_folder = restore.data_folder.clone();
        let queued = restore.queued;
        let added = service
            .engine_add(AddSpec {
                torrent: checked.bytes.clone(),
                data_folder,
                paused: restore.engine_paused(),
                only_files: restore.only_files.clone(),
                overwrite: create.overwrite,
                peers,
                id: preallocated,
                rates: service.label_rates(&restore.labels, rates),
                resume: false,
                files: checked.relative_paths(),
            })
            .await?;
        let (torrent, is_new) = service.register(added, &checked, restore, patron).await?;
        if reused_own {
            // It runs from that data again: a later close decides about it anew.
            service.left.forget(checked.info_hash, &torrent_data_folder);
        }
        if is_new {
            tracing::info!(patron, torrent = %torrent.id, name = %torrent.name, "torrent started");
            service.fire_hook(crate::hooks::HookEvent::Added, torrent.id, None);
            Ok(Started::New { torrent, queued })
        } else {
            // The engine had it though the registry did not (cannot happen under the add lock).
            Ok(Started::Joined {
                torrent,
                not_applied: Vec::new(),
            })
        }
    }

    /// If a torrent with this info hash runs, makes `patron` hold it and says so, naming the
    /// options of `create` that the running torrent does not take. The peers it names are
    /// dialled for the running torrent, and remembered with it.
    fn join(
        &self,
        patron: PatronId,
        create: &CreateNewTorrent,
        peers: &[SocketAddr],
        info_hash: proto::InfoHash,
    ) -> Option<Started> {
        let service = self;
        let mut state = service.state();
        let id = state.registry.by_info_hash(info_hash)?;
        let entry = state.registry.get(id)?;
        let (ephemeral, handle) = (entry.restore.ephemeral, entry.live_handle());
        let torrent = state.hold(id, patron)?;
        drop(state);
        let mut peers_applied = true;
        if !peers.is_empty() {
            // Remembered first: a paused torrent dials them when it resumes, a restarted
            // broker at its start, a torrent being added again for its recheck once it is
            // back (its record gives it every peer).
            peers_applied = service.remember_peers(id, peers).is_ok();
            let dialled = match &handle {
                Some(handle) => service.engine.dial(handle, peers),
                None => Ok(Vec::new()),
            };
            match dialled {
                Ok(dialled) if !dialled.is_empty() => {
                    tracing::info!(patron, torrent = %id, "dialling {} peers named by a joiner", dialled.len())
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(patron, torrent = %id, "peers of a joiner not dialled: {e}")
                }
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
            // A joiner does not change what the torrent's holders set: `limits ID` does.
            ("max_download_rate", create.max_download_rate.is_some()),
            ("max_upload_rate", create.max_upload_rate.is_some()),
            // Nor its seeding limits: `set ID` does.
            (
                "seeding",
                create.seeding != proto::TorrentSeeding::default(),
            ),
            // Nor its labels, nor where it goes once complete: `label ID` does.
            ("labels", !create.labels.is_empty()),
            ("move_completed_to", create.move_completed_to.is_some()),
        ] {
            if differs {
                not_applied.push(name.to_owned());
            }
        }
        if !not_applied.is_empty() {
            tracing::info!(patron, torrent = %id, "joined; not applied: {}", not_applied.join(", "));
        }
        Some(Started::Joined {
            torrent,
            not_applied,
        })
    }

    /// Records a torrent the engine just accepted for `holder` (persisting it, unless it is
    /// ephemeral), or makes `holder` join it if the engine already ran it. A new torrent that
    /// cannot be recorded durably is stopped again and the add fails: a torrent the broker
    /// said it runs is one it will still run after a restart.
    pub(super) async fn register(
        &self,
        added: Added,
        checked: &CheckedTorrent,
        restore: RestoreSpec,
        holder: PatronId,
    ) -> Result<(TorrentInfo, bool), ProtoError> {
        let info = checked.info(
            added.id,
            &restore.save_folder,
            restore.only_files.as_deref(),
        );
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
            if let Err(why) = self.save_record(id) {
                self.state().registry.remove(id);
                return Err(self.unrecordable(id, &path, why).await);
            }
        }
        match kept {
            Some(info) => Ok((info, added.is_new)),
            None => {
                tracing::info!(torrent = %id, "closing ephemeral torrent: its creator left");
                if let Err(e) = self.engine.remove(id, false).await {
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
}

/// A rate limit as the engine takes it: 1 to 2³²−1 bytes per second.
pub(super) fn rate(limit: Option<u64>, name: &str) -> Result<Option<NonZeroU32>, ProtoError> {
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
            "{} needs {}, but only {} are free in {}: free some space, or save it elsewhere (--output)",
            checked.name,
            proto::text::bytes(checked.total_bytes),
            proto::text::bytes(free),
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
