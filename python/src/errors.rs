//! One exception hierarchy, rooted at `TorrentPatronError`: a class per error kind of the
//! protocol (what the broker refused, and why), and one per way the connection fails.
//! Each carries `kind` (the protocol's stable word, as `--json` prints it) and `message`
//! (the broker's words).

use crate::core::Failure;
use patron_client::proto::{ErrorKind, ProtoError};
use patron_client::Error;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    torrent_patron,
    TorrentPatronError,
    PyException,
    "Every error of torrent_patron. `kind` is a stable word (as `--json` prints it), `message` says why in the broker's words."
);

macro_rules! errors {
    ($($name:ident: $doc:literal),* $(,)?) => {
        $(create_exception!(torrent_patron, $name, TorrentPatronError, $doc);)*

        /// Adds every class to the module.
        pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = module.py();
            module.add("TorrentPatronError", py.get_type::<TorrentPatronError>())?;
            $(module.add(stringify!($name), py.get_type::<$name>())?;)*
            Ok(())
        }
    };
}

errors! {
    BrokerUnreachable: "No broker answered, and none could be started (or autostart was off).",
    BrokerRefused: "The broker refused this patron at the handshake (version, user, limits).",
    BrokerStopped: "The broker stopped, or dropped this patron, while it was connected.",
    PatronClosed: "This patron was closed.",
    PatronForked: "This patron was made in another process (before a fork): make a new one here.",
    ProtocolError: "The broker answered something that makes no sense for the request.",
    StreamEnded: "A stream ended before its file did: its torrent failed, was closed, or is being checked again.",
    TorrentFailed: "The torrent waited for stopped with an error.",
    InvalidTorrent: "The .torrent is not valid.",
    InvalidMagnet: "The magnet link is not valid.",
    MetadataTimeout: "No peer sent the magnet's metadata in time.",
    NotAllowed: "The folder or file is outside the broker's download roots.",
    FileExists: "A file is in the way (a torrent never overwrites what it did not write).",
    UnknownTorrent: "No such torrent (by id or info hash).",
    NotHolder: "This patron does not hold the torrent.",
    InvalidPeer: "A peer address is not valid.",
    NoSpace: "Not enough space on the disk.",
    LimitReached: "A limit of the broker's was reached.",
    BadRequest: "The request is malformed.",
    BrokerIoError: "The broker could not read or write a file.",
    EngineError: "The torrent engine failed.",
    ShuttingDown: "The broker is shutting down.",
    FileOwned: "Another torrent owns the file.",
}

/// The exception of a protocol error kind.
fn for_kind(error: &ProtoError) -> PyErr {
    let message = error.message.clone();
    match error.kind {
        ErrorKind::InvalidTorrent => InvalidTorrent::new_err(message),
        ErrorKind::InvalidMagnet => InvalidMagnet::new_err(message),
        ErrorKind::MetadataTimeout => MetadataTimeout::new_err(message),
        ErrorKind::PathNotAllowed => NotAllowed::new_err(message),
        ErrorKind::FileExists => FileExists::new_err(message),
        ErrorKind::UnknownTorrent => UnknownTorrent::new_err(message),
        ErrorKind::NotHolder => NotHolder::new_err(message),
        ErrorKind::InvalidPeer => InvalidPeer::new_err(message),
        ErrorKind::NoSpace => NoSpace::new_err(message),
        ErrorKind::LimitReached => LimitReached::new_err(message),
        ErrorKind::BadRequest => BadRequest::new_err(message),
        ErrorKind::Io => BrokerIoError::new_err(message),
        ErrorKind::Engine => EngineError::new_err(message),
        ErrorKind::ShuttingDown => ShuttingDown::new_err(message),
        ErrorKind::FileOwned => FileOwned::new_err(message),
    }
}

/// `err` with its `kind` and `message` set.
fn with_fields(py: Python<'_>, err: PyErr, kind: &str, message: &str) -> PyErr {
    let value = err.value(py);
    // Setting attributes on a fresh exception instance fails only without memory.
    let _ = value.setattr("kind", kind);
    let _ = value.setattr("message", message);
    err
}

/// A broker's refusal.
pub fn refusal(py: Python<'_>, error: &ProtoError) -> PyErr {
    with_fields(py, for_kind(error), error.kind.as_str(), &error.message)
}

/// A patron_client error.
pub fn from_client(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    match &error {
        Error::StartFailed(e) | Error::Request(e) => refusal(py, e),
        Error::StreamEnded(e) => with_fields(
            py,
            StreamEnded::new_err(message.clone()),
            e.kind.as_str(),
            &message,
        ),
        Error::BrokerUnreachable(_) => with_fields(
            py,
            BrokerUnreachable::new_err(message.clone()),
            "broker-unreachable",
            &message,
        ),
        Error::Refused { kind, .. } => with_fields(
            py,
            BrokerRefused::new_err(message.clone()),
            &format!("refused-{kind}"),
            &message,
        ),
        Error::BrokerStopped(_) => with_fields(
            py,
            BrokerStopped::new_err(message.clone()),
            "broker-stopped",
            &message,
        ),
        Error::Protocol(_) => with_fields(
            py,
            ProtocolError::new_err(message.clone()),
            "protocol",
            &message,
        ),
        Error::Io { source, .. } => {
            // A local I/O failure is Python's own OSError, with its errno.
            pyo3::exceptions::PyOSError::new_err((source.raw_os_error().unwrap_or(0), message))
        }
    }
}

/// A request that got no reply.
pub fn from_failure(py: Python<'_>, failure: Failure) -> PyErr {
    match failure {
        Failure::Refused(error) => refusal(py, &error),
        Failure::Ended { why, closed: true } => {
            with_fields(py, PatronClosed::new_err(why.clone()), "closed", &why)
        }
        Failure::Ended { why, closed: false } => with_fields(
            py,
            BrokerStopped::new_err(why.clone()),
            "broker-stopped",
            &why,
        ),
    }
}

/// An error of this library's own, with its kind word.
pub fn own<E: pyo3::PyTypeInfo>(py: Python<'_>, kind: &str, message: String) -> PyErr {
    with_fields(py, PyErr::new::<E, _>(message.clone()), kind, &message)
}
