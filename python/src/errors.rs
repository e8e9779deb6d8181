//! One exception hierarchy, rooted at `TorrentPatronError`: a class per error kind of the
//! protocol (what the broker refused, and why), and one per way the connection fails.
//! Each carries `kind` (the protocol's stable word, as `--json` prints it) and `message`
//! (the broker's words).
//!
//! Where Python has a builtin for the same failure, the class derives from it too (as
//! qbittorrent-api's do), so that `except LookupError`, `except PermissionError`,
//! `except ConnectionError` or `except TimeoutError` catch them as a reader expects. The
//! classes are made at import with `type()`, which takes several bases.

use crate::core::Failure;
use patron_client::proto::{ErrorKind, ProtoError};
use patron_client::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use std::collections::HashMap;

/// Each class: its name, the builtin it also derives from, and its doc.
const CLASSES: &[(&str, Option<&str>, &str)] = &[
    ("BrokerUnreachable", Some("ConnectionError"), "No broker answered, and none could be started (or autostart was off)."),
    ("BrokerRefused", Some("ConnectionError"), "The broker refused this patron at the handshake (version, user, limits)."),
    ("BrokerStopped", Some("ConnectionError"), "The broker stopped, or dropped this patron, while it was connected."),
    ("PatronClosed", None, "This patron was closed."),
    ("PatronForked", None, "This patron (or file) was made in another process, before a fork: make a new one here."),
    ("ProtocolError", None, "The broker answered something that makes no sense for the request."),
    ("StreamEnded", None, "A stream ended before its file did: its torrent failed, was closed, or is being checked again."),
    ("TorrentFailed", None, "The torrent waited for stopped with an error."),
    ("WaitTimeout", Some("TimeoutError"), "A wait's time passed first."),
    ("InvalidTorrent", Some("ValueError"), "The .torrent is not valid."),
    ("InvalidMagnet", Some("ValueError"), "The magnet link is not valid."),
    ("MetadataTimeout", Some("TimeoutError"), "No peer sent the magnet's metadata: none in time, or every peer it could reach was tried and none had it."),
    ("NotAllowed", Some("PermissionError"), "The folder or file is outside the broker's download roots."),
    ("FileExists", Some("FileExistsError"), "A file is in the way (a torrent never overwrites what it did not write)."),
    ("UnknownTorrent", Some("LookupError"), "No such torrent (by id or info hash)."),
    ("NotHolder", None, "This patron does not hold the torrent."),
    ("InvalidPeer", Some("ValueError"), "A peer address is not valid."),
    ("NoSpace", None, "Not enough space on the disk."),
    ("LimitReached", None, "A limit of the broker's was reached."),
    ("BadRequest", Some("ValueError"), "The request is malformed."),
    ("BrokerIoError", Some("OSError"), "The broker could not read or write a file (no such file, no permission...)."),
    ("EngineError", None, "The torrent engine failed."),
    ("ShuttingDown", Some("ConnectionError"), "The broker is shutting down."),
    ("FileOwned", None, "Another torrent owns the file."),
];

static MADE: PyOnceLock<HashMap<&'static str, Py<PyType>>> = PyOnceLock::new();

/// Makes every class (once) and adds them to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    for (name, class) in classes(module.py())? {
        module.add(*name, class.bind(module.py()))?;
    }
    Ok(())
}

fn classes(py: Python<'_>) -> PyResult<&HashMap<&'static str, Py<PyType>>> {
    MADE.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let make = |name: &str, bases: Bound<'_, PyTuple>, doc: &str| -> PyResult<Py<PyType>> {
            let body = PyDict::new(py);
            body.set_item("__doc__", doc)?;
            body.set_item("__module__", "torrent_patron")?;
            let made = builtins.getattr("type")?.call1((name, bases, body))?;
            Ok(made.cast_into::<PyType>()?.unbind())
        };
        let root_body = "Every error of torrent_patron. `kind` is a stable word (as `--json` prints it), `message` says why in the broker's words.";
        let exception = builtins.getattr("Exception")?;
        let root = make("TorrentPatronError", PyTuple::new(py, [exception])?, root_body)?;
        // Defaults, so that an error made by hand has them too.
        root.bind(py).setattr("kind", "")?;
        root.bind(py).setattr("message", "")?;
        let mut made = HashMap::new();
        for (name, builtin, doc) in CLASSES {
            let mut bases = vec![root.bind(py).clone().into_any()];
            if let Some(builtin) = builtin {
                bases.push(builtins.getattr(*builtin)?);
            }
            made.insert(*name, make(name, PyTuple::new(py, bases)?, doc)?);
        }
        made.insert("TorrentPatronError", root);
        Ok(made)
    })
}

