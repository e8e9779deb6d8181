//! The few raw socket operations the broker needs for patrons' channels: a SOCK_SEQPACKET
//! listener (what `IpcSender::connect` connects to), receiving one datagram with its
//! descriptors, every descriptor owned at once so none can leak, and sending one datagram
//! without blocking.

use anyhow::Context;
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, recvmsg, send, socket, sockopt, AddressFamily, Backlog,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Most descriptors accepted with one datagram; more are a protocol error (the kernel closes
/// what does not fit).
const MAX_DESCRIPTORS: usize = 16;

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

/// A listening SOCK_SEQPACKET Unix socket at `path`.
pub fn seqpacket_listener(path: &Path) -> anyhow::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
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

/// Accepts one connection (blocking).
pub fn accept(listener: &OwnedFd) -> nix::Result<OwnedFd> {
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
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

/// Receives one datagram into `buffer`.
pub fn receive(fd: &OwnedFd, buffer: &mut [u8], blocking: bool) -> nix::Result<Received> {
    let mut iov = [IoSliceMut::new(buffer)];
    let mut space = nix::cmsg_space!([RawFd; MAX_DESCRIPTORS]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if !blocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let msg = match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), flags) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN) => return Ok(Received::WouldBlock),
        Err(nix::errno::Errno::EINTR) => return Ok(Received::WouldBlock),
        Err(e) => return Err(e),
    };
    let mut descriptors = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these descriptors for us just now; owning them
            // here guarantees they are closed whatever happens next.
            descriptors.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
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

/// The descriptor under an `IpcSender`, for non-blocking sends beside it.
///
/// ipc-channel has no accessor for it. Its `Debug` output names it
/// (`SharedFileDescriptor(N)`); the number is only trusted if it is a SOCK_SEQPACKET socket.
/// `None` means "use the sender's own (blocking) send" — slower, never wrong. A unit test
/// fails if an ipc-channel upgrade changes this.
pub fn ipc_sender_fd<T: serde::Serialize + std::fmt::Debug>(
    sender: &ipc_channel::ipc::IpcSender<T>,
) -> Option<RawFd> {
    const MARK: &str = "SharedFileDescriptor(";
    let debug = format!("{sender:?}");
    let start = debug.find(MARK)? + MARK.len();
    let end = start + debug[start..].find(')')?;
    let fd: RawFd = debug[start..end].parse().ok()?;
    // SAFETY: `sender` owns this descriptor and outlives the borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::SeqPacket) => Some(fd),
        _ => None,
    }
}

/// What a non-blocking send did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// The whole datagram is queued to the peer.
    Sent,
    /// It would have blocked (the peer's queue is full): nothing was sent.
    WouldBlock,
}

/// Sends one datagram without blocking. A datagram is all or nothing, so `WouldBlock` means
/// nothing left. The fd must stay open for the call (its owner outlives it).
pub fn send_nonblocking(fd: RawFd, datagram: &[u8]) -> nix::Result<Sent> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_EOR | MsgFlags::MSG_NOSIGNAL;
    match send(fd, datagram, flags) {
        Ok(n) if n == datagram.len() => Ok(Sent::Sent),
        // A datagram socket never sends part of one.
        Ok(_) => Err(nix::errno::Errno::EMSGSIZE),
        Err(nix::errno::Errno::EAGAIN) => Ok(Sent::WouldBlock),
        Err(e) => Err(e),
    }
}
