//! Accept → handshake: how a patron becomes connected.
//!
//! ipc-channel's one-shot server accepts exactly one client and blocks without a timeout,
//! so it cannot be the broker's front door. The front door is a SOCK_SEQPACKET Unix socket in
//! an owner-only folder, which is exactly what `IpcSender::connect` connects to: each accepted
//! connection *is* a patron's request channel. One thread ("front-door") accepts and
//! handshakes every connector with epoll, never blocking on any of them:
//!
//! 1. on accept, the peer's uid (`SO_PEERCRED`) must be ours, else the connection is closed;
//! 2. its first datagram must be a [`Hello`] (checked like every datagram, every descriptor
//!    owned and closed), within [`HANDSHAKE_TIMEOUT`];
//! 3. the hello's server name must look like a one-shot server of our user: an absolute path
//!    without NUL, short enough for a socket address, that is a socket we own. Only then is
//!    it connected to, without blocking (a listener with a full backlog is refused at once),
//!    and the server must belong to our uid;
//! 4. the answer is written by the broker itself, without ipc-channel (whose `connect` panics
//!    on a NUL, leaks a socket on a failed connect and blocks on a full backlog):
//!    [`Welcome::Refused`] with the reason, or [`Welcome::Accepted`] carrying the receiving
//!    end of a socket pair the broker made for the patron's events;
//! 5. the patron is registered and its channel handed to the request reader.
//!
//! A connector is in the pending table from accept to the end of step 2 and leaves it however
//! its handshake ends. When the table is full the oldest pending connector is dropped, so a
//! flood of silent connectors cannot keep an honest patron (who says hello at once) out.

use crate::dispatch::Dispatcher;
use crate::patron::Outbox;
use crate::requests::RequestReader;
use crate::socket::{self, Received};
use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use proto::wire::{self, Datagram, WelcomeFrame};
use proto::{BoardAnswer, BoardHello, Hello, ToBroker, PROTOCOL_VERSION};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connector may take to say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connectors waiting to say hello; past this the oldest is dropped to make room.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// A hello is small; anything bigger is not one.
const MAX_HELLO_BYTES: usize = 8 * 1024;
/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Connections accepted in one go before pending hellos get their turn.
const ACCEPT_BATCH: usize = 256;
const LISTENER: u64 = u64::MAX;

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

    /// Accepts and handshakes patrons on a thread of its own until the broker stops.
    pub fn start(self, dispatcher: Arc<Dispatcher>, reader: RequestReader) -> anyhow::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
        epoll
            .add(
                &self.listener,
                EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
            )
            .context("epoll add")?;
        let door = FrontDoor {
            rendezvous: self,
            epoll,
            dispatcher,
            reader,
            our_uid: nix::unistd::geteuid().as_raw(),
            pending: HashMap::new(),
            arrivals: VecDeque::new(),
            next_token: 0,
        };
        std::thread::Builder::new()
            .name("front-door".into())
            .spawn(move || door.run())?;
        Ok(())
    }
}

/// A connector that has not said hello yet.
struct Pending {
    channel: OwnedFd,
    pid: i32,
    deadline: Instant,
}

struct FrontDoor {
    rendezvous: Rendezvous,
    epoll: Epoll,
    dispatcher: Arc<Dispatcher>,
    reader: RequestReader,
    our_uid: u32,
    pending: HashMap<u64, Pending>,
    /// Pending tokens in arrival order (some may have left already).
    arrivals: VecDeque<u64>,
    next_token: u64,
}

