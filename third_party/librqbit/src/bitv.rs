use std::path::PathBuf;

use anyhow::Context;
use bitvec::{boxed::BitBox, order::Msb0, slice::BitSlice, vec::BitVec};
use tracing::debug_span;

use crate::{spawn_utils::BlockingSpawner, storage::filesystem::OurFileExt};

pub trait BitV: Send + Sync {
    fn as_slice(&self) -> &BitSlice<u8, Msb0>;
    fn as_slice_mut(&mut self) -> &mut BitSlice<u8, Msb0>;
    fn into_dyn(self) -> Box<dyn BitV>;
    fn as_bytes(&self) -> &[u8];
    fn flush(&mut self, flush_async: bool) -> anyhow::Result<()>;
    /// torrent-patron patch: how many pieces the bitfield covers (the rest of its last byte
    /// is padding), so that a disk-backed one can tell when its torrent is whole.
    fn set_piece_count(&mut self, _pieces: usize) {}
}

pub type BoxBitV = Box<dyn BitV>;

/// torrent-patron patch: starts the flusher task, given the bitfield as on disk. Flushes
/// reach it through a watch channel: one snapshot waits at most, the latest (with a flush
/// after every verified piece, an unbounded queue grew by a whole bitfield a piece while
/// the disk stalled).
type StartFlusher = Box<
    dyn FnOnce(BitBox<u8, Msb0>) -> tokio::sync::watch::Sender<BitBox<u8, Msb0>> + Send + Sync,
>;

pub struct DiskBackedBitV {
    bv: BitBox<u8, Msb0>,
    // torrent-patron patch: the flusher task starts at the first flush that changes the
    // bitfield. A seed's never changes: ten thousand seeds held ten thousand idle tasks and
    // channels (1.4 KiB each) for nothing.
    flusher: Flusher,
    // torrent-patron patch: where the flusher starts, even from a drop on a thread outside
    // the runtime (upstream's channel, made in `new`, took that last flush from anywhere).
    runtime: tokio::runtime::Handle,
    /// torrent-patron patch: the piece count, 0 while unknown (shared with the flusher).
    pieces: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// torrent-patron patch: a bitfield's flusher task, started at the first change.
enum Flusher {
    /// Not started: the bitfield as it is on disk, and how to start the task.
    Waiting {
        on_disk: BitBox<u8, Msb0>,
        start: StartFlusher,
    },
    Started(tokio::sync::watch::Sender<BitBox<u8, Msb0>>),
    /// Only while it starts.
    Starting,
    /// It stopped (its file replaced or gone, or a write failed): nothing is written any
    /// more. Said once; the bitfield on disk then only under-claims.
    Dead,
}

impl DiskBackedBitV {
    /// torrent-patron patch: where flushes go, the flusher started if it is not yet. `None`:
    /// nothing changed since the load (nothing to write).
    fn flusher(&mut self) -> Option<&tokio::sync::watch::Sender<BitBox<u8, Msb0>>> {
        if let Flusher::Waiting { on_disk, .. } = &self.flusher
            && *on_disk == self.bv
        {
            return None;
        }
        self.flusher = match std::mem::replace(&mut self.flusher, Flusher::Starting) {
            Flusher::Waiting { on_disk, start } => {
                let _in_runtime = self.runtime.enter();
                Flusher::Started(start(on_disk))
            }
            started => started,
        };
        match &self.flusher {
            Flusher::Started(tx) => Some(tx),
            _ => None,
        }
    }
}

impl Drop for DiskBackedBitV {
    fn drop(&mut self) {
        let snapshot = self.bv.clone();
        if let Some(tx) = self.flusher()
            && tx.send(snapshot).is_err()
        {
            tracing::warn!("error flushing bitv on drop: flusher task is dead")
        }
    }
}

// NOTE on mmap. rqbit used it for a while, but it has issues on slow disks.
// We want writes to bitv to be instant in RAM. However when disk is slow, occasionally
// the writes stall which blocks the executor.
// Thus this separate "thread" of flushing was implemented.
impl DiskBackedBitV {
    pub async fn new(filename: PathBuf, spawner: BlockingSpawner) -> anyhow::Result<Self> {
        // torrent-patron patch: never through a symlink, never waiting on a FIFO, only a
        // regular file (the broker's state is read as state, not as whatever is planted).
        // The file as loaded: a later open that finds another (this torrent closed or checked
        // again meanwhile, and a new file written in its place) must not write into it.
        let identity = |meta: &std::fs::Metadata| {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        // torrent-patron patch: the identity is taken from the file read, not from a second
        // open for writing (one more hand-off to a blocking thread for each of 10,000
        // torrents at a restart); a file that cannot be written fails at its first write,
        // which removes it, as before.
        let (buf, loaded) = {
            let path = filename.clone();
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(
                        nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY,
                    )
                    .open(&path)?;
                let meta = file.metadata()?;
                if !meta.file_type().is_file() {
                    return Err(std::io::Error::other("not a regular file"));
                }
                let mut buf = Vec::new();
                file.read_to_end(&mut buf)?;
                Ok::<_, std::io::Error>((buf, identity(&meta)))
            })
            .await
            .context("bitfield reader panicked")?
            .with_context(|| format!("error reading {filename:?}"))?
        };
        let bv = BitVec::from_vec(buf).into_boxed_bitslice();

