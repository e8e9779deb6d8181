//! torrent_patron's native part: a patron in a Python process.
//!
//! The Python package (`python/torrent_patron/`) gives the API its shape — `Patron`,
//! `AsyncPatron`, `TorrentFile`, typed and documented — over [`calls::Connection`] here,
//! which is `patron_client` made safe to share between Python threads and an asyncio loop
//! (DESIGN §12): one reader thread per connection routes replies to whoever waits for them,
//! status is read off the broker's board in shared memory with no request, and every wait
//! sleeps with the GIL released, in slices, so that Ctrl-C interrupts it.

mod calls;
mod core;
mod errors;
mod stream;
mod values;

use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Set when the interpreter begins to exit (the package's `atexit` hook): a thread that
/// comes back from a wait then never takes the GIL again. CPython ends a daemon thread that
/// takes it during finalization by unwinding it, which through Rust frames aborts the
/// process; parked, it ends with the process instead.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Threads in [`detach`] (until they have the GIL back), and those of them parked for good
/// at the exit.
static BUSY: AtomicUsize = AtomicUsize::new(0);
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Counts a thread in [`detach`], for the exit (see [`_exiting`]).
struct Busy;

impl Busy {
    fn new() -> Busy {
        BUSY.fetch_add(1, Ordering::AcqRel);
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The thread that called [`_exiting`]: the one finalizing the interpreter, which goes on
/// running Python (later `atexit` hooks, finalizers that close files) and must never park.
static FINALIZING: std::sync::OnceLock<std::thread::ThreadId> = std::sync::OnceLock::new();

/// Runs `f` with the GIL released (see [`EXITING`]). The thread counts as busy until it
/// has the GIL back.
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    let _busy = Busy::new();
    py.detach(|| {
        let result = f();
        if EXITING.load(Ordering::Acquire) && FINALIZING.get() != Some(&std::thread::current().id())
        {
            PARKED.fetch_add(1, Ordering::AcqRel);
            loop {
                std::thread::park();
            }
        }
        result
    })
}

/// Whether the interpreter is exiting (no Python may be called from other threads).
pub fn exiting() -> bool {
    EXITING.load(Ordering::Acquire)
}

/// Native threads (a connection's reader, a closing thread) inside [`attach`].
static ATTACHING: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` with the GIL from a thread Python did not start, unless the interpreter is
/// exiting (`None`): CPython ends such a thread that takes the GIL during finalization by
/// unwinding it, which through Rust frames aborts the process. [`_exiting`] waits for
/// those inside; the count goes up before the flag is read, and the flag is set before
/// the count is, so that none slips past both (both `SeqCst`).
pub fn attach<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    ATTACHING.fetch_add(1, Ordering::SeqCst);
    let result = match EXITING.load(Ordering::SeqCst) {
        true => None,
        false => Some(Python::attach(f)),
    };
    ATTACHING.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Called by the package's `atexit` hook: see [`EXITING`]. A thread waiting for the GIL
/// would be unwound by the finalization that follows; the GIL is let go until each thread
/// in a wait of this module has come back to its next slice and parked (a second at most).
#[pyfunction]
fn _exiting(py: Python<'_>) {
    let _ = FINALIZING.set(std::thread::current().id());
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while (BUSY.load(Ordering::Acquire) > PARKED.load(Ordering::Acquire)
            || ATTACHING.load(Ordering::SeqCst) > 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
}

/// Called in a forked child (`os.register_at_fork`): the parent's threads that were in a
/// wait are not in the child, and `_exiting` must not wait for them.
#[pyfunction]
fn _forked() {
    BUSY.store(0, Ordering::Release);
    PARKED.store(0, Ordering::Release);
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<calls::Connection>()?;
    module.add_class::<calls::Reply>()?;
    module.add_class::<calls::BoardWatch>()?;
    module.add_class::<stream::Stream>()?;
    values::register(module)?;
    errors::register(module)?;
    module.add("PROTOCOL_VERSION", patron_client::proto::PROTOCOL_VERSION)?;
    module.add_function(wrap_pyfunction!(_exiting, module)?)?;
    module.add_function(wrap_pyfunction!(_forked, module)?)?;
    Ok(())
}