/// An error of class `name` with its `kind` and `message`.
pub fn error(py: Python<'_>, name: &str, kind: &str, message: &str) -> PyErr {
    let class = match classes(py).map(|c| c.get(name).map(|c| c.bind(py).clone())) {
        Ok(Some(class)) => class,
        Ok(None) => {
            return pyo3::exceptions::PyRuntimeError::new_err(format!(
                "torrent_patron has no error class {name}: {message}"
            ))
        }
        Err(e) => return e,
    };
    let err = PyErr::from_type(class, (message.to_owned(),));
    let value = err.value(py);
    // Setting attributes on a fresh exception instance fails only without memory.
    let _ = value.setattr("kind", kind);
    let _ = value.setattr("message", message);
    err
}

/// The class of a protocol error kind.
fn class_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidTorrent => "InvalidTorrent",
        ErrorKind::InvalidMagnet => "InvalidMagnet",
        ErrorKind::MetadataTimeout => "MetadataTimeout",
        ErrorKind::PathNotAllowed => "NotAllowed",
        ErrorKind::FileExists => "FileExists",
        ErrorKind::UnknownTorrent => "UnknownTorrent",
        ErrorKind::NotHolder => "NotHolder",
        ErrorKind::InvalidPeer => "InvalidPeer",
        ErrorKind::NoSpace => "NoSpace",
        ErrorKind::LimitReached => "LimitReached",
        ErrorKind::BadRequest => "BadRequest",
        ErrorKind::Io => "BrokerIoError",
        ErrorKind::Engine => "EngineError",
        ErrorKind::ShuttingDown => "ShuttingDown",
        ErrorKind::FileOwned => "FileOwned",
    }
}

/// A broker's refusal.
pub fn refusal(py: Python<'_>, e: &ProtoError) -> PyErr {
    error(py, class_of(e.kind), e.kind.as_str(), &e.message)
}

/// A patron_client error.
pub fn from_client(py: Python<'_>, e: Error) -> PyErr {
    let class = match &e {
        Error::StartFailed(p) | Error::Request(p) => return refusal(py, p),
        // A local I/O failure is Python's own OSError, with its errno.
        Error::Io { source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            return pyo3::exceptions::PyOSError::new_err((errno, e.to_string()));
        }
        Error::StreamEnded(_) => "StreamEnded",
        Error::BrokerUnreachable(_) => "BrokerUnreachable",
        Error::TimedOut(_) => "WaitTimeout",
        Error::Refused { .. } => "BrokerRefused",
        Error::BrokerStopped(_) => "BrokerStopped",
        Error::Protocol(_) => "ProtocolError",
    };
    error(py, class, &e.kind(), &e.to_string())
}

/// `PatronForked` when this process is not `owner` (a child forked after `what` was
/// made): the parent's connection, board or file is not the child's to use.
pub fn check_owner(py: Python<'_>, owner: u32, what: &str) -> PyResult<()> {
    let here = std::process::id();
    if here == owner {
        return Ok(());
    }
    Err(error(
        py,
        "PatronForked",
        "forked",
        &format!(
            "this {what} was made in process {owner}, and this is process {here} (a fork): make a new one in this process"
        ),
    ))
}

/// A request that got no reply.
pub fn from_failure(py: Python<'_>, failure: Failure) -> PyErr {
    match failure {
        Failure::Refused(e) => refusal(py, &e),
        Failure::Ended { why, closed: true } => error(py, "PatronClosed", "closed", &why),
        Failure::Ended { why, closed: false } => error(py, "BrokerStopped", "broker-stopped", &why),
    }
}