        // blocking file to avoid double-buffering and double-memcpy
        // torrent-patron patch: the file is opened at the first write that changes it, and
        // closed once the torrent is whole (nothing changes it then), instead of held for the
        // torrent's life: with one descriptor per torrent, 10,000 seeding torrents ran out
        // of them. A write that would not change the file is skipped.
        let open = {
            let filename = filename.clone();
            move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(false)
                    .open(&filename)
            }
        };
        let pieces = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let whole = {
            let pieces = pieces.clone();
            move |bv: &BitBox<u8, Msb0>| {
                let n = pieces.load(std::sync::atomic::Ordering::Relaxed);
                n > 0 && bv.get(..n).is_some_and(|have| have.all())
            }
        };

        let start_flusher: StartFlusher = Box::new(move |mut written: BitBox<u8, Msb0>| {
            let (tx, mut rx) = tokio::sync::watch::channel(written.clone());
            crate::spawn_utils::spawn(
                // torrent-patron patch: no 5 s wakes
                debug_span!("diskbitv-flusher", ?filename),
                format!("DiskBackedBitV::flusher {filename:?}"),
                async move {
                    let mut held: Option<std::fs::File> = None;
                    // Ends once the bitfield is dropped (after its last snapshot).
                    while rx.changed().await.is_ok() {
                        let snapshot = rx.borrow_and_update().clone();
                        if snapshot == written {
                            continue;
                        }
                        let file = match held.take() {
                            Some(file) => file,
                            None => match spawner.block_in_place_with_semaphore(&open).await {
                                Ok(file)
                                    if file.metadata().is_ok_and(|m| identity(&m) == loaded) =>
                                {
                                    file
                                }
                                Ok(_) => {
                                    tracing::debug!(?filename, "bitv replaced, not written");
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(?filename, "bitv gone, not written: {e:#}");
                                    break;
                                }
                            },
                        };

                        if let Err(e) = spawner
                            .block_in_place_with_semaphore(|| {
                                file.pwrite_all(0, snapshot.as_raw_slice())
                            })
                            .await
                        {
                            tracing::error!(?filename, "error writing to bitv: {e:#}");
                            if let Err(e) = tokio::fs::remove_file(&filename).await {
                                tracing::error!(?filename, "error removing bitv: {e:#}");
                            }
                            break;
                        }

                        // torrent-patron patch: no fsync. Written to the page cache, a bitfield
                        // outlives a killed process as the data under it does; after a crash of
                        // the machine neither is known to be on disk (the data was never
                        // fsynced), so the embedder trusts no bitfield then, and syncs the file
                        // systems at a clean stop. An fsync per piece cost ~15 % of a core with
                        // 1,000 torrents each verifying a piece a second.
                        written = snapshot;
                        if !whole(&written) {
                            held = Some(file);
                        }
                    }

                    Ok::<_, anyhow::Error>(())
                },
            );
            tx
        });
        Ok(Self {
            flusher: Flusher::Waiting {
                on_disk: bv.clone(),
                start: start_flusher,
            },
            bv,
            runtime: tokio::runtime::Handle::current(),
            pieces,
        })
    }
}

#[async_trait::async_trait]
impl BitV for BitBox<u8, Msb0> {
    fn as_slice(&self) -> &BitSlice<u8, Msb0> {
        self.as_bitslice()
    }

    fn as_slice_mut(&mut self) -> &mut BitSlice<u8, Msb0> {
        self.as_mut_bitslice()
    }

    fn as_bytes(&self) -> &[u8] {
        self.as_raw_slice()
    }

    fn flush(&mut self, _flush_async: bool) -> anyhow::Result<()> {
        Ok(())
    }

    fn into_dyn(self) -> Box<dyn BitV> {
        Box::new(self)
    }
}

impl BitV for DiskBackedBitV {
    fn as_slice(&self) -> &BitSlice<u8, Msb0> {
        self.bv.as_bitslice()
    }

    fn as_slice_mut(&mut self) -> &mut BitSlice<u8, Msb0> {
        self.bv.as_mut_bitslice()
    }

    fn as_bytes(&self) -> &[u8] {
        self.bv.as_raw_slice()
    }

    fn set_piece_count(&mut self, pieces: usize) {
        self.pieces
            .store(pieces, std::sync::atomic::Ordering::Relaxed);
    }

    fn flush(&mut self, _flush_async: bool) -> anyhow::Result<()> {
        let snapshot = self.bv.clone();
        let dead = self.flusher().is_some_and(|tx| tx.send(snapshot).is_err());
        if dead {
            // Said once (a warning at every verified piece after was only noise).
            self.flusher = Flusher::Dead;
            anyhow::bail!("flusher task is dead: the bitfield on disk is not updated any more");
        }
        Ok(())
    }

    fn into_dyn(self) -> Box<dyn BitV> {
        Box::new(self)
    }
}

impl BitV for Box<dyn BitV> {
    fn as_slice(&self) -> &BitSlice<u8, Msb0> {
        (**self).as_slice()
    }

    fn as_slice_mut(&mut self) -> &mut BitSlice<u8, Msb0> {
        (**self).as_slice_mut()
    }

    fn as_bytes(&self) -> &[u8] {
        (**self).as_bytes()
    }

    fn flush(&mut self, flush_async: bool) -> anyhow::Result<()> {
        (**self).flush(flush_async)
    }

    fn set_piece_count(&mut self, pieces: usize) {
        (**self).set_piece_count(pieces)
    }

    fn into_dyn(self) -> Box<dyn BitV> {
        self
    }
}
