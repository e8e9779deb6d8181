//! Closing a torrent (`CloseTorrent`): the caller's hold goes; the torrent stops when nobody
//! else holds it (or when forced), and leaves the registry, the records and the engine
//! together, or stays in all three.

use super::{gone, Service};
use crate::registry::{Life, TorrentEntry, Unrestored};
use crate::sink::PatronId;
use proto::{CloseTorrent, Event, ProtoError, TorrentId};

/// What a close did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The torrent.
    pub id: TorrentId,
    /// Whether it stopped (false: others still hold it; only the caller's hold went).
    pub stopped: bool,
    /// Whether its data was deleted, as asked.
    pub data_deleted: bool,
}

impl Service {
    /// Releases `patron`'s hold on the torrent `close` names, and stops it when nobody else
    /// holds it (or when forced). Stopping is one transaction (DESIGN §4a): the records are
    /// saved without it, the engine stops it, and only then its .torrent, its verified
    /// pieces and (if asked) its data go. A step that fails puts back what the steps before
    /// it changed, the caller's hold included, and says why.
    pub async fn close(&self, patron: PatronId, close: CloseTorrent) -> Result<Closed, ProtoError> {
        self.close_for(patron, close, None).await
    }

    /// [`Service::close`], saying `why` to those who held it (the broker's own policies
    /// close as [`super::POLICY`], with their reason).
    pub(super) async fn close_for(
        &self,
        patron: PatronId,
        close: CloseTorrent,
        why: Option<&str>,
    ) -> Result<Closed, ProtoError> {
        let id = match self.resolve(close.torrent) {
            Ok(id) => id,
            Err(error) => {
                // A record that could not be restored can still be closed: it is forgotten,
                // under the add lock (its files stay its own until the records say otherwise:
                // no add may take them in between).
                let _adding = self.adding.lock().await;
                let forgotten = self.state().registry.forget_unrestored(close.torrent);
                return match forgotten {
                    Some((id, record)) => self.forget_unrestored(patron, id, record),
                    None => Err(error),
                };
            }
        };
        let kept = Closed {
            id,
            stopped: false,
            data_deleted: false,
        };
        let held = {
            let mut guard = self.state();
            // Borrow the registry and the patrons apart.
            let state = &mut *guard;
            let entry = state.registry.get_mut(id).ok_or_else(|| gone(id))?;
            if matches!(entry.life, Life::Moving(_)) {
                return Err(super::moving(id));
            }
            if close.delete_data && entry.restore.data_was_there {
                return Err(ProtoError::bad_request(format!(
                    "torrent {id}'s files were there before it ({}: seeded in place by `make --seed`, or reused by an add with --overwrite): --delete-data would delete those originals; close it without --delete-data (the files stay), and delete them yourself if you mean to",
                    entry.restore.data_folder.display()
                )));
            }
            let held = entry.holders.remove(&patron);
            // Someone else's torrent (held by others, not by this patron) is not this
            // patron's to close, unless forced (DESIGN §2). One nobody holds is anyone's.
            if !held && !entry.holders.is_empty() && !close.force {
                let pids: Vec<String> = entry
                    .holders
                    .iter()
                    .filter_map(|h| state.patrons.get(h).map(|c| c.pid.to_string()))
                    .take(5)
                    .collect();
                return Err(ProtoError::not_holder(format!(
                    "torrent {id} is in use by {} (pid {}: a `cat`, an `add --wait`, a program), not by you; --force stops it anyway",
                    match entry.holders.len() {
                        1 => "another program".to_owned(),
                        n => format!("{n} other programs"),
                    },
                    pids.join(", ")
                )));
            }
            // A status queued before the release must not arrive after the "closed" reply.
            if let Some(connection) = state.patrons.get(&patron) {
                connection.events.forget_status(id);
            }
            if !entry.holders.is_empty() && !close.force {
                return Ok(kept);
            }
            held
        };
        // Stopping: the registry, the records and the engine change together, under the add
        // lock (an add of the same torrent meanwhile waits, then finds it in none of them).
        let _adding = self.adding.lock().await;
        let (entry, others) = {
            let mut guard = self.state();
            let state = &mut *guard;
            let entry = state.registry.get_mut(id).ok_or_else(|| gone(id))?;
            if matches!(entry.life, Life::Moving(_)) {
                // Its move began while we waited: the hold given up above is kept.
                if held && state.patrons.contains_key(&patron) {
                    entry.holders.insert(patron);
                }
                return Err(super::moving(id));
            }
            if !entry.holders.is_empty() && !close.force {
                return Ok(kept); // someone joined it while we waited
            }
            let entry = state.registry.remove(id).ok_or_else(|| gone(id))?;
            let others: Vec<_> = entry
                .holders
                .iter()
                .filter_map(|h| state.patrons.get(h).cloned())
                .collect();
            (entry, others)
        };
        // The records first: if they cannot be saved without it, nothing else changes (a
        // restart would bring it back, its data perhaps deleted).
        if !entry.restore.ephemeral {
            if let Err(why) = self.save_record(id) {
                self.put_back(patron, id, entry);
                return Err(ProtoError::io(format!("torrent {id} is not closed: {why}")));
            }
        }
        // Then the engine. Should it refuse, the torrent runs on: back in the registry and
        // in the records.
        // A dormant seed is in no engine to stop.
        let in_engine = !matches!(entry.life, Life::Dormant(_));
        if let Err(e) = match in_engine {
            true => self.engine_stop(id).await,
            false => Ok(()),
        } {
            self.put_back(patron, id, entry);
            let also = match self.save_record(id) {
                Ok(()) => String::new(),
                Err(why) => format!(" (and its record could not be written back: {why})"),
            };
            return Err(ProtoError::engine(format!(
                "torrent {id} is not closed: the engine cannot stop it: {e:#}{also}"
            )));
        }
        // Out of everything: its .torrent, what it verified and, if asked, its data go.
        self.forget_torrent_file(id);
        if let Err(e) = self.engine.forget_verified(id) {
            tracing::warn!(torrent = %id, "{e:#}");
        }
        let closer = match self.state().patrons.get(&patron) {
            Some(connection) => format!("pid {}", connection.pid),
            None => format!("patron {patron}"),
        };
        let reason = match why {
            Some(why) => format!("closed by the broker: {why}"),
            None => format!("closed by another program ({closer}, forced)"),
        };
        for other in others {
            other.send(Event::TorrentGone {
                id,
                reason: reason.clone(),
            });
        }
        if !close.delete_data && !entry.restore.data_was_there {
            // What it downloaded stays: an add of it here again may reuse it as its own.
            self.left
                .remember(entry.info.info_hash, &entry.restore.data_folder);
        }
        let data_deleted = close.delete_data
            && {
                let deleted = self.delete_data(&entry);
                if let Err(why) = &deleted {
                    tracing::warn!(torrent = %id, "closed, but its data could not all be deleted: {why}");
                }
                deleted.is_ok()
            };
        tracing::info!(patron, torrent = %id, delete_data = close.delete_data, data_deleted, "torrent closed");
        Ok(Closed {
            id,
            stopped: true,
            data_deleted,
        })
    }

    /// Puts a torrent taken out for a close back as it was, the caller's hold included (it
    /// is told nothing changed).
    fn put_back(&self, patron: PatronId, id: TorrentId, mut entry: TorrentEntry) {
        let mut state = self.state();
        if state.patrons.contains_key(&patron) {
            entry.holders.insert(patron);
        }
        state.registry.reinsert(id, entry);
    }

    /// Closes a record the broker could not restore: its record and .torrent go; its data
    /// (on a disk that may not even be there) is left alone.
    fn forget_unrestored(
        &self,
        patron: PatronId,
        id: TorrentId,
        record: Unrestored,
    ) -> Result<Closed, ProtoError> {
        if let Err(why) = self.forget_record(id) {
            self.state().registry.keep_unrestored(id, record);
            return Err(ProtoError::io(why));
        }
        tracing::info!(patron, torrent = %id, "closed a torrent that was not restored");
        Ok(Closed {
            id,
            stopped: true,
            data_deleted: false,
        })
    }
}
