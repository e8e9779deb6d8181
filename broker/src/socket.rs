//! The few raw socket operations the broker needs for patrons' channels: a SOCK_SEQPACKET
//! listener (what `IpcSender::connect` connects to), receiving one datagram with its
//! descriptors, every descriptor owned at once so none can leak, connecting back to a
//! patron's one-shot server without ever blocking, and sending one datagram (with a
//! descriptor attached, when it carries a channel) without blocking.
//!
//! The broker never sends through ipc-channel: `IpcSender::send` blocks on a full socket, and
//! `IpcSender::connect` panics on a NUL in the name, leaks its socket when connect(2) fails
//! and blocks on a listener whose backlog is full (DESIGN §6, §10).

use anyhow::Context;
use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, socketpair, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Room for descriptors in one receive: the kernel's own limit per datagram (SCM_MAX_FD).
/// With less room a sender passing more gets `MSG_CTRUNC`, and nix's `cmsgs()` then errors
/// before the descriptors that did arrive are owned: they would leak (DESIGN §10). With room
/// for all of them, every one is owned and closed, and the caller refuses the datagram.
const SCM_MAX_FD: usize = 253;

/// What one receive produced.
pub enum Received {
    /// A datagram of `len` bytes (at the start of the buffer) and the descriptors it carried.
    Datagram {
        /// Its length.
        len: usize,
        /// Descriptors that came with it, now ours.
        descriptors: Vec<OwnedFd>,
        /// The datagram or its descriptors did not fit and were cut.
        truncated: bool,
    },
    /// Nothing to read now (non-blocking receive).
    WouldBlock,
    /// The peer closed its end.
    Closed,
}

/// A listening, non-blocking SOCK_SEQPACKET Unix socket at `path`.
pub fn seqpacket_listener(path: &Path) -> anyhow::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("cannot create the broker's socket")?;
    let addr =
        UnixAddr::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    bind(fd.as_raw_fd(), &addr).with_context(|| format!("cannot bind {}", path.display()))?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    Ok(fd)
}

/// Accepts one connection, non-blocking like the listener.
pub fn accept(listener: &OwnedFd) -> nix::Result<OwnedFd> {
    let fd = accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes a descriptor non-blocking.
pub fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Receives one datagram into `buffer`, without blocking.
pub fn receive(fd: &OwnedFd, buffer: &mut [u8]) -> nix::Result<Received> {
    let mut iov = [IoSliceMut::new(buffer)];
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let msg = match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), flags) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN) => return Ok(Received::WouldBlock),
        Err(nix::errno::Errno::EINTR) => return Ok(Received::WouldBlock),
        Err(e) => return Err(e),
    };
    let mut descriptors = Vec::new();
    // With room for SCM_MAX_FD descriptors nothing is cut, so this cannot fail; if it ever
    // did, the datagram is refused as cut.
    let Ok(cmsgs) = msg.cmsgs() else {
        return Ok(Received::Datagram {
            len: msg.bytes,
            descriptors,
            truncated: true,
        });
    };
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // The kernel installed this descriptor for us just now; owning it here closes
                // it exactly once, whatever comes next.
                // SAFETY: `fd` is open, and nothing else in this process owns it.
                descriptors.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    if msg.bytes == 0 && descriptors.is_empty() && !truncated {
        return Ok(Received::Closed);
    }
    Ok(Received::Datagram {
        len: msg.bytes,
        descriptors,
        truncated,
    })
}

/// What a non-blocking send did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// The whole datagram is queued to the peer.
    Sent,
    /// It would have blocked (the peer's queue is full): nothing was sent.
    WouldBlock,
}

/// Sends one datagram without blocking, with `attach` passed along (SCM_RIGHTS) if given. A
/// datagram is all or nothing, so `WouldBlock` means nothing left.
pub fn send_nonblocking(
    fd: BorrowedFd<'_>,
    datagram: &[u8],
    attach: Option<BorrowedFd<'_>>,
) -> nix::Result<Sent> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_EOR | MsgFlags::MSG_NOSIGNAL;
    let raw = attach.map(|a| [a.as_raw_fd()]);
    let rights = raw.as_ref().map(|r| [ControlMessage::ScmRights(r)]);
    let cmsgs: &[ControlMessage] = rights.as_ref().map_or(&[], |r| r);
    let iov = [IoSlice::new(datagram)];
    match sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, flags, None) {
        Ok(n) if n == datagram.len() => Ok(Sent::Sent),
        // A datagram socket never sends part of one.
        Ok(_) => Err(nix::errno::Errno::EMSGSIZE),
        Err(nix::errno::Errno::EAGAIN) => Ok(Sent::WouldBlock),
        Err(e) => Err(e),
    }
}

/// Copies out the shared memory region a patron passed with a large message (see
/// [`proto::SharedBytes`]), if it is one: memory (a memfd or tmpfs file, which `F_GET_SEALS`
/// accepts and nothing else does, so reading never waits on a disk or a FUSE daemon) of at
/// most `max` bytes. It is read, never mapped: the patron could shrink it under a mapping.
pub fn read_region(fd: &OwnedFd, max: usize) -> Result<Vec<u8>, String> {
    let size = region_size(fd, max)?;
    let mut bytes = vec![0u8; size];
    let mut read = 0;
    while read < size {
        match nix::sys::uio::pread(fd, &mut bytes[read..], read as libc::off_t) {
            Ok(0) => return Err("a shared memory region shrank while it was read".into()),
            Ok(n) => read += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("cannot read a shared memory region: {e}")),
        }
    }
    Ok(bytes)
}

/// The size of a large message's region, if it is one: memory (see [`read_region`]), larger
/// than a message needs to be to come this way, and no larger than `max`.
pub fn region_size(fd: &OwnedFd, max: usize) -> Result<usize, String> {
    use nix::fcntl::{fcntl, FcntlArg};
    if fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).is_err() {
        return Err("a shared memory region that is not memory (not a memfd)".into());
    }
    let size = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| format!("cannot look at a shared memory region: {e}"))?
        .st_size;
    let size = usize::try_from(size).map_err(|_| "a region of negative size".to_owned())?;
    if size > max {
        return Err(format!(
            "a message of {size} bytes exceeds the limit of {max}"
        ));
    }
    if size <= proto::LARGE_MESSAGE_BYTES {
        return Err(format!(
            "a message of {size} bytes is not large: it must come in the datagram"
        ));
    }
    Ok(size)
}

/// A connected pair of SOCK_SEQPACKET sockets, as `ipc::channel()` makes: the broker keeps
/// one end (non-blocking) to write to and passes the other to a patron as a receiver.
pub fn seqpacket_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    set_nonblocking(&ours)?;
    Ok((ours, theirs))
}

/// Connects to the SOCK_SEQPACKET listener at `path` without blocking: a listener whose
/// backlog is full answers `EAGAIN` at once instead of stalling the broker.
pub fn connect_nonblocking(path: &Path) -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Whether the patron has read everything sent on `socket` (its send queue is empty).
pub fn drained(socket: &OwnedFd) -> bool {
    let mut queued: libc::c_int = 0;
    // TIOCOUTQ (SIOCOUTQ) writes one c_int: the bytes still queued on the socket.
    // SAFETY: `queued` is a live c_int for the call; `socket` is an open socket we own.
    let done = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::TIOCOUTQ,
            &mut queued,
        )
    };
    done == 0 && queued == 0
}
