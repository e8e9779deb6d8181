//! torrent-broker: the one BitTorrent engine of a state directory, shared by many patrons.
//!
//! Only one BitTorrent client may own a machine's listen port, session state and files
//! (the *single-client rule*), yet many programs want torrents. The broker owns the only
//! librqbit `Session` for its state directory and serves any number of *patron* processes
//! over ipc-channel. A patron that crashes, hangs or sends garbage must never hurt the
//! broker or another patron; everything here is shaped by that.
//!
//! Layers depend one way, following a request's path:
//!
//! - transport: [`rendezvous`] (accept → handshake: the front door patrons' `IpcSender`s
//!   connect to; each gets a private event channel through its one-shot server),
//!   [`requests`] (one epoll thread reads and checks every patron's requests with
//!   [`proto::wire`], never trusting a declared size, notices crashes, and resumes full
//!   outboxes), [`patron`] (each patron's outbox, written without ever blocking), and
//!   [`socket`] (the raw socket calls they need);
//! - [`dispatch`]: each patron's requests in order, with back-pressure;
//! - [`commands`]: request → exactly one reply, acting on the service and a patron's
//!   connection, never on IPC;
//! - [`service`]: the torrents, for patrons: [`engine`] (the librqbit session, patched:
//!   see `third_party/README.md`; its bitfields in [`fast_resume`]),
//!   [`registry`] (which torrents run and who holds them), [`store`] (crash-safe records),
//!   [`roots`] (where a torrent may write), [`storage`] (the only way the engine reaches
//!   a torrent's files: beneath a root, never through a symlink, a bounded pool of open
//!   files), [`board`] (the shared-memory status board) and [`service::fanout`] (status →
//!   the board and holders), and [`streams`] (readers of a file while it downloads: each
//!   keeps the engine's priority window where its reader is). The service knows patrons
//!   only through [`sink`] (a number and where its events go);
//! - [`broker`] wires them together; [`lock`] is the single-client rule (an `flock` the
//!   kernel releases when we die); [`shutdown`]: SIGTERM/SIGINT or a stop request.

pub mod board;
pub mod broker;
pub mod budget;
pub mod commands;
pub mod config;
pub mod counts;
pub mod dispatch;
pub mod engine;
pub mod fast_resume;
pub mod hooks;
pub mod left;
pub mod lock;
pub mod patron;
pub mod records;
pub mod registry;
pub mod relocate;
pub mod rendezvous;
pub mod requests;
pub mod roots;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod sink;
pub mod socket;
pub mod stop_point;
pub mod storage;
pub mod store;
pub mod streams;
pub mod torrent_file;
pub mod watch_dir;

pub use broker::{run, Broker};

/// Cases per fuzz property: `PROPTEST_CASES` (`scripts/fuzz` runs 1,000,000), else 4,096 in
/// every test run.
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096)
}
pub use config::{BrokerArgs, BrokerConfig};
