//! Large messages as shared memory: [`SharedBytes`].
//!
//! ipc-channel cuts a message larger than a datagram into a train of fragments over a
//! continuation channel, every byte copied through the socket. A message over
//! [`LARGE_MESSAGE_BYTES`] (a big .torrent, a list of thousands) travels instead as
//! [`crate::ToBroker::Large`] or [`crate::Event::Large`]: a small datagram naming a memory
//! region (a memfd passed beside it) that holds the whole message, postcard-encoded.
//!
//! The two sides handle the region differently, because they trust each other differently:
//! - a **patron** sends and receives through ipc-channel ([`ipc_channel::ipc::IpcSharedMemory`]);
//! - the **broker** never maps a patron's memfd (the patron could shrink it under the
//!   mapping: SIGBUS). It checks the descriptor is memory (a memfd or tmpfs, so reading never
//!   waits on a disk or a FUSE daemon) and no larger than a request may be, then copies it
//!   with `pread` and decodes through [`crate::wire::decode_with_regions`]. Its own large
//!   events it writes into a fresh memfd that it gives away.

use ipc_channel::ipc::IpcSharedMemory;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;

/// Messages larger than this (encoded) cross as shared memory.
pub const LARGE_MESSAGE_BYTES: usize = 64 * 1024;

/// Bytes beside a message rather than in it. On the wire: the index of the shared memory
/// region among those the datagram carries (ipc-channel's encoding of `IpcSharedMemory`).
#[derive(Clone)]
pub struct SharedBytes(Held);

#[derive(Clone)]
enum Held {
    /// Mapped by ipc-channel (a patron sending, or receiving an event).
    Mapped(IpcSharedMemory),
    /// Copied out of a region (the broker, receiving).
    Owned(Vec<u8>),
    /// The region at this index of the datagram's descriptors (the broker, sending).
    Region(usize),
}

impl SharedBytes {
    /// `bytes` copied into a fresh shared memory region, to be sent through ipc-channel.
    pub fn new(bytes: &[u8]) -> SharedBytes {
        SharedBytes(Held::Mapped(IpcSharedMemory::from_bytes(bytes)))
    }

    /// A reference to the `index`th region of the datagram it is sent in (for a sender that
    /// attaches the regions itself: the broker).
    pub fn region(index: usize) -> SharedBytes {
        SharedBytes(Held::Region(index))
    }

    /// The bytes (empty for an unsent [`SharedBytes::region`]).
    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            Held::Mapped(memory) => memory,
            Held::Owned(bytes) => bytes,
            Held::Region(_) => &[],
        }
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Held::Region(index) => write!(f, "SharedBytes(region {index})"),
            _ => write!(f, "SharedBytes({} bytes)", self.bytes().len()),
        }
    }
}

thread_local! {
    /// The regions of the message being decoded by [`crate::wire::decode_with_regions`];
    /// `None` outside it (then ipc-channel's own context applies).
    static REGIONS: RefCell<Option<Vec<Option<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// Runs `decode` with `regions` as the shared memory regions a [`SharedBytes`] may take.
pub(crate) fn with_regions<T>(regions: Vec<Vec<u8>>, decode: impl FnOnce() -> T) -> T {
    let previous = REGIONS.with(|r| r.replace(Some(regions.into_iter().map(Some).collect())));
    let result = decode();
    REGIONS.with(|r| *r.borrow_mut() = previous);
    result
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Held::Mapped(memory) => memory.serialize(serializer),
            Held::Region(index) => index.serialize(serializer),
            Held::Owned(_) => Err(serde::ser::Error::custom(
                "received shared bytes cannot be sent on; make new ones",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ours = REGIONS.with(|r| r.borrow().is_some());
        if !ours {
            return IpcSharedMemory::deserialize(deserializer)
                .map(|m| SharedBytes(Held::Mapped(m)));
        }
        let index = usize::deserialize(deserializer)?;
        REGIONS.with(|r| {
            let mut regions = r.borrow_mut();
            let region = regions
                .as_mut()
                .and_then(|regions| regions.get_mut(index))
                .and_then(Option::take);
            region
                .map(|bytes| SharedBytes(Held::Owned(bytes)))
                .ok_or_else(|| serde::de::Error::custom(format!("no shared memory region {index}")))
        })
    }
}