impl FrontDoor {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            // After this the oldest arrival, if any, is still pending: the wait is cheap to
            // compute however many connectors came and went.
            self.expire();
            let timeout = self
                .arrivals
                .front()
                .and_then(|token| self.pending.get(token))
                .map(|first| {
                    let left = first.deadline.saturating_duration_since(Instant::now());
                    EpollTimeout::try_from(left.max(Duration::from_millis(1)))
                        .unwrap_or(EpollTimeout::NONE)
                })
                .unwrap_or(EpollTimeout::NONE);
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    self.dispatcher
                        .service()
                        .shutdown
                        .trigger(format!("the front door failed: {e}"));
                    return;
                }
            };
            if self.dispatcher.service().is_stopping() {
                return; // dropping everything pending closes it
            }
            for event in &events[..ready] {
                match event.data() {
                    LISTENER => self.accept_batch(),
                    token => self.hear(token),
                }
            }
            // Arrivals answered at once leave stale tokens behind a slow one; keep the queue
            // in proportion to what is really pending.
            if self.arrivals.len() > 2 * self.pending.len() + ACCEPT_BATCH {
                let pending = &self.pending;
                self.arrivals.retain(|token| pending.contains_key(token));
            }
        }
    }

    fn accept_batch(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let channel = match socket::accept(&self.rendezvous.listener) {
                Ok(channel) => channel,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept on {} failed: {e}", self.rendezvous.path.display());
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
            };
            // Cheap checks first: another user's connector gets nothing from us.
            let (pid, uid) = match getsockopt(&channel, sockopt::PeerCredentials) {
                Ok(cred) => (cred.pid(), cred.uid()),
                Err(e) => {
                    tracing::warn!("refused a connector: no peer credentials: {e}");
                    continue;
                }
            };
            if uid != self.our_uid {
                tracing::warn!(
                    pid,
                    uid,
                    "refused a connector: this broker serves uid {} only",
                    self.our_uid
                );
                continue;
            }
            self.make_room();
            let token = self.next_token;
            self.next_token += 1;
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if let Err(e) = self.epoll.add(&channel, EpollEvent::new(flags, token)) {
                tracing::warn!(pid, "refused a connector: cannot watch it: {e}");
                continue;
            }
            self.pending.insert(
                token,
                Pending {
                    channel,
                    pid,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
            self.arrivals.push_back(token);
        }
    }

    /// Drops the oldest pending connectors while the table is full.
    fn make_room(&mut self) {
        while self.pending.len() >= MAX_PENDING_HANDSHAKES {
            let Some(token) = self.arrivals.pop_front() else {
                return;
            };
            if let Some(oldest) = self.pending.remove(&token) {
                tracing::warn!(
                    pid = oldest.pid,
                    "dropped a connector that had not said hello: {MAX_PENDING_HANDSHAKES} are waiting"
                );
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(token) = self.arrivals.front().copied() {
            match self.pending.get(&token) {
                None => {
                    self.arrivals.pop_front();
                }
                Some(p) if p.deadline <= now => {
                    self.arrivals.pop_front();
                    if let Some(p) = self.pending.remove(&token) {
                        tracing::warn!(
                            pid = p.pid,
                            "refused a connector: no hello within {HANDSHAKE_TIMEOUT:?}"
                        );
                    }
                }
                Some(_) => return,
            }
        }
    }

    /// A pending connector's socket is readable: its hello (or its end).
    fn hear(&mut self, token: u64) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let (hello, mut descriptors) = match read_hello(&pending.channel) {
            Ok(Some(hello)) => hello,
            Ok(None) => {
                // Woken with nothing to read: keep waiting, same deadline.
                self.pending.insert(token, pending);
                return;
            }
            Err(why) => {
                tracing::warn!(pid = pending.pid, "refused a connector: {why}");
                return;
            }
        };
        let _ = self.epoll.delete(&pending.channel);
        let Pending { channel, pid, .. } = pending;
        let hello = match hello {
            First::Hello(hello) => hello,
            First::Board(board) => {
                let waker = descriptors.pop();
                return grant_board(&self.dispatcher, channel, pid, &board, waker);
            }
        };
        // Whatever happens inside, this connector's slot is already free; a panic costs it
        // alone its answer.
        let (dispatcher, reader, our_uid) = (&self.dispatcher, &self.reader, self.our_uid);
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer(dispatcher, reader, channel, pid, our_uid, &hello)
        }));
        if answered.is_err() {
            tracing::error!(pid, "a handshake panicked; the connector was dropped");
        }
    }
}

