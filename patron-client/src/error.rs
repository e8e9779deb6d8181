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
    /// A broker runs but did not answer in time (a handshake, a board request): it is
    /// stuck or stopped (SIGSTOP), or the timeout asked was short.
    #[error("the broker did not answer in time: {0}")]
    TimedOut(String),
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
    #[error("{context}: {}", plain(source))]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// An I/O error in a user's words: what `ls` or `cp` would say, without the errno.
pub fn plain(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match error.kind() {
        NotFound => "no such file or folder".into(),
        PermissionDenied => "permission denied".into(),
        IsADirectory => "it is a folder".into(),
        NotADirectory => "a part of the path is not a folder".into(),
        AlreadyExists => "it exists already".into(),
        ReadOnlyFilesystem => "the file system is read-only".into(),
        StorageFull => "the disk is full".into(),
        _ => {
            let text = error.to_string();
            match text.find(" (os error ") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}

impl Error {
    /// A stable word for what went wrong, as `--json` prints it: the protocol's kind for a
    /// broker's refusal, else `broker-unreachable`, `timeout`, `refused-<kind>`, `broker-stopped`,
    /// `protocol` or `io`.
    pub fn kind(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::StartFailed(e) | Error::Request(e) | Error::StreamEnded(e) => {
                e.kind.as_str().into()
            }
            Error::BrokerUnreachable(_) => "broker-unreachable".into(),
            Error::TimedOut(_) => "timeout".into(),
            Error::Refused { kind, .. } => format!("refused-{kind}").into(),
            Error::BrokerStopped(_) => "broker-stopped".into(),
            Error::Protocol(_) => "protocol".into(),
            Error::Io { .. } => "io".into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// A patron's result.
pub type Result<T> = std::result::Result<T, Error>;
