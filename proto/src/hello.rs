//! The one line each side writes on the broker's Unix socket before any ipc-channel traffic.
//!
//! It is deliberately plain text: a stray `nc` or a patron from another release gets a
//! readable refusal instead of a decoding panic, and the broker can bound what it reads
//! (at most [`MAX_HELLO_LINE`] bytes) before trusting anything.

use std::fmt;

/// The longest hello or reply line either side reads, newline included.
pub const MAX_HELLO_LINE: usize = 4096;

const MAGIC: &str = "TIPC";

/// The patron's opening line: `TIPC <version> <pid> <one-shot server name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The patron's [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// The name of the patron's `IpcOneShotServer<Welcome>`.
    pub server_name: String,
}

/// Why a hello line was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloError(pub String);

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HelloError {}

impl Hello {
    /// The line to write, newline included.
    pub fn to_line(&self) -> String {
        format!("{MAGIC} {} {}\n", self.version, self.server_name)
    }

    /// Parses one line (with or without its newline). Never panics, whatever the bytes.
    pub fn parse(line: &[u8]) -> Result<Hello, HelloError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| HelloError("hello is not UTF-8".into()))?
            .trim_end_matches(['\n', '\r']);
        let mut parts = line.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err(HelloError(format!(
                "not a TIPC hello (expected a line starting with {MAGIC:?})"
            )));
        }
        let version = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HelloError("hello has no protocol version".into()))?;
        let server_name = parts
            .next()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| HelloError("hello names no one-shot server".into()))?;
        if parts.next().is_some() {
            return Err(HelloError("hello has trailing fields".into()));
        }
        // ipc-channel's server names are paths of its temporary sockets: refuse anything
        // that could not be one rather than handing it to connect().
        if server_name.len() > 256 || server_name.contains('\0') {
            return Err(HelloError("hello's server name is not plausible".into()));
        }
        Ok(Hello {
            version,
            server_name: server_name.to_owned(),
        })
    }
}

/// The broker's answer line: `OK <broker pid> <patron id>` or `ERR <kind> <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    /// Accepted: the [`crate::Welcome`] is waiting on the one-shot server.
    Accepted {
        /// The broker's pid.
        broker_pid: u32,
        /// This patron's id in the broker's log.
        patron_id: u64,
    },
    /// Refused, with a reason for the person running the patron.
    Refused {
        /// A stable word: `version`, `user`, `limit`, `bad-hello`, `stopping`, `internal`.
        kind: String,
        /// What to tell the user.
        message: String,
    },
}

impl HelloReply {
    /// The line to write, newline included.
    pub fn to_line(&self) -> String {
        match self {
            HelloReply::Accepted {
                broker_pid,
                patron_id,
            } => format!("OK {broker_pid} {patron_id}\n"),
            HelloReply::Refused { kind, message } => {
                let message = message.replace(['\n', '\r'], " ");
                format!("ERR {kind} {message}\n")
            }
        }
    }

    /// Parses the broker's line.
    pub fn parse(line: &[u8]) -> Result<HelloReply, HelloError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| HelloError("broker reply is not UTF-8".into()))?
            .trim_end_matches(['\n', '\r']);
        if let Some(rest) = line.strip_prefix("OK ") {
            let mut parts = rest.split(' ');
            let broker_pid = parts.next().and_then(|p| p.parse().ok());
            let patron_id = parts.next().and_then(|p| p.parse().ok());
            if let (Some(broker_pid), Some(patron_id)) = (broker_pid, patron_id) {
                return Ok(HelloReply::Accepted {
                    broker_pid,
                    patron_id,
                });
            }
        } else if let Some(rest) = line.strip_prefix("ERR ") {
            let (kind, message) = rest.split_once(' ').unwrap_or((rest, ""));
            return Ok(HelloReply::Refused {
                kind: kind.to_owned(),
                message: message.to_owned(),
            });
        }
        Err(HelloError(format!("unexpected broker reply {line:?}")))
    }
}
