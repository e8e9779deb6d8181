//! The broker's reading of what patrons send: ipc-channel's datagram format, checked.
//!
//! Patrons send with ipc-channel's own `IpcSender` (connected to the broker's socket with
//! `IpcSender::connect`). The broker does not receive with ipc-channel, because its receive
//! path trusts the sender: it reserves whatever total size the header declares (an abort,
//! not a panic, when that exceeds memory), unwraps the continuation channel a fragmented
//! message must carry, and blocks until every fragment has arrived. One hostile patron could
//! kill or stall the broker that way. Instead the broker reads datagrams itself and hands
//! them to [`parse_datagram`] and [`decode`], which check every field first and never panic.
//!
//! The format (ipc-channel 0.23, Unix): each message starts with a datagram
//! `[fragment size: usize][total size: usize][payload]`, both sizes in native byte order and
//! the fragment size counting the whole datagram. When the payload is the whole message the
//! datagram carries only the message's own descriptors; otherwise it also carries, last, the
//! receiving end of a channel on which the rest of the payload follows as plain datagrams.
//! The payload is postcard, as `IpcSender::send` writes it. A [`ToBroker`] holds no channels,
//! and shared memory only as [`ToBroker::Large`] (one region, see [`crate::SharedBytes`]), so
//! a complete message may carry at most one descriptor, and only a large one may carry any.

use crate::ToBroker;
use std::fmt;

/// Bytes of the header that starts each message's first datagram.
pub const HEADER_BYTES: usize = 2 * std::mem::size_of::<usize>();

/// What one datagram of a patron holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A whole message's payload.
    Complete(&'a [u8]),
    /// The start of a message of `total` payload bytes; the rest follows on the
    /// continuation channel that came with this datagram.
    First {
        /// The payload bytes in this datagram.
        payload: &'a [u8],
        /// The whole message's payload size.
        total: usize,
    },
}

/// Why a datagram or message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn read_usize(bytes: &[u8]) -> usize {
    const WORD: usize = std::mem::size_of::<usize>();
    let mut word = [0u8; WORD];
    word.copy_from_slice(&bytes[..WORD]);
    usize::from_ne_bytes(word)
}