/// What a connector's first datagram asks for.
#[derive(Debug)]
pub enum First {
    /// To become a patron.
    Hello(Hello),
    /// The status board's descriptor, on this connection, which then closes.
    Board(BoardHello),
}

/// Reads the first datagram, which must be a complete hello, and the descriptors it carried
/// (a board request's waker). `None`: nothing to read yet.
fn read_hello(channel: &OwnedFd) -> Result<Option<(First, Vec<OwnedFd>)>, String> {
    let mut buffer = vec![0u8; MAX_HELLO_BYTES];
    match socket::receive(channel, &mut buffer).map_err(|e| e.to_string())? {
        Received::Datagram {
            len,
            descriptors,
            truncated,
        } => parse_hello(&buffer[..len], descriptors.len(), truncated)
            .map(|first| Some((first, descriptors))),
        Received::WouldBlock => Ok(None),
        Received::Closed => Err("closed without a hello".into()),
    }
}

/// Checks a connector's first datagram (`descriptors` came with it; `truncated` if it did
/// not fit [`MAX_HELLO_BYTES`]) and decodes the hello in it.
pub fn parse_hello(datagram: &[u8], descriptors: usize, truncated: bool) -> Result<First, String> {
    if truncated {
        return Err(format!(
            "a first message too large for a hello ({descriptors} descriptors)"
        ));
    }
    // A board request may carry one: the eventfd that wakes its reader.
    if descriptors > 1 {
        return Err(format!(
            "a hello carries at most one descriptor, this one {descriptors}"
        ));
    }
    let payload = match wire::parse_datagram(datagram, 0, MAX_HELLO_BYTES) {
        Ok(Datagram::Complete(payload)) => payload,
        Ok(Datagram::First { .. }) => return Err("a fragmented hello".into()),
        Err(e) => return Err(format!("not a TIPC hello: {e}")),
    };
    match wire::decode(payload) {
        Ok(ToBroker::Hello(_)) if descriptors != 0 => Err(format!(
            "a hello carries no descriptors, this one {descriptors}"
        )),
        Ok(ToBroker::Hello(hello)) => Ok(First::Hello(hello)),
        Ok(ToBroker::Board(board)) => Ok(First::Board(board)),
        Ok(ToBroker::Request(_) | ToBroker::Large(_)) => Err("a request before the hello".into()),
        Err(e) => Err(format!("not a TIPC hello: {e}")),
    }
}

/// Checks that `name` can be a one-shot server of `our_uid` without touching it beyond an
/// `lstat`: an absolute path, no NUL, short enough, a socket (not a symlink to one) we own.
pub fn check_server_name(name: &str, our_uid: u32) -> Result<PathBuf, String> {
    if name.contains('\0') {
        return Err("its server name holds a NUL".into());
    }
    if name.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "its server name is {} bytes, longer than a socket address holds",
            name.len()
        ));
    }
    let path = Path::new(name);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "its server name {name:?} is not an absolute path without `..`"
        ));
    }
    // ipc-channel names its one-shot servers `<temp dir>/.tmpXXXXXX/socket`, in a folder of
    // the patron's own. Only that shape is looked at: a name elsewhere (a network or
    // FUSE mount, where even an lstat can hang) is refused before the filesystem is touched.
    let folder = path.parent().unwrap_or(Path::new("/"));
    let shaped = path.file_name().is_some_and(|n| n == "socket")
        && folder
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".tmp"));
    if !shaped {
        return Err(format!(
            "its server name {name:?} is not an ipc-channel one-shot server (…/.tmpXXXXXX/socket)"
        ));
    }
    // Nor is a name on a filesystem whose lstat can hang (FUSE, network, automount): which
    // one it is on is read from the mount table, without touching the path.
    if let Some(fstype) = remote_or_fuse_mount(folder) {
        return Err(format!(
            "its server {name:?} is on a {fstype} filesystem; one-shot servers must be local"
        ));
    }
    let folder_meta =
        std::fs::symlink_metadata(folder).map_err(|e| format!("its server {name:?}: {e}"))?;
    // Owned by our user and not writable by everyone (tempfile makes it 0777 less the umask:
    // 0755, or 0775 under the common umask 002 with per-user groups).
    if !folder_meta.is_dir() || folder_meta.uid() != our_uid || folder_meta.mode() & 0o002 != 0 {
        return Err(format!(
            "its server {name:?} is not in a folder of this broker's user that others cannot write"
        ));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("its server {name:?}: {e}"))?;
    if !meta.file_type().is_socket() {
        return Err(format!("its server {name:?} is not a socket"));
    }
    if meta.uid() != our_uid {
        return Err(format!(
            "its server {name:?} belongs to uid {}, not to this broker's user",
            meta.uid()
        ));
    }
    Ok(path.to_path_buf())
}

