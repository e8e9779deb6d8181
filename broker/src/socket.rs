//! The few raw socket operations the broker needs for patrons' channels: a SOCK_SEQPACKET
//! listener (what `IpcSender::connect` connects to) and receiving one datagram with its
//! descriptors, every descriptor owned at once so none can leak.

use anyhow::Context;
use nix::sys::socket::{
    accept4, bind, listen, recvmsg, socket, AddressFamily, Backlog, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
