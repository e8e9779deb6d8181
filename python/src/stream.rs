//! `_native.Stream`: one file of a torrent read while it downloads, under the Python
//! `TorrentFile` (an `io.RawIOBase`). Every wait sleeps with the GIL released, in slices,
//! so that Ctrl-C interrupts it.

use crate::core::{lock, SIGNAL_SLICE};
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
}

impl Stream {
    pub fn new(stream: patron_client::Stream, _offset: u64) -> Stream {
        Stream {
            size: stream.len(),
            name: stream.info().file.path.clone(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

fn closed() -> PyErr {
    PyValueError::new_err("I/O operation on a closed stream")
}

fn io_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
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
        let mut guard = lock(&self.stream);
        let stream = guard.as_mut().ok_or_else(closed)?;
        if size < 0 {
            let mut all = Vec::new();
            loop {
                let ready = wait_readable(py, stream)?;
                if ready == 0 {
                    return Ok(PyBytes::new(py, &all));
                }
                let start = all.len();
                let take = usize::try_from(ready.min(16 << 20)).unwrap_or(16 << 20);
                all.resize(start + take, 0);
                let buffer = &mut all[start..];
                py.detach(|| read_fully(stream, buffer)).map_err(io_error)?;
            }
        }
        let ready = wait_readable(py, stream)?;
        let want = usize::try_from(ready.min(size as u64)).unwrap_or(usize::MAX);
        // The bytes are written straight into the new bytes object, with the GIL released.
        PyBytes::new_with(py, want, |buffer| {
            py.detach(|| read_fully(stream, buffer)).map_err(io_error)
        })
    }

    /// What `read(size)` would give now without waiting, or `None` when the bytes at the
    /// position are not verified yet (an async reader then waits for the board to change).
    fn read_ready<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut guard = lock(&self.stream);
        let stream = guard.as_mut().ok_or_else(closed)?;
        let ready = match stream.wait_readable_for(std::time::Duration::ZERO) {
            Ok(Some(ready)) => ready,
            Ok(None) => return Ok(None),
            Err(e) => return Err(errors::from_client(py, e)),
        };
        let most = if size < 0 { 16 << 20 } else { size as u64 };
        let want = usize::try_from(ready.min(most)).unwrap_or(usize::MAX);
        PyBytes::new_with(py, want, |buffer| {
            py.detach(|| read_fully(stream, buffer)).map_err(io_error)
        })
        .map(Some)
    }

    /// Moves the position (`whence` 0: from the start, 1: from here, 2: from the end);
    /// returns it.
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, offset: i64, whence: i32) -> PyResult<u64> {
        let mut guard = lock(&self.stream);
        let stream = guard.as_mut().ok_or_else(closed)?;
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
        stream
            .seek(to)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The position.
    fn tell(&self) -> PyResult<u64> {
        let mut guard = lock(&self.stream);
        let stream = guard.as_mut().ok_or_else(closed)?;
        stream.stream_position().map_err(io_error)
    }

    /// Ends the stream (its priority window goes).
    fn close(&self, py: Python<'_>) {
        let stream = lock(&self.stream).take();
        py.detach(|| drop(stream));
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.stream).is_none()
    }
}

/// Bytes verified from the position (0 at the end), waited for in slices with the GIL
/// released.
fn wait_readable(py: Python<'_>, stream: &mut patron_client::Stream) -> PyResult<u64> {
    loop {
        match py.detach(|| stream.wait_readable_for(SIGNAL_SLICE)) {
            Ok(Some(ready)) => return Ok(ready),
            Ok(None) => py.check_signals()?,
            Err(e) => return Err(errors::from_client(py, e)),
        }
    }
}

/// Fills `buffer` from the stream (whose bytes there are verified).
fn read_fully(stream: &mut patron_client::Stream, buffer: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        match stream.read(&mut buffer[filled..])? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended before its verified bytes",
                ))
            }
            n => filled += n,
        }
    }
    Ok(())
}
