//! What patrons ask without changing anything but their own holds: `List`, `Status`,
//! `Follow`, `BrokerInfo`. None waits on the engine or the disk, so the dispatcher answers
//! them on the request reader's thread.

use super::Service;
use crate::registry;
use crate::sink::PatronId;
use proto::TorrentSummary;
use proto::{BrokerInfo, ProtoError, TorrentInfo, TorrentRef, TorrentState, TorrentStatus};

impl Service {
    /// Every torrent the broker knows, with its status: those running, magnets on their
    /// way and records not restored (in error, saying why; DESIGN §4a), in id order.
    pub fn list(&self, patron: PatronId) -> Vec<TorrentSummary> {
        // The engine's stats are computed after the broker's lock is let go: with many
        // torrents that is most of the work, and every other request needs the lock.
        let seeding = self.seed_policy();
        let (listed, placeholders): (Vec<_>, Vec<_>) = {
            let state = self.state();
            let placeholders = state
                .registry
                .placeholders()
                .map(|(info, state, holders)| placeholder_summary(info, state, holders))
                .collect();
            let listed = state
                .registry
                .iter()
                .map(|(_, entry)| {
                    let held = (
                        entry.holders.len() as u32,
                        entry.holders.contains(&patron),
                        entry.restore.ephemeral,
                    );
                    let look = (entry.source(), entry.overlay(&seeding));
                    (entry.info.clone(), look, held)
                })
                .collect();
            (listed, placeholders)
        };
        let mut torrents: Vec<TorrentSummary> = listed
            .into_iter()
            .map(
                |(info, (source, place), (holders, held_by_you, ephemeral))| TorrentSummary {
                    status: registry::shown_status(&info, &source, place),
                    info,
                    holders,
                    held_by_you,
                    ephemeral,
                },
            )
            .collect();
        // Running torrents come in id order; placeholders fall in between.
        if !placeholders.is_empty() {
            torrents.extend(placeholders);
            torrents.sort_by_key(|t| t.info.id);
        }
        torrents
    }

    /// One torrent's status now: a running one's, or a placeholder's (a magnet resolving, a
    /// record not restored).
    pub fn status(&self, torrent: TorrentRef) -> Result<TorrentStatus, ProtoError> {
        let running = self
            .resolve(torrent)
            .and_then(|id| self.current_status(id).ok_or_else(|| super::gone(id)));
        running.or_else(|error| {
            let placeholder = self.state().registry.placeholder(torrent);
            match placeholder {
                Some((info, state)) => Ok(TorrentStatus::idle(&info, state)),
                None => Err(error),
            }
        })
    }

    /// Makes `patron` hold a running torrent, to receive its status, adding nothing.
    pub fn follow(&self, patron: PatronId, torrent: TorrentRef) -> Result<TorrentInfo, ProtoError> {
        let mut state = self.state();
        let held = state
            .registry
            .resolve(torrent)
            .and_then(|id| state.hold(id, patron));
        held.ok_or_else(|| ProtoError::unknown_torrent(format!("no torrent {torrent} runs")))
    }

    /// Who the broker is, how it runs, and how much of each budget is in use.
    pub fn broker_info(&self) -> BrokerInfo {
        let config = &self.config;
        let (patrons, torrents, kept, files) = {
            let state = self.state();
            (
                state.patrons.len() as u32,
                state.registry.len() as u32,
                state.registry.kept() as u32,
                state.registry.owned_files(),
            )
        };
        let large = self.large_requests.use_now();
        let unread = self.unread.queued_now();
        let regions = self.unread.regions.use_now();
        BrokerInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state_dir: config.state_dir.display().to_string(),
            listen: config.listen.to_string(),
            loopback_only: config.loopback_only,
            download_roots: config
                .download_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect(),
            patrons,
            torrents,
            kept,
            streams: self.streams.count() as u32,
            open_files: self.engine.file_pool().open_files() as u32,
            open_files_limit: self.engine.file_pool().capacity() as u32,
            large_requests: (large.0 as u32, large.1 as u32),
            large_request_bytes: (large.2 as u64, large.3 as u64),
            files: (files as u64, config.max_files as u64),
            board_waiters: (
                self.board.waiters() as u32,
                crate::board::MAX_WAITERS as u32,
            ),
            unread_bytes: (unread.0 as u64, unread.1 as u64),
            unread_regions: (regions.0 as u32, regions.1 as u32),
            limits: self.rates.get().0,
            alt: self.rates.get().1,
            queue: self.queue.settings(),
            seeding: (self.seeding.limits(), self.seeding.action()),
            watch_dir: self
                .config
                .watch_dir
                .as_ref()
                .map(|d| d.display().to_string()),
            move_completed_to: self
                .config
                .move_completed_to
                .as_ref()
                .map(|d| d.display().to_string()),
        }
    }
}

fn placeholder_summary(info: TorrentInfo, state: TorrentState, holders: u32) -> TorrentSummary {
    TorrentSummary {
        status: TorrentStatus::idle(&info, state),
        info,
        holders,
        held_by_you: false,
        ephemeral: false,
    }
}