/// Checks the first datagram of a message. `descriptors` is how many file descriptors came
/// with it; `max_total` the largest message accepted.
pub fn parse_datagram(
    bytes: &[u8],
    descriptors: usize,
    max_total: usize,
) -> Result<Datagram<'_>, WireError> {
    if bytes.len() < HEADER_BYTES {
        return Err(WireError(format!(
            "a datagram of {} bytes is shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    let fragment = read_usize(bytes);
    let total = read_usize(&bytes[HEADER_BYTES / 2..]);
    if fragment != bytes.len() {
        return Err(WireError(format!(
            "the header claims a {fragment}-byte datagram, but {} bytes came",
            bytes.len()
        )));
    }
    if total > max_total {
        return Err(WireError(format!(
            "a message of {total} bytes exceeds the limit of {max_total}"
        )));
    }
    let payload = &bytes[HEADER_BYTES..];
    if total == payload.len() {
        // A large message's region (see `crate::SharedBytes`); never a channel.
        if descriptors > 1 {
            return Err(WireError(format!(
                "a request carries at most one shared memory region, but this one carried {descriptors} descriptors"
            )));
        }
        Ok(Datagram::Complete(payload))
    } else if total > payload.len() {
        if descriptors != 1 {
            return Err(WireError(format!(
                "a fragmented message must carry exactly its continuation channel, but carried {descriptors} descriptors"
            )));
        }
        Ok(Datagram::First { payload, total })
    } else {
        Err(WireError(format!(
            "the header claims a {total}-byte message, but the datagram alone holds {}",
            payload.len()
        )))
    }
}

/// Payload bytes the broker puts in one datagram. ipc-channel's receiver takes datagrams up
/// to its maximum fragment size (the system's socket send buffer less a reserve, ~170 KiB by
/// default); staying far below it keeps every datagram readable whatever that size is.
pub const MAX_DATAGRAM_PAYLOAD: usize = 32 * 1024;

/// A message ready to be written to an ipc-channel receiver, datagram by datagram.
#[derive(Debug)]
pub struct Frames {
    /// The first datagram: header and the start of the payload.
    pub first: Vec<u8>,
    /// The rest of the payload, if it did not fit the first datagram. It goes, in datagrams
    /// of at most [`MAX_DATAGRAM_PAYLOAD`], on a continuation channel whose receiving end is
    /// attached (last) to the first datagram.
    pub rest: Vec<u8>,
}

impl Frames {
    /// Whether the message needs a continuation channel.
    pub fn is_fragmented(&self) -> bool {
        !self.rest.is_empty()
    }
}

/// Encodes `message` the way `IpcSender::send` frames it: one datagram when the payload fits
/// [`MAX_DATAGRAM_PAYLOAD`], else a first fragment plus the rest for the continuation.
/// Channels inside `message` must already be encoded as their index among the descriptors
/// the first datagram carries (see [`WelcomeFrame`]).
pub fn encode_frames<T: serde::Serialize>(message: &T) -> Result<Frames, WireError> {
    let mut first = postcard::to_extend(message, vec![0u8; HEADER_BYTES])
        .map_err(|e| WireError(format!("cannot encode the message: {e}")))?;
    let total = first.len() - HEADER_BYTES;
    let rest = if total > MAX_DATAGRAM_PAYLOAD {
        first.split_off(HEADER_BYTES + MAX_DATAGRAM_PAYLOAD)
    } else {
        Vec::new()
    };
    let fragment = first.len();
    first[..HEADER_BYTES / 2].copy_from_slice(&fragment.to_ne_bytes());
    first[HEADER_BYTES / 2..HEADER_BYTES].copy_from_slice(&total.to_ne_bytes());
    Ok(Frames { first, rest })
}

/// A message's postcard payload alone, without framing (what a [`crate::SharedBytes`]
/// region of a large message holds).
pub fn encode_payload<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(message).map_err(|e| WireError(format!("cannot encode the message: {e}")))
}

/// The request id at the start of a large message's region (an encoded
/// [`ToBroker::Request`]), without decoding the rest: a broker that refuses to read the
/// region still answers the request it holds. `None` if it does not start as a request.
pub fn peek_request_id(prefix: &[u8]) -> Option<crate::RequestId> {
    // postcard: the variant's index, then the request's id, both as varints.
    let (variant, rest) = postcard::take_from_bytes::<u32>(prefix).ok()?;
    if variant != REQUEST_VARIANT {
        return None;
    }
    let (id, _) = postcard::take_from_bytes::<u64>(rest).ok()?;
    Some(crate::RequestId(id))
}

/// [`ToBroker::Request`]'s index among its variants (checked by a test against the encoder).
const REQUEST_VARIANT: u32 = 1;

/// Decodes a whole message's payload that must hold nothing after the message (a large
/// message's region: a patron has no reason to pad it).
pub fn decode_whole(payload: &[u8]) -> Result<ToBroker, WireError> {
    let (message, rest) =
        crate::shared::with_regions(Vec::new(), || postcard::take_from_bytes(payload))
            .map_err(|e| WireError(format!("cannot decode the message: {e}")))?;
    if !rest.is_empty() {
        return Err(WireError(format!("{} bytes after the message", rest.len())));
    }
    Ok(message)
}

/// Decodes a payload written by [`encode_payload`] (a large message's region).
pub fn decode_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(payload).map_err(|e| WireError(format!("cannot decode the message: {e}")))
}

/// [`crate::Welcome`] as the broker writes it itself: the same postcard shape, with the
/// event channel as what ipc-channel puts in its place, the index of its descriptor among
/// those the datagram carries. The broker writes its answers without ipc-channel so that
/// no patron-supplied name ever reaches `IpcSender::connect` (which panics on a NUL, leaks
/// a socket when the connect fails and blocks on a full backlog).
#[derive(Debug, serde::Serialize)]
pub enum WelcomeFrame<'a> {
    /// [`crate::Welcome::Accepted`]; the event channel's receiving end is descriptor 0.
    Accepted {
        /// The broker's process id.
        broker_pid: u32,
        /// The broker's number for this patron.
        patron_id: u64,
        /// Always 0: the first (only) descriptor of the datagram.
        events: usize,
    },
    /// [`crate::Welcome::Refused`].
    Refused {
        /// A stable word.
        kind: &'a str,
        /// What to tell the user.
        message: &'a str,
    },
}

/// Decodes a whole message's payload (one that came with no shared memory region).
pub fn decode(payload: &[u8]) -> Result<ToBroker, WireError> {
    decode_with_regions(payload, Vec::new())
}

