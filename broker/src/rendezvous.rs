//! Accept → handshake: how a patron becomes connected.
//!
//! ipc-channel's one-shot server accepts exactly one client and blocks without a timeout,
//! so it cannot be the broker's front door. The front door is a SOCK_SEQPACKET Unix socket in
//! an owner-only folder, which is exactly what `IpcSender::connect` connects to: each accepted
//! connection *is* a patron's request channel. Each is handshaken on a short-lived thread of
//! its own (a stalled connector only ever stalls its own thread, and only for
//! [`HANDSHAKE_TIMEOUT`]):
//!
//! 1. check the peer's uid (`SO_PEERCRED`) against our own;
//! 2. read its first message, which must be a [`Hello`], checked like every datagram
//!    (see `requests`);
//! 3. answer through the patron's one-shot server: [`Welcome::Refused`] with the reason, or
//!    [`Welcome::Accepted`] with the receiver of a fresh event channel;
//! 4. register the patron and hand its channel to the request reader.
//!
//! A connector that sends no valid hello has given no address to answer to: it is closed
//! and logged.

use crate::broker::Broker;
use crate::patron::Outbox;
use crate::requests::RequestReader;
use crate::socket::{self, Received};
use anyhow::Context;
use ipc_channel::ipc::{self, IpcSender};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::sys::time::TimeVal;
use proto::wire::{self, Datagram};
use proto::{Event, Hello, ToBroker, Welcome, PROTOCOL_VERSION};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a connector may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more connectors are closed at once, not queued.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// A hello is small; anything bigger is not one.
const MAX_HELLO_BYTES: usize = 8 * 1024;
const HANDSHAKE_STACK_BYTES: usize = 256 * 1024;

/// The broker's listening socket.
pub struct Rendezvous {
    listener: OwnedFd,
    path: PathBuf,
}