/// The type of the filesystem `path` lies on, if it is one where a stat can block for good
/// (FUSE, network filesystems, automount points), from `/proc/self/mountinfo`.
fn remote_or_fuse_mount(path: &Path) -> Option<String> {
    const HANGING: [&str; 12] = [
        "fuse",
        "fuseblk",
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "autofs",
        "9p",
        "ceph",
        "glusterfs",
        "afs",
    ];
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type_if_hanging(&table, path, &HANGING)
}

fn mount_type_if_hanging(table: &str, path: &Path, hanging: &[&str]) -> Option<String> {
    // The mount whose point is the longest prefix of `path` holds it.
    let mut best: Option<(usize, String)> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else {
            continue;
        };
        let point = point.replace("\\040", " ").replace("\\011", "\t");
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), (*fstype).to_owned()));
        }
    }
    let (_, fstype) = best?;
    let family = fstype.split('.').next().unwrap_or_default();
    hanging.contains(&family).then_some(fstype)
}

type Refusal = (&'static str, String);

/// Answers a connector that said hello: refused with the reason, or welcomed and registered.
fn answer(
    dispatcher: &Arc<Dispatcher>,
    reader: &RequestReader,
    channel: OwnedFd,
    pid: i32,
    our_uid: u32,
    hello: &Hello,
) {
    let server = match check_server_name(&hello.server_name, our_uid) {
        Ok(server) => server,
        Err(why) => {
            tracing::warn!(pid, "refused a connector: {why}");
            return;
        }
    };
    let reply = match socket::connect_nonblocking(&server) {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(
                pid,
                "refused a connector: cannot reach its one-shot server {}: {e}",
                server.display()
            );
            return;
        }
    };
    match getsockopt(&reply, sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == our_uid => {}
        Ok(cred) => {
            tracing::warn!(
                pid,
                "refused a connector: its one-shot server runs as uid {}",
                cred.uid()
            );
            return;
        }
        Err(e) => {
            tracing::warn!(pid, "refused a connector: its one-shot server: {e}");
            return;
        }
    }
    let admitted =
        admit(dispatcher, hello).and_then(|()| welcome(dispatcher, reader, &reply, channel, pid));
    if let Err((kind, message)) = admitted {
        tracing::warn!(pid, kind = %kind, "refused a patron: {message}");
        let refused = WelcomeFrame::Refused {
            kind,
            message: &message,
        };
        if let Ok(frames) = wire::encode_frames(&refused) {
            if !frames.is_fragmented() {
                let _ = socket::send_nonblocking(reply.as_fd(), &frames.first, None);
            }
        }
    }
}

