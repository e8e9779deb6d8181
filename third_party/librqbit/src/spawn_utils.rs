use std::sync::Arc;
use tokio::sync::Semaphore;

/// A tool to limit the number of blocking threads used concurrently to prevent
/// runtime starvation.
///
/// Also shortcuts for single-threaded tokio runtime to simply call the function, unlike
/// "tokio::task::block_in_place" which would panic.
#[derive(Clone, Debug)]
pub struct BlockingSpawner {
    allow_block_in_place: bool,
    concurrent_block_in_place_semaphore: Arc<Semaphore>,
}

impl BlockingSpawner {
    pub fn new(max_blocking_threads: usize) -> Self {
        let handle = tokio::runtime::Handle::current();
        let allow_block_in_place = match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => false,
            tokio::runtime::RuntimeFlavor::MultiThread => true,
            _ => true,
        };
        Self {
            allow_block_in_place,
            concurrent_block_in_place_semaphore: Arc::new(Semaphore::new(
                max_blocking_threads.max(1),
            )),
        }
    }

    /// Only call this if you can't call the async function block_in_place_with_semaphore
    /// E.g. if you you have non-send objects on the stack.
    pub fn block_in_place<F: FnOnce() -> R, R>(&self, f: F) -> R {
        if self.allow_block_in_place {
            return tokio::task::block_in_place(f);
        }

        f()
    }

    /// like "block_in_place" but limit concurrency.
    pub async fn block_in_place_with_semaphore<F: FnOnce() -> R, R>(&self, f: F) -> R {
        if self.allow_block_in_place {
            let _permit = self
                .concurrent_block_in_place_semaphore
                .acquire()
                .await
                .unwrap();
            return tokio::task::block_in_place(f);
        }

        f()
    }

    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.concurrent_block_in_place_semaphore.clone()
    }
}

// torrent-patron patch: the engine's tasks are spawned through these rather than
// `librqbit_core::spawn_utils`'s, whose wrapper wakes every task every 5 s to log
// "still running" at trace level, whether anything traces or not: with thousands of
// torrents (five tasks each) that was ten thousand wakes a second of an idle broker. Here
// the wrapper ticks only while trace level is on.

/// Spawns a future with tracing instrumentation.
#[track_caller]
pub fn spawn<E: std::fmt::Display + Send + 'static>(
    span: tracing::Span,
    name: impl Into<std::borrow::Cow<'static, str>>,
    fut: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use tracing::Instrument;
    let name = name.into();
    let fut = async move {
        tracing::trace!("started");
        tokio::pin!(fut);
        let r = if tracing::enabled!(tracing::Level::TRACE) {
            let mut trace_interval = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = trace_interval.tick() => tracing::trace!("still running"),
                    r = &mut fut => break r,
                }
            }
        } else {
            fut.await
        };
        match r {
            Ok(_) => tracing::trace!("finished"),
            Err(e) => tracing::error!("{name} finished with error: {:#}", e),
        }
    }
    .instrument(span);
    tokio::task::spawn(fut)
}

/// Spawns a future with tracing instrumentation, ended when `cancellation_token` is.
#[track_caller]
pub fn spawn_with_cancel<E: std::fmt::Display + Send + 'static>(
    span: tracing::Span,
    name: impl Into<std::borrow::Cow<'static, str>>,
    cancellation_token: tokio_util::sync::CancellationToken,
    fut: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    spawn(span, name, async move {
        tokio::select! {
            _ = cancellation_token.cancelled() => {
                tracing::debug!("task cancelled");
                Ok(())
            },
            r = fut => r
        }
    })
}