impl Rendezvous {
    /// Binds the socket, replacing a stale one (we hold the state lock, so no live broker
    /// can own it). Its folder is made owner-only first.
    pub fn bind(path: &Path) -> anyhow::Result<Rendezvous> {
        let dir = path.parent().context("socket path has no folder")?;
        crate::config::create_private_dir(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!("removed stale socket {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("cannot remove {}", path.display())),
        }
        let listener = socket::seqpacket_listener(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Rendezvous {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts patrons on a thread of its own until the broker stops.
    pub fn start(self, broker: Arc<Broker>, reader: RequestReader) -> anyhow::Result<()> {
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || self.accept_forever(broker, reader))?;
        Ok(())
    }

    fn accept_forever(self, broker: Arc<Broker>, reader: RequestReader) {
        let pending = Arc::new(AtomicUsize::new(0));
        loop {
            let channel = match socket::accept(&self.listener) {
                Ok(channel) => channel,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept on {} failed: {e}", self.path.display());
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if broker.is_stopping() {
                break;
            }
            if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HANDSHAKES {
                pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("refused a connector: too many handshakes in progress");
                continue;
            }
            let (broker, reader, done) = (broker.clone(), reader.clone(), pending.clone());
            let spawned = std::thread::Builder::new()
                .name("handshake".into())
                .stack_size(HANDSHAKE_STACK_BYTES)
                .spawn(move || {
                    handshake(&broker, &reader, channel);
                    done.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                pending.fetch_sub(1, Ordering::AcqRel);
                tracing::error!("cannot start a handshake thread: {e}");
            }
        }
    }
}

/// Runs one connector's handshake to the end.
fn handshake(broker: &Arc<Broker>, reader: &RequestReader, channel: OwnedFd) {
    let (pid, uid) = match getsockopt(&channel, sockopt::PeerCredentials) {
        Ok(cred) => (cred.pid(), cred.uid()),
        Err(e) => {
            tracing::warn!("refused a connector: no peer credentials: {e}");
            return;
        }
    };
    let hello = match read_hello(&channel) {
        Ok(hello) => hello,
        Err(why) => {
            tracing::warn!(pid, uid, "refused a connector: {why}");
            return;
        }
    };
    let answer = match IpcSender::<Welcome>::connect(hello.server_name.clone()) {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(
                pid,
                uid,
                "refused a connector: cannot reach its one-shot server: {e}"
            );
            return;
        }
    };
    let admitted =
        admit(broker, &hello, uid).and_then(|()| welcome(broker, reader, &answer, channel, pid));
    if let Err((kind, message)) = admitted {
        tracing::warn!(pid, uid, kind = %kind, "refused a patron: {message}");
        let _ = answer.send(Welcome::Refused {
            kind: kind.into(),
            message,
        });
    }
}

/// Reads the first datagram, which must be a complete hello, within the handshake timeout.
fn read_hello(channel: &OwnedFd) -> Result<Hello, String> {
    let timeout = TimeVal::new(HANDSHAKE_TIMEOUT.as_secs() as _, 0);
    setsockopt(channel, sockopt::ReceiveTimeout, &timeout).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; MAX_HELLO_BYTES];
    let len = match socket::receive(channel, &mut buffer, true).map_err(|e| e.to_string())? {
        Received::Datagram {
            len,
            descriptors,
            truncated: false,
        } => {
            if !descriptors.is_empty() {
                return Err(format!(
                    "a hello carries no descriptors, this one {}",
                    descriptors.len()
                ));
            }
            len
        }
        Received::Datagram { .. } => return Err("a first message too large for a hello".into()),
        Received::WouldBlock => {
            return Err(format!("no hello within {HANDSHAKE_TIMEOUT:?}"));
        }
        Received::Closed => return Err("closed without a hello".into()),
    };
    let payload = match wire::parse_datagram(&buffer[..len], 0, MAX_HELLO_BYTES) {
        Ok(Datagram::Complete(payload)) => payload,
        Ok(Datagram::First { .. }) => return Err("a fragmented hello".into()),
        Err(e) => return Err(format!("not a TIPC hello: {e}")),
    };
    match wire::decode(payload) {
        Ok(ToBroker::Hello(hello)) => Ok(hello),
        Ok(ToBroker::Request(_)) => Err("a request before the hello".into()),
        Err(e) => Err(format!("not a TIPC hello: {e}")),
    }
}

type Refusal = (&'static str, String);

fn admit(broker: &Broker, hello: &Hello, uid: u32) -> Result<(), Refusal> {
    let our_uid = nix::unistd::geteuid().as_raw();
    if uid != our_uid {
        return Err((
            "user",
            format!("this broker serves uid {our_uid} only; you are uid {uid}"),
        ));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err((
            "version",
            format!(
                "protocol version mismatch: the broker speaks TIPC {PROTOCOL_VERSION}, this patron {}; use matching builds",
                hello.version
            ),
        ));
    }
    if broker.is_stopping() {
        return Err(("stopping", "the broker is stopping".into()));
    }
    Ok(())
}

/// Registers the patron (which may still be refused: the patron limit is checked in the
/// same step), then tells it so and starts reading its requests.
fn welcome(
    broker: &Arc<Broker>,
    reader: &RequestReader,
    answer: &IpcSender<Welcome>,
    channel: OwnedFd,
    pid: i32,
) -> Result<(), Refusal> {
    let internal = |e: &dyn std::fmt::Display| ("internal", e.to_string());
    let (events_tx, events_rx) =
        ipc::channel::<Event>().map_err(|e| internal(&format!("cannot create a channel: {e}")))?;
    let patron_id = broker.next_patron_id();
    let outbox = Outbox::start(patron_id, events_tx)
        .map_err(|e| internal(&format!("cannot start a writer: {e}")))?;
    if let Err(message) = broker.add_patron(patron_id, pid, outbox.clone()) {
        outbox.close(); // ends its writer thread
        return Err(("limit", message));
    }
    let welcomed = answer.send(Welcome::Accepted {
        broker_pid: std::process::id(),
        patron_id,
        events: events_rx,
    });
    if let Err(e) = welcomed {
        broker.patron_gone(patron_id);
        return Err(internal(&format!("cannot send the welcome: {e}")));
    }
    if let Err(e) = reader.add(patron_id, channel) {
        broker.patron_gone(patron_id);
        return Err(internal(&e));
    }
    Ok(())
}
