use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::Context;

use rand::{RngExt, seq::IteratorRandom};
use size_format::SizeFormatterBinary as SF;
use tracing::{info, trace, warn};

use crate::{
    api::TorrentIdOrHash,
    bitv::BitV,
    bitv_factory::BitVFactory,
    chunk_tracker::{ChunkTracker, compute_selected_pieces},
    file_ops::FileOps,
    type_aliases::{BF, FileStorage},
};

const MAX_FASTRESUME_CHECKS: usize = 64;

use super::{ManagedTorrentShared, TorrentMetadata, paused::TorrentStatePaused};

pub struct TorrentStateInitializing {
    pub(crate) files: FileStorage,
    pub(crate) shared: Arc<ManagedTorrentShared>,
    pub(crate) metadata: Arc<TorrentMetadata>,
    pub(crate) only_files: Option<Vec<usize>>,
    pub(crate) checked_bytes: AtomicU64,
    pause_requested: AtomicBool,
    check_running: AtomicBool,
    previously_errored: bool,
    // torrent-patron patch: see `AddTorrentOptions::trust_fastresume`.
    trust_fastresume: Option<crate::FastResumeVouch>,
}

impl TorrentStateInitializing {
    /// torrent-patron patch: see `AddTorrentOptions::trust_fastresume`.
    pub(crate) fn trusting_fastresume(mut self, trust: Option<crate::FastResumeVouch>) -> Self {
        self.trust_fastresume = trust;
        self
    }

    pub fn new(
        shared: Arc<ManagedTorrentShared>,
        metadata: Arc<TorrentMetadata>,
        only_files: Option<Vec<usize>>,
        files: FileStorage,
        previously_errored: bool,
    ) -> Self {
        Self {
            shared,
            metadata,
            only_files,
            files,
            checked_bytes: AtomicU64::new(0),
            pause_requested: AtomicBool::new(false),
            check_running: AtomicBool::new(false),
            previously_errored,
            trust_fastresume: None,
        }
    }

