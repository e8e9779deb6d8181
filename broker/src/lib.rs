//! torrent-broker: the one BitTorrent engine of a state directory, shared by many patrons.
//!
//! Only one BitTorrent client may own a machine's listen port, session state and files
//! (the *single-client rule*), yet many programs want torrents. The broker owns the only
//! librqbit `Session` for its state directory and serves any number of *patron* processes
//! over ipc-channel. A patron that crashes, hangs or sends garbage must never hurt the
//! broker or another patron; everything here is shaped by that.
//!
//! Data path, module by module:
//!
//! - [`lock`]: the single-client rule (an `flock` the kernel releases when we die).
//! - [`rendezvous`]: accept → handshake. The front door is the socket patrons' `IpcSender`s
//!   connect to; each gets a private event channel through its one-shot server.
//! - [`requests`]: one epoll thread reads and checks every patron's requests (with
//!   [`proto::wire`], never trusting a declared size) and notices crashes.
//! - [`socket`]: the raw socket calls those two need.
//! - [`commands`]: request → engine → exactly one reply, in request order per patron.
//! - [`engine`]: the librqbit session and everything specific to it.
//! - [`registry`]: which torrents run and which patrons hold them.
//! - [`store`]: crash-safe writes of what the broker remembers.
//! - [`roots`]: where a torrent may write (beneath its save folder, no symlinks).
//! - [`fanout`]: status → holders, when it changed.
//! - [`patron`]: each patron's outbox; the broker never blocks on a send.
//! - [`shutdown`]: SIGTERM/SIGINT or a stop request → tell patrons, persist, stop.

pub mod broker;
pub mod commands;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod lock;
pub mod patron;
pub mod registry;
pub mod rendezvous;
pub mod requests;
pub mod roots;
pub mod shutdown;
pub mod socket;
pub mod store;
pub mod torrent_file;

pub use broker::{run, Broker};
pub use config::{BrokerArgs, BrokerConfig};
