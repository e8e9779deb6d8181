//! # torrent-web: the web patron
//!
//! People reach a daemon through a browser, players and browsers want an HTTP URL with
//! `Range`, and a whole ecosystem of tools speaks Transmission's RPC. This crate serves all of
//! that as **one more patron** of the broker (DESIGN §11): a process of its own that holds
//! patron connections and reads the status board like any other patron. A crash of it, or a
//! flood of HTTP requests at it, never reaches the broker or another patron; the broker's
//! budgets bound what it can ask, as they bound everyone.
//!
//! Why a binary of its own (`torrent-web`, which `patron-client web` runs): the scripting
//! CLI stays small and quick to start, and the web patron's HTTP stack, assets and threads
//! live in a process whose failure is its own.
//!
//! The data's path, one way:
//! - [`listen`]: the sockets, and who may connect at all (a unix socket's peer must be this
//!   user; a TCP listener only where the user asked, loopback-only when the broker is);
//! - [`access`]: who may use a request (the token, as a cookie or HTTP Basic), whether it
//!   came from this server's page (`Host`, `Origin`), and the headers every answer carries;
//! - the routes: [`api`] (the page's JSON, in the CLI's vocabulary), [`events`] (server-sent
//!   events woken by the board), [`files`] (a torrent's files with `Range`, while they
//!   download), [`rpc`] (Transmission's RPC);
//! - [`link`]: the patron connections to the broker and the board, the only door to it.

pub mod access;
mod api;
mod assets;
mod events;
mod files;
pub mod link;
pub mod listen;
mod metrics;
mod rpc;

use std::sync::Arc;

pub use listen::{serve, Listen, Options};

/// What every handler gets: the way to the broker, and who may use this server.
pub struct Web {
    /// The broker: requests, streams and the board.
    pub link: Arc<link::Link>,
    /// The token and the names this server answers to.
    pub access: access::Access,
    /// Files being served.
    streams: files::Streams,
    /// Pages following the events.
    subscribers: events::Subscribers,
    /// Transmission's session id, for this process's life.
    rpc_session: String,
}

impl Web {
    /// A server for `link`, used as `access` says; a file's answer is cut when its client
    /// took nothing for `stall`.
    pub fn new(link: Arc<link::Link>, access: access::Access, stall: std::time::Duration) -> Web {
        Web {
            link,
            access,
            streams: files::Streams::new(stall),
            subscribers: events::Subscribers::default(),
            rpc_session: rpc::new_session(),
        }
    }
}

/// The state handlers share.
type Shared = Arc<Web>;

/// Every route, behind the access guard.
fn router(web: Shared) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/login", post(api::login))
        .route("/api/torrents", get(api::list).post(api::add))
        .route(
            "/api/torrents/{id}/files",
            get(api::files).post(api::select),
        )
        .route("/api/torrents/{id}/peers", get(api::peers))
        .route("/api/torrents/{id}/playlist.m3u", get(metrics::playlist))
        .route("/metrics", get(metrics::metrics))
        .route("/api/torrents/{id}/{action}", post(api::act))
        .route("/api/settings", get(api::settings).post(api::set_settings))
        .route("/api/events", get(events::stream))
        .route("/api/{*rest}", axum::routing::any(api::not_found))
        .route("/files/{id}/{*file}", get(files::serve))
        .route("/transmission/rpc", post(rpc::handle))
        // transmission-remote asks for it with a trailing slash.
        .route("/transmission/rpc/", post(rpc::handle))
        .fallback(assets::serve)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Runs after the guard: a refused request's body is never read.
        .layer(axum::middleware::from_fn(access::bounded_body))
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            access::guard,
        ))
        .with_state(web)
}

/// The largest request body taken: a .torrent of the broker's largest (16 MiB), in base64.
pub(crate) const MAX_BODY_BYTES: usize = 22 * 1024 * 1024;