/// Decodes a whole message's payload, `regions` being the contents of the shared memory
/// regions that came with it (see [`crate::SharedBytes`]).
pub fn decode_with_regions(payload: &[u8], regions: Vec<Vec<u8>>) -> Result<ToBroker, WireError> {
    crate::shared::with_regions(regions, || postcard::from_bytes(payload))
        .map_err(|e| WireError(format!("cannot decode the message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Request, RequestBody, RequestId, TorrentSource, PROTOCOL_VERSION};
    use ipc_channel::ipc::IpcSender;
    use nix::sys::socket::{
        accept, bind, listen, recvmsg, socket, AddressFamily, Backlog, ControlMessageOwned,
        MsgFlags, SockFlag, SockType, UnixAddr,
    };
    use proptest::prelude::*;
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn a_requests_id_is_read_off_the_start_of_its_encoding() {
        for id in [0, 1, 127, 128, 300, u64::MAX] {
            let encoded = encode_payload(&ToBroker::Request(Request {
                id: RequestId(id),
                body: RequestBody::List,
            }))
            .unwrap();
            assert_eq!(
                super::peek_request_id(&encoded[..encoded.len().min(16)]),
                Some(RequestId(id))
            );
        }
        let hello = encode_payload(&ToBroker::Hello(Hello {
            version: 1,
            server_name: "x".into(),
        }))
        .unwrap();
        assert_eq!(super::peek_request_id(&hello), None);
        assert_eq!(super::peek_request_id(&[]), None);
        assert_eq!(super::peek_request_id(&[0xff; 16]), None);
    }

    fn header(fragment: usize, total: usize) -> Vec<u8> {
        let mut bytes = fragment.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&total.to_ne_bytes());
        bytes
    }

    /// Receives one datagram and its descriptors from `fd`.
    fn receive(fd: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut buffer = vec![0u8; 1 << 20];
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 8]);
        let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
            .expect("recvmsg");
        let mut fds = Vec::new();
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let len = msg.bytes;
        (buffer[..len].to_vec(), fds)
    }

    /// What a real `IpcSender` writes is what `parse_datagram` and `decode` read: a small
    /// message in one datagram, a large one as a first fragment plus continuation.
    #[test]
    fn reads_what_ipc_channel_really_sends() {
        let dir = tempfile_dir();
        let path = dir.join("wire.sock");
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&listener, Backlog::new(1).unwrap()).unwrap();
        let sender = IpcSender::<ToBroker>::connect(path.display().to_string()).unwrap();
        // SAFETY: accept returns a new descriptor that we own.
        let conn = unsafe { OwnedFd::from_raw_fd(accept(listener.as_raw_fd()).unwrap()) };

        let hello = Hello {
            version: PROTOCOL_VERSION,
            server_name: "/tmp/x".into(),
        };
        sender.send(ToBroker::Hello(hello.clone())).unwrap();
        let (bytes, fds) = receive(&conn);
        let Ok(Datagram::Complete(payload)) = parse_datagram(&bytes, fds.len(), 1 << 30) else {
            panic!("a hello is one datagram");
        };
        assert!(matches!(decode(payload), Ok(ToBroker::Hello(h)) if h == hello));

        let big = vec![0x5a; 3 << 20];
        let request = ToBroker::Request(Request {
            id: RequestId(9),
            body: RequestBody::CreateNewTorrent(crate::CreateNewTorrent::new(
                TorrentSource::TorrentFile(big.clone()),
            )),
        });
        let send = std::thread::spawn(move || sender.send(request).unwrap());
        let (bytes, mut fds) = receive(&conn);
        let Ok(Datagram::First { payload, total }) = parse_datagram(&bytes, fds.len(), 1 << 30)
        else {
            panic!("3 MiB must be fragmented");
        };
        let continuation = fds.pop().unwrap();
        let mut whole = payload.to_vec();
        while whole.len() < total {
            let (more, extra) = receive(&continuation);
            assert!(extra.is_empty());
            whole.extend_from_slice(&more);
        }
        send.join().unwrap();
        match decode(&whole) {
            Ok(ToBroker::Request(Request {
                body: RequestBody::CreateNewTorrent(c),
                ..
            })) => assert!(matches!(c.source, TorrentSource::TorrentFile(b) if b == big)),
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What the broker writes itself, [`WelcomeFrame`] with a channel attached and events
    /// in [`Frames`] (small and fragmented), is what a patron's ipc-channel reads.
    #[test]
    fn ipc_channel_reads_what_the_broker_writes() {
        use crate::{Event, Welcome};
        use ipc_channel::ipc::IpcOneShotServer;
        use nix::sys::socket::{sendmsg, socketpair, ControlMessage};
        use std::io::IoSlice;

        let send = |fd: &OwnedFd, bytes: &[u8], attach: Option<&OwnedFd>| {
            let raw = attach.map(|a| [a.as_raw_fd()]);
            let rights = raw.as_ref().map(|r| [ControlMessage::ScmRights(r)]);
            let cmsgs: &[ControlMessage] = rights.as_ref().map_or(&[], |r| r);
            sendmsg::<()>(
                fd.as_raw_fd(),
                &[IoSlice::new(bytes)],
                cmsgs,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        };
        let (server, name) = IpcOneShotServer::<Welcome>::new().unwrap();
        let answer = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::connect(answer.as_raw_fd(), &UnixAddr::new(name.as_str()).unwrap())
            .unwrap();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let welcome = encode_frames(&WelcomeFrame::Accepted {
            broker_pid: 7,
            patron_id: 42,
            events: 0,
        })
        .unwrap();
        assert!(!welcome.is_fragmented());
        send(&answer, &welcome.first, Some(&theirs));
        drop(theirs);
        let Welcome::Accepted {
            broker_pid,
            patron_id,
            events,
        } = server.accept().unwrap().1
        else {
            panic!("an Accepted frame is read as Accepted");
        };
        assert_eq!((broker_pid, patron_id), (7, 42));

        let small = Event::ProtocolError {
            message: "small".into(),
        };
        let frames = encode_frames(&small).unwrap();
        send(&ours, &frames.first, None);
        assert!(
            matches!(events.recv().unwrap(), Event::ProtocolError { message } if message == "small")
        );

        let big_name = "n".repeat(3 * MAX_DATAGRAM_PAYLOAD + 17);
        let big = Event::ProtocolError {
            message: big_name.clone(),
        };
        let frames = encode_frames(&big).unwrap();
        assert!(frames.is_fragmented());
        assert_eq!(frames.first.len(), HEADER_BYTES + MAX_DATAGRAM_PAYLOAD);
        let (cont_tx, cont_rx) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send(&ours, &frames.first, Some(&cont_rx));
        drop(cont_rx);
        for chunk in frames.rest.chunks(MAX_DATAGRAM_PAYLOAD) {
            send(&cont_tx, chunk, None);
        }
        match events.recv().unwrap() {
            Event::ProtocolError { message } => assert_eq!(message, big_name),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tp-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lying_headers_are_refused() {
        let mut short = header(10, 0);
        short.truncate(HEADER_BYTES - 1);
        assert!(parse_datagram(&short, 0, 100).is_err());
        // Claims more bytes in this datagram than came.
        assert!(parse_datagram(&header(1000, 0), 0, 100).is_err());
        // A huge total is refused before anything is allocated.
        let huge = header(HEADER_BYTES, usize::MAX);
        let err = parse_datagram(&huge, 1, 1 << 24).unwrap_err();
        assert!(err.0.contains("exceeds the limit"), "{err}");
        // Fragmented, but without its continuation channel (ipc-channel would unwrap None).
        let mut first = header(HEADER_BYTES + 4, 100);
        first.extend_from_slice(b"abcd");
        assert!(parse_datagram(&first, 0, 1000).is_err());
        assert!(parse_datagram(&first, 1, 1000).is_ok());
        // A complete request smuggling descriptors.
        let mut whole = header(HEADER_BYTES + 2, 2);
        whole.extend_from_slice(b"ab");
        assert!(parse_datagram(&whole, 3, 1000).is_err());
        // Total smaller than what came.
        let mut less = header(HEADER_BYTES + 4, 2);
        less.extend_from_slice(b"abcd");
        assert!(parse_datagram(&less, 0, 1000).is_err());
    }

    /// Cases per property: `PROPTEST_CASES` (scripts/fuzz runs 1,000,000), else 4,096 in
    /// every test run.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4096)
    }

    /// A datagram whose header is honest half of the time, so the payload gets decoded.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 0..4096),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(payload, honest_fragment, honest_total)| {
                if !honest_fragment && !honest_total {
                    return payload;
                }
                let fragment = if honest_fragment {
                    HEADER_BYTES + payload.len()
                } else {
                    payload.len()
                };
                let total = if honest_total {
                    payload.len()
                } else {
                    payload.len() * 2 + 1
                };
                let mut bytes = header(fragment, total);
                bytes.extend_from_slice(&payload);
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        // No bytes a patron can send make the parser or the decoder panic.
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in datagram(), fds in 0usize..4) {
            if let Ok(Datagram::Complete(payload)) = parse_datagram(&bytes, fds, 1 << 20) {
                let _ = decode(payload);
            }
        }

        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..8192)) {
            let _ = decode(&payload);
        }

        // Payloads that start like a real request (a valid variant tag) reach deeper.
        #[test]
        fn request_shaped_payloads_never_panic(
            tag in 0u8..3,
            kind in 0u8..16,
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut payload = vec![tag, 1, kind];
            payload.extend_from_slice(&rest);
            let _ = decode(&payload);
        }

        // Valid requests with random field values decode to themselves.
        #[test]
        fn requests_round_trip_through_postcard(id in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..256), magnet in ".{0,64}") {
            for body in [
                RequestBody::CreateNewTorrent(crate::CreateNewTorrent::new(TorrentSource::TorrentFile(bytes.clone()))),
                RequestBody::CreateNewTorrent(crate::CreateNewTorrent::new(TorrentSource::Magnet(magnet.clone()))),
                RequestBody::List,
            ] {
                let sent = ToBroker::Request(Request { id: RequestId(id), body });
                let encoded = postcard::to_stdvec(&sent).unwrap();
                let decoded = decode(&encoded).unwrap();
                prop_assert_eq!(format!("{decoded:?}"), format!("{sent:?}"));
            }
        }
    }
}