    pub fn get_checked_bytes(&self) -> u64 {
        self.checked_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn request_pause(&self) {
        self.pause_requested.store(true, Ordering::Relaxed);
    }

    pub(crate) fn clear_pause_request(&self) {
        self.pause_requested.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_pause_requested(&self) -> bool {
        self.pause_requested.load(Ordering::Relaxed)
    }

    pub(crate) fn try_start_check(&self) -> bool {
        self.check_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn finish_check(&self) {
        self.check_running.store(false, Ordering::Release);
    }

    async fn validate_fastresume(
        &self,
        bitv_factory: &dyn BitVFactory,
        have_pieces: Option<Box<dyn BitV>>,
        slots: &mut CheckSlots,
    ) -> Option<Box<dyn BitV>> {
        let hp = have_pieces?;
        let actual = hp.as_bytes().len();
        let expected = self.metadata.lengths().piece_bitfield_bytes();
        if actual != expected {
            warn!(
                actual,
                expected,
                "the bitfield loaded isn't of correct length, ignoring it, will do full check"
            );
            return None;
        }
        // torrent-patron patch: the embedder is asked now, as the check begins, not at the add:
        // a file changed in between (while other torrents' checks ran first) is not vouched for.
        if let Some(vouch) = self.trust_fastresume.clone() {
            // On a blocking thread of its own, not under the spawner's permits: a vouch looks
            // at every file of the torrent, which a dead mount makes hang, and those permits
            // are every add's, piece write's and upload's (the resume slots bound vouches).
            // One that panics vouches for nothing.
            if tokio::task::spawn_blocking(move || vouch())
                .await
                .unwrap_or(false)
            {
                return Some(hp);
            }
            warn!(
                id = ?self.shared.id,
                info_hash = ?self.shared.info_hash,
                "its files changed since they were vouched for: ignoring fastresume data"
            );
            if let Err(e) = bitv_factory.clear(self.shared.id.into()).await {
                warn!(id=?self.shared.id, info_hash = ?self.shared.info_hash, "error clearing bitfield: {e:#}");
            }
            return None;
        }

        // torrent-patron patch: reading a sample of the data takes a check slot.
        if let Err(e) = slots.reading().await {
            warn!(id = ?self.shared.id, "{e:#}: ignoring fastresume data");
            return None;
        }
        let is_broken = self
            .shared
            .spawner
            .block_in_place_with_semaphore(|| {
                let fo = crate::file_ops::FileOps::new(
                    &self.metadata.info,
                    &self.files,
                    &self.metadata.file_infos,
                );

                let mut to_validate = BF::from_boxed_slice(
                    vec![0u8; self.metadata.lengths().piece_bitfield_bytes()].into_boxed_slice(),
                );
                let mut queue = hp.as_slice().to_owned();

                // Validate at least one piece from each file, if we claim we have it.
                for fi in self.metadata.file_infos.iter() {
                    let prange = fi.piece_range_usize();
                    let offset = prange.start;
                    for piece_id in hp
                        .as_slice()
                        .get(fi.piece_range_usize())
                        .into_iter()
                        .flat_map(|s| s.iter_ones())
                        .map(|pid| pid + offset)
                        .take(1)
                    {
                        to_validate.set(piece_id, true);
                        queue.set(piece_id, false);
                    }
                }

                // For all the remaining pieces we claim we have, validate them with decreasing probability.
                let queue = queue
                    .iter_ones()
                    .sample(&mut rand::rng(), MAX_FASTRESUME_CHECKS);

                for (tmp_id, piece_id) in queue.into_iter().enumerate() {
                    let denom: u32 = (tmp_id + 1).min(50).try_into().unwrap();
                    if rand::rng().random_ratio(1, denom) {
                        to_validate.set(piece_id, true);
                    }
                }

                let to_validate_count = to_validate.count_ones();
                for (id, piece_id) in to_validate
                    .iter_ones()
                    .filter_map(|id| {
                        self.metadata
                            .lengths()
                            .validate_piece_index(id.try_into().ok()?)
                    })
                    .enumerate()
                {
                    // torrent-patron patch: a piece whose hash differs is broken too
                    // (`check_piece` says so with `Ok(false)`; only a read error counted).
                    if !matches!(fo.check_piece(piece_id), Ok(true)) {
                        return true;
                    }

                    #[allow(clippy::cast_possible_truncation)]
                    let progress = (self.metadata.lengths().total_length() as f64
                        / to_validate_count as f64
                        * (id + 1) as f64) as u64;
                    let progress = progress.min(self.metadata.lengths().total_length());
                    self.checked_bytes.store(progress, Ordering::Relaxed);
                }

                false
            })
            .await;

        if is_broken {
            warn!(
                id = ?self.shared.id,
                info_hash = ?self.shared.info_hash,
                "data corrupted, ignoring fastresume data"
            );
            if let Err(e) = bitv_factory.clear(self.shared.id.into()).await {
                warn!(id=?self.shared.id, info_hash = ?self.shared.info_hash, "error clearing bitfield: {e:#}");
            }
            self.checked_bytes.store(0, Ordering::Relaxed);
            return None;
        }

        Some(hp)
    }

    /// torrent-patron patch: begun holding a slot (see `CheckSlots`); a check slot is taken
    /// (and a resume slot given back) only if data must be read.
    pub async fn check(&self) -> anyhow::Result<TorrentStatePaused> {
        // torrent-patron patch: by id, as `validate_fastresume` clears it (see bitv_path).
        let id: TorrentIdOrHash = self.shared.id.into();
        let session = self.shared.session.upgrade().context("session is dead")?;
        let bitv_factory = session.bitv_factory.clone();
        let mut slots = CheckSlots::first(&session, self.trust_fastresume.is_some()).await?;
        drop(session);
        let have_pieces = if self.previously_errored {
            if let Err(e) = bitv_factory.clear(id).await {
                warn!(id=?self.shared.id, info_hash = ?self.shared.info_hash, error=?e, "error clearing bitfield");
            }
            None
        } else {
            bitv_factory
                .load(id)
                .await
                .context("error loading have_pieces")?
        };

        let have_pieces = self
            .validate_fastresume(&*bitv_factory, have_pieces, &mut slots)
            .await;

        let mut have_pieces = match have_pieces {
            Some(h) => h,
            None => {
                slots.reading().await?;
                info!("Doing initial checksum validation, this might take a while...");
                let have_pieces = self
                    .shared
                    .spawner
                    .block_in_place_with_semaphore(|| {
                        FileOps::new(&self.metadata.info, &self.files, &self.metadata.file_infos)
                            .initial_check(&self.checked_bytes, &self.pause_requested)
                    })
                    .await?;
                bitv_factory
                    .store_initial_check(id, have_pieces)
                    .await
                    .context("error storing initial check bitfield")?
            }
        };
        // torrent-patron patch: lets a disk-backed bitfield tell when the torrent is whole.
        have_pieces.set_piece_count(self.metadata.lengths().total_pieces() as usize);

        let selected_pieces = compute_selected_pieces(
            self.metadata.lengths(),
            |idx| {
                self.only_files
                    .as_ref()
                    .map(|o| o.contains(&idx))
                    .unwrap_or(true)
            },
            &self.metadata.file_infos,
        );

        let chunk_tracker = ChunkTracker::new(
            have_pieces.into_dyn(),
            selected_pieces,
            *self.metadata.lengths(),
            &self.metadata.file_infos,
        )
        .context("error creating chunk tracker")?;

        let hns = chunk_tracker.get_hns();

        info!(
            torrent=?self.shared.id,
            "Initial check results: have {}, needed {}, total selected {}",
            SF::new(hns.have_bytes),
            SF::new(hns.needed_bytes),
            SF::new(hns.selected_bytes)
        );

        // Ensure file lengths are correct, and reopen read-only.
        self.shared
            .spawner
            .block_in_place_with_semaphore(|| {
                for (idx, fi) in self.metadata.file_infos.iter().enumerate() {
                    if self
                        .only_files
                        .as_ref()
                        .map(|v| v.contains(&idx))
                        .unwrap_or(true)
                    {
                        let now = Instant::now();
                        if fi.attrs.padding {
                            continue;
                        }
                        if let Err(err) = self.files.ensure_file_length(idx, fi.len) {
                            warn!(
                                id=?self.shared.id, info_hash = ?self.shared.info_hash,
                                "Error setting length for file {:?} to {}: {:#?}",
                                fi.relative_filename, fi.len, err
                            );
                        } else {
                            trace!(
                                "Set length for file {:?} to {} in {:?}",
                                fi.relative_filename,
                                SF::new(fi.len),
                                now.elapsed()
                            );
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
            .await?;

        let paused = TorrentStatePaused {
            shared: self.shared.clone(),
            metadata: self.metadata.clone(),
            files: self.files.take()?,
            chunk_tracker,
            streams: Arc::new(Default::default()),
        };
        Ok(paused)
    }
}

/// torrent-patron patch: the slots a check holds. A check is for reading data, so it takes
/// one of the `concurrent_init_limit` check slots; but the check of a resume its embedder
/// vouches for begins with one of the resume slots instead (loading a bitfield and asking
/// the vouch read no data), and takes a check slot, giving the resume slot back first, only
/// if the vouch fails: torrents waiting to be hashed do not hold up those that need not be.
struct CheckSlots {
    check_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Held until it ends (dropped with it).
    _resume: Option<tokio::sync::OwnedSemaphorePermit>,
    _check: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl CheckSlots {
    /// The slot a check begins with: a resume slot if it is `vouched` for, else a check slot.
    async fn first(session: &crate::Session, vouched: bool) -> anyhow::Result<Self> {
        let mut slots = CheckSlots {
            check_slots: session.concurrent_initialize_semaphore.clone(),
            _resume: None,
            _check: None,
        };
        if vouched {
            let resume = session.concurrent_resume_semaphore.clone().acquire_owned();
            let permit = resume
                .await
                .context("bug: concurrent resume semaphore was closed")?;
            slots._resume = Some(permit);
        } else {
            slots.reading().await?;
        }
        Ok(slots)
    }

    /// Holds a check slot from now on (waiting for one if need be).
    async fn reading(&mut self) -> anyhow::Result<()> {
        if self._check.is_some() {
            return Ok(());
        }
        self._resume = None;
        let permit = self
            .check_slots
            .clone()
            .acquire_owned()
            .await
            .context("bug: concurrent init semaphore was closed")?;
        self._check = Some(permit);
        Ok(())
    }
}
