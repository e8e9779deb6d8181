//! `_native.Stream`: one file of a torrent read while it downloads, under the Python
//! `TorrentFile` (an `io.RawIOBase`). Every wait sleeps with the GIL released, in slices,
//! so that Ctrl-C interrupts it.
//!
//! The stream's lock is only ever taken with the GIL released: a thread holding the GIL
//! never waits for it, so one thread's `close()` or `seek()` while another's `read()` waits
//! for bytes cannot freeze the interpreter (each waits for the other's slice, not for ever).

use crate::core::lock;
use crate::errors;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

/// A stream; `None` once closed.
#[pyclass(frozen, module = "torrent_patron._native")]
pub struct Stream {
    stream: Mutex<Option<patron_client::Stream>>,
    size: u64,
    name: String,
    /// The process that opened it: a forked child must not read or close its parent's.
    owner_pid: u32,
}

/// What went wrong, told to Python once the GIL is back.
enum Failure {
    Closed,
    Client(patron_client::Error),
    Io(std::io::Error),
    Seek(String),
}

impl Failure {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Closed => PyValueError::new_err("I/O operation on a closed stream"),
            Failure::Client(e) => errors::from_client(py, e),
            Failure::Io(e) => PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())),
            Failure::Seek(why) => PyValueError::new_err(why),
        }
    }
}

impl Stream {
    pub fn new(stream: patron_client::Stream) -> Stream {
        Stream {
            size: stream.len(),
            name: stream.info().file.path.clone(),
            stream: Mutex::new(Some(stream)),
            owner_pid: std::process::id(),
        }
    }

    /// Runs `f` on the stream under its lock, with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut patron_client::Stream) -> Result<T, Failure> + Send,
    ) -> PyResult<T> {
        errors::check_owner(py, self.owner_pid, "file")?;
        crate::detach(py, || match lock(&self.stream).as_mut() {
            Some(stream) => f(stream),
            None => Err(Failure::Closed),
        })
        .map_err(|failure| failure.into_py(py))
    }

    /// Bytes verified from the position (0 at the end), waited for in slices.
    fn wait_readable(&self, py: Python<'_>) -> PyResult<u64> {
        crate::core::until(py, |slice| {
            self.with(py, |s| s.wait_readable_for(slice).map_err(Failure::Client))
        })
    }
}

#[pymethods]
impl Stream {
    /// The file's size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    /// The file's path inside the torrent.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Up to `size` bytes from the position (all that is left when negative), once
    /// verified; `b""` at the end of the file.
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        if size < 0 {
            let mut all = Vec::new();
            loop {
                let ready = self.wait_readable(py)?;
                if ready == 0 {
                    return Ok(PyBytes::new(py, &all));
                }
                let take = usize::try_from(ready.min(16 << 20)).unwrap_or(16 << 20);
                let start = all.len();
                all.resize(start + take, 0);
                let buffer = &mut all[start..];
                self.with(py, |s| read_fully(s, buffer))?;
            }
        }
        let ready = self.wait_readable(py)?;
        let want = usize::try_from(ready.min(size as u64)).unwrap_or(usize::MAX);
        // The bytes are written straight into the new bytes object, with the GIL released.
        PyBytes::new_with(py, want, |buffer| self.with(py, |s| read_fully(s, buffer)))
    }

    /// What `read(size)` would give now without waiting (at most 16 MiB when `size` is
    /// negative), or `None` when the bytes at the position are not verified yet.
    fn read_ready<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let ready = self.with(py, |s| {
            s.wait_readable_for(std::time::Duration::ZERO)
                .map_err(Failure::Client)
        })?;
        let Some(ready) = ready else {
            return Ok(None);
        };
        let most = if size < 0 { 16 << 20 } else { size as u64 };
        let want = usize::try_from(ready.min(most)).unwrap_or(usize::MAX);
        PyBytes::new_with(py, want, |buffer| self.with(py, |s| read_fully(s, buffer))).map(Some)
    }

    /// Waits until bytes at the position are verified; how many there are from it (0 at
    /// the end of the file).
    fn readable(&self, py: Python<'_>) -> PyResult<u64> {
        self.wait_readable(py)
    }

    /// A descriptor of its own of the file the bytes are read from (checked to be the one
    /// the engine writes), for reads straight into a bytes object of Python's
    /// (`os.pread`); `None` when the bytes come over the channel. The caller closes it.
    fn local_fd(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        use std::os::fd::IntoRawFd;
        self.with(py, |s| match s.local_file() {
            Some(file) => file
                .try_clone()
                .map(|copy| Some(copy.into_raw_fd()))
                .map_err(Failure::Io),
            None => Ok(None),
        })
    }

    /// Moves the position (`whence` 0: from the start, 1: from here, 2: from the end);
    /// returns it.
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        let to = match whence {
            0 => SeekFrom::Start(
                u64::try_from(offset)
                    .map_err(|_| PyValueError::new_err("negative seek position"))?,
            ),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "invalid whence ({whence}, should be 0, 1 or 2)"
                )))
            }
        };
        self.with(py, |s| s.seek(to).map_err(|e| Failure::Seek(e.to_string())))
    }

    /// The position.
    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |s| s.stream_position().map_err(Failure::Io))
    }

    /// Ends the stream (its priority window goes).
    fn close(&self, py: Python<'_>) {
        // A forked child's copy of the connection is its parent's: it sends nothing.
        // It takes no lock either: a parent's thread that held it at the fork is not here
        // to let it go.
        if std::process::id() != self.owner_pid {
            return;
        }
        crate::detach(py, || drop(lock(&self.stream).take()));
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        // A forked child's copy is never open to it (and its lock may be held for good).
        if std::process::id() != self.owner_pid {
            return true;
        }
        crate::detach(py, || lock(&self.stream).is_none())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if std::process::id() != self.owner_pid {
            let stream = self
                .stream
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            std::mem::forget(stream);
        }
    }
}

/// Fills `buffer` from the stream (whose bytes there are verified).
fn read_fully(stream: &mut patron_client::Stream, buffer: &mut [u8]) -> Result<(), Failure> {
    let mut filled = 0;
    while filled < buffer.len() {
        match stream.read(&mut buffer[filled..]).map_err(Failure::Io)? {
            0 => {
                return Err(Failure::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended before its verified bytes",
                )))
            }
            n => filled += n,
        }
    }
    Ok(())
}
