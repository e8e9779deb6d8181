//! Accept → handshake: how a patron becomes connected.
//!
//! ipc-channel's one-shot server accepts exactly one client and blocks without a timeout,
//! so it cannot be the broker's front door. The front door is a Unix socket in an
//! owner-only folder; each connection is handled on a short-lived thread of its own (a
//! stalled connector only ever stalls its own thread, and only for [`HANDSHAKE_TIMEOUT`]):
//!
//! 1. check the peer's uid (`SO_PEERCRED`) against our own;
//! 2. read one bounded [`Hello`] line and check its protocol version;
//! 3. create the patron's two channels and send the [`Welcome`] through the patron's
//!    one-shot server;
//! 4. register the patron, start reading its requests, and answer `OK` on the socket.
//!
//! Every refusal is answered with an `ERR` line the patron shows to its user, and logged.

use crate::broker::Broker;
use crate::patron::Outbox;
use crate::requests::RequestReader;
use anyhow::Context;
use ipc_channel::ipc::{self, IpcSender};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use proto::{Event, Hello, HelloReply, Request, Welcome, MAX_HELLO_LINE, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a connector may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more connectors are refused at once, not queued.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
const HANDSHAKE_STACK_BYTES: usize = 256 * 1024;

/// The broker's listening Unix socket.
pub struct Rendezvous {
    listener: UnixListener,
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
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
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
        for stream in self.listener.incoming() {
            if broker.is_stopping() {
                break;
            }
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept on {} failed: {e}", self.path.display());
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HANDSHAKES {
                pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("refused a connector: too many handshakes in progress");
                refuse(
                    &mut stream,
                    "limit",
                    "too many patrons connecting at once; retry",
                );
                continue;
            }
            let (broker, reader, pending) = (broker.clone(), reader.clone(), pending.clone());
            let spawned = std::thread::Builder::new()
                .name("handshake".into())
                .stack_size(HANDSHAKE_STACK_BYTES)
                .spawn(move || {
                    handshake(&broker, &reader, stream);
                    pending.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a handshake thread: {e}");
            }
        }
    }
}

fn refuse(stream: &mut UnixStream, kind: &str, message: &str) {
    let line = HelloReply::Refused {
        kind: kind.into(),
        message: message.into(),
    }
    .to_line();
    let _ = stream.write_all(line.as_bytes());
}

/// Runs one connector's handshake to the end, answering on the socket either way.
fn handshake(broker: &Arc<Broker>, reader: &RequestReader, mut stream: UnixStream) {
    let (pid, uid) = match getsockopt(&stream, PeerCredentials) {
        Ok(cred) => (cred.pid(), cred.uid()),
        Err(e) => {
            tracing::warn!("refused a connector: no peer credentials: {e}");
            refuse(&mut stream, "internal", "cannot read peer credentials");
            return;
        }
    };
    if let Err((kind, message)) = admit(broker, reader, &mut stream, pid, uid) {
        tracing::warn!(pid, uid, kind, "refused a connector: {message}");
        refuse(&mut stream, kind, &message);
    }
}

type Refusal = (&'static str, String);

fn admit(
    broker: &Arc<Broker>,
    reader: &RequestReader,
    stream: &mut UnixStream,
    pid: i32,
    uid: u32,
) -> Result<(), Refusal> {
    let our_uid = nix::unistd::geteuid().as_raw();
    if uid != our_uid {
        return Err((
            "user",
            format!("this broker serves uid {our_uid} only; you are uid {uid}"),
        ));
    }
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut line = Vec::with_capacity(256);
    let read = BufReader::new(&mut *stream)
        .take(MAX_HELLO_LINE as u64)
        .read_until(b'\n', &mut line);
    match read {
        Ok(_) if line.ends_with(b"\n") => {}
        Ok(_) => return Err(("bad-hello", "no complete hello line".into())),
        Err(e) => return Err(("bad-hello", format!("no hello: {e}"))),
    }
    let hello = Hello::parse(&line).map_err(|e| ("bad-hello", e.to_string()))?;
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
    if broker.patron_count() >= broker.config.max_patrons {
        return Err((
            "limit",
            format!(
                "the broker already serves its maximum of {} patrons",
                broker.config.max_patrons
            ),
        ));
    }

    let internal = |e: std::io::Error| ("internal", format!("cannot create channels: {e}"));
    let (requests_tx, requests_rx) = ipc::channel::<Request>().map_err(internal)?;
    let (events_tx, events_rx) = ipc::channel::<Event>().map_err(internal)?;
    let patron_id = broker.next_patron_id();
    let welcome_tx = IpcSender::<Welcome>::connect(hello.server_name.clone()).map_err(|e| {
        (
            "bad-hello",
            format!("cannot reach your one-shot server: {e}"),
        )
    })?;
    welcome_tx
        .send(Welcome {
            broker_pid: std::process::id(),
            patron_id,
            requests: requests_tx,
            events: events_rx,
        })
        .map_err(|e| ("bad-hello", format!("cannot send the welcome: {e}")))?;

    let outbox = Outbox::start(patron_id, events_tx).map_err(internal)?;
    broker.add_patron(patron_id, pid, outbox);
    if let Err(e) = reader.add(patron_id, requests_rx) {
        broker.patron_gone(patron_id);
        return Err(("internal", e.to_string()));
    }
    let accepted = HelloReply::Accepted {
        broker_pid: std::process::id(),
        patron_id,
    };
    // If the patron vanished meanwhile, its closed channel will tell the reader.
    let _ = stream.write_all(accepted.to_line().as_bytes());
    Ok(())
}