/// Answers a board request on its own connection: the board's read-only descriptor, or why
/// not. A request that brought an eventfd (`waker`) keeps its connection open, and that
/// eventfd is written at every wake until the reader closes it; any other connection closes.
/// Nothing here waits on the connector.
fn grant_board(
    dispatcher: &Dispatcher,
    channel: OwnedFd,
    pid: i32,
    hello: &BoardHello,
    waker: Option<OwnedFd>,
) {
    let service = dispatcher.service();
    let refused = |kind: &str, message: String| {
        tracing::warn!(pid, kind = %kind, "refused a board reader: {message}");
        let answer = BoardAnswer::Refused {
            kind: kind.to_owned(),
            message,
        };
        (answer, None)
    };
    let (answer, board) = if hello.version != PROTOCOL_VERSION {
        refused(
            "version",
            format!(
                "protocol version mismatch: the broker speaks TIPC {PROTOCOL_VERSION}, this patron {}; use matching builds",
                hello.version
            ),
        )
    } else if service.is_stopping() {
        refused("stopping", "the broker is stopping".into())
    } else {
        match service.board.reader_fd() {
            Ok(fd) => (
                BoardAnswer::Granted {
                    broker_pid: std::process::id(),
                    waker: waker
                        .as_ref()
                        .is_some_and(|w| service.board.can_take_waiter(w)),
                },
                Some(fd),
            ),
            Err(e) => refused("internal", format!("cannot share the status board: {e}")),
        }
    };
    let sent = wire::encode_frames(&answer)
        .map_err(|e| e.to_string())
        .and_then(|frames| {
            let attach = board.as_ref().map(|fd| fd.as_fd());
            socket::send_nonblocking(channel.as_fd(), &frames.first, attach)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = sent {
        tracing::debug!(pid, "cannot answer a board reader: {e}");
        return;
    }
    if let (BoardAnswer::Granted { waker: true, .. }, Some(waker)) = (&answer, waker) {
        service.board.add_waiter(channel, waker);
    }
}

fn admit(dispatcher: &Dispatcher, hello: &Hello) -> Result<(), Refusal> {
    if hello.version != PROTOCOL_VERSION {
        return Err((
            "version",
            format!(
                "protocol version mismatch: the broker speaks TIPC {PROTOCOL_VERSION}, this patron {}; use matching builds",
                hello.version
            ),
        ));
    }
    if dispatcher.service().is_stopping() {
        return Err(("stopping", "the broker is stopping".into()));
    }
    Ok(())
}

/// Registers the patron (which may still be refused: the patron limit is checked in the
/// same step), then tells it so, handing it its event channel, and starts reading its
/// requests.
fn welcome(
    dispatcher: &Arc<Dispatcher>,
    reader: &RequestReader,
    reply: &OwnedFd,
    channel: OwnedFd,
    pid: i32,
) -> Result<(), Refusal> {
    let internal = |e: &dyn std::fmt::Display| ("internal", e.to_string());
    let (ours, theirs) =
        socket::seqpacket_pair().map_err(|e| internal(&format!("cannot create a channel: {e}")))?;
    let patron_id = dispatcher.next_patron_id();
    let outbox = Outbox::new(
        patron_id,
        ours,
        Some(reader.watch_writable(patron_id)),
        Some(reader.gone_hook()),
        dispatcher.unread().clone(),
    );
    dispatcher
        .add_patron(patron_id, pid, outbox)
        .map_err(|message| ("limit", message))?;
    let accepted = WelcomeFrame::Accepted {
        broker_pid: std::process::id(),
        patron_id,
        events: 0,
    };
    let sent = wire::encode_frames(&accepted)
        .map_err(|e| e.to_string())
        .and_then(|frames| {
            socket::send_nonblocking(reply.as_fd(), &frames.first, Some(theirs.as_fd()))
                .map_err(|e| e.to_string())
        });
    match sent {
        Ok(socket::Sent::Sent) => {}
        Ok(socket::Sent::WouldBlock) => {
            dispatcher.patron_gone(patron_id);
            return Err(internal(&"its one-shot server does not read"));
        }
        Err(e) => {
            dispatcher.patron_gone(patron_id);
            return Err(internal(&format!("cannot send the welcome: {e}")));
        }
    }
    if let Err(e) = reader.add(patron_id, channel) {
        dispatcher.patron_gone(patron_id);
        return Err(internal(&e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked_before_any_connect() {
        let uid = nix::unistd::geteuid().as_raw();
        assert!(check_server_name("/tmp/a\0b", uid)
            .unwrap_err()
            .contains("NUL"));
        assert!(check_server_name("relative/socket", uid).is_err());
        assert!(check_server_name("/tmp/../etc/x", uid).is_err());
        assert!(check_server_name(&format!("/{}", "a".repeat(200)), uid).is_err());
        assert!(check_server_name("/nonexistent/.tmpabc/socket", uid).is_err());
        // Only ipc-channel's shape is looked at.
        assert!(check_server_name("/proc/self/status", uid)
            .unwrap_err()
            .contains("not an ipc-channel one-shot server"));
        assert!(check_server_name("/tmp/.tmpx/other", uid).is_err());
        // /proc is not refused as remote; the mount table is read without touching paths.
        assert_eq!(remote_or_fuse_mount(Path::new("/proc/self")), None);
        let table = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                     30 22 0:40 / /tmp rw - tmpfs tmpfs rw\n\
                     31 30 0:41 / /tmp/fs rw - fuse.sshfs host: rw\n\
                     32 22 0:42 / /net rw - autofs auto rw\n";
        let hanging = ["fuse", "autofs"];
        let at = |p: &str| mount_type_if_hanging(table, Path::new(p), &hanging);
        assert_eq!(at("/tmp/.tmpab/socket"), None);
        assert_eq!(at("/tmp/fs/.tmpab/socket").as_deref(), Some("fuse.sshfs"));
        assert_eq!(at("/net/host/.tmpab/socket").as_deref(), Some("autofs"));
        assert_eq!(at("/home/u/.tmpab/socket"), None);
        // A real one-shot server passes; another uid's would not.
        let (_server, name) = ipc_channel::ipc::IpcOneShotServer::<proto::Welcome>::new().unwrap();
        assert!(check_server_name(&name, uid).is_ok());
        assert!(check_server_name(&name, uid.wrapping_add(1))
            .unwrap_err()
            .contains("this broker's user"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// A server name as a hostile hello might carry it.
    fn server_name() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,120}",
            "(/[a-z.]{0,6}){0,4}/\\.tmp[a-zA-Z0-9]{0,6}/socket",
            "/tmp/\\.tmp[a-z]{0,3}\\x00?/socket[a-z]{0,2}",
            Just("/tmp/.tmp/../socket".to_owned()),
            Just("/tmp/a\0b/socket".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::fuzz_cases(), ..ProptestConfig::default() })]

        // The whole hello path short of the connect-back: any first datagram, then its name.
        #[test]
        fn no_hello_makes_the_front_door_panic(
            version in any::<u32>(),
            name in server_name(),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<usize>(),
            descriptors in 0usize..3,
            truncated in any::<bool>(),
        ) {
            let hello = ToBroker::Hello(Hello { version, server_name: name.clone() });
            let mut datagram = wire::encode_frames(&hello).expect("encodes").first;
            // Sometimes honest, sometimes cut or with noise appended (the header then lies).
            match cut % 3 {
                0 => {}
                1 => datagram.truncate(cut % (datagram.len() + 1)),
                _ => datagram.extend_from_slice(&noise),
            }
            if let Ok(First::Hello(hello)) = parse_hello(&datagram, descriptors, truncated) {
                let _ = check_server_name(&hello.server_name, 0);
            }
            let _ = parse_hello(&noise, 0, false);
            let _ = check_server_name(&name, nix::unistd::geteuid().as_raw());
        }
    }
}
