//! What can go wrong for a patron, sorted by what a caller does about it.

use proto::ProtoError;

/// A patron's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No broker answered, and none could be started (or auto-start was off).
    #[error("broker unreachable: {0}")]
    BrokerUnreachable(String),
    /// The broker refused this patron at the handshake (wrong version, wrong user, limits).
    #[error("broker refused the connection ({kind}): {message}")]
    Refused {
        /// A stable word: `version`, `user`, `limit`, `bad-hello`, `stopping`, `internal`.
        kind: String,
        /// Why.
        message: String,
    },
    /// The broker stopped (or dropped this patron) while it was connected.
    #[error("broker stopped: {0}")]
    BrokerStopped(String),
    /// A create request could not be started.
    #[error("cannot start torrent: {0}")]
    StartFailed(ProtoError),
    /// Another request failed.
    #[error("{0}")]
    Request(ProtoError),
    /// A stream ended before its file did: its torrent failed, was closed, or is being
    /// checked again.
    #[error("the stream ended: {0}")]
    StreamEnded(ProtoError),
    /// The broker answered something that makes no sense for the request.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// A patron's result.
pub type Result<T> = std::result::Result<T, Error>;
