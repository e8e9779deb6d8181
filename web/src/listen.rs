//! The sockets, and who may connect at all.
//!
//! A unix socket by default (`<state dir>/run/web.sock`, owner-only, and every peer's uid
//! checked against ours, as the broker checks its patrons'); TCP where the user asks, on
//! loopback only when the broker is loopback-only. Connections are bounded, and one that
//! sends no request head within [`HEADER_TIMEOUT`] is closed (a slow client cannot hold a
//! connection by dribbling its headers).

use crate::access::{self, Access};
use crate::link::Link;
use crate::Web;
use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use patron_client::ConnectOptions;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a client may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A unix socket at this path (`None`: `<state dir>/run/web.sock`).
    Unix(Option<PathBuf>),
    /// TCP, at this address (port 0: any free one).
    Tcp(SocketAddr),
}

/// How to run the web patron.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which broker, and whether to start one if none runs (only at start).
    pub connect: ConnectOptions,
    /// Where to listen.
    pub listen: Listen,
    /// How long a client may take no bytes of a file before its answer is cut.
    pub stall: std::time::Duration,
}

/// Serves until SIGINT or SIGTERM. `ready` gets, once listening, where: the URL with the
/// token (`http://127.0.0.1:PORT/#token=TOKEN`) or `unix:PATH`.
pub async fn serve(options: Options, ready: impl FnOnce(String)) -> anyhow::Result<()> {
    let state = patron_client::state_dir(&options.connect)?;
    let connect = options.connect.clone();
    let link = tokio::task::spawn_blocking(move || Link::start(connect))
        .await
        .context("cannot connect to the broker")??;
    match options.listen {
        Listen::Tcp(addr) => {
            if loopback_only() && !addr.ip().is_loopback() {
                anyhow::bail!(
                    "{addr} is not a loopback address, and TORRENT_PATRON_LOOPBACK_ONLY is set: listen on 127.0.0.1"
                );
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let addr = listener.local_addr()?;
            let token = access::load_or_make_token(&state)?;
            let mut hosts = vec![addr.to_string()];
            if addr.ip().is_loopback() {
                hosts.push(format!("localhost:{}", addr.port()));
            }
            let web = Arc::new(Web::new(
                link,
                Access::tcp(token.clone(), addr.port(), hosts),
                options.stall,
            ));
            ready(format!("http://{addr}/#token={token}"));
            accept_loop(web, || async {
                listener.accept().await.map(|(s, _)| Some(s))
            })
            .await
        }
        Listen::Unix(path) => {
            let path = path.unwrap_or_else(|| state.join("run").join("web.sock"));
            let listener = bind_unix(&path)?;
            let web = Arc::new(Web::new(link, Access::unix(), options.stall));
            ready(format!("unix:{}", path.display()));
            let ours = nix::unistd::getuid().as_raw();
            let served = accept_loop(web, || async {
                let (stream, _) = listener.accept().await?;
                // Only this user (as the broker admits its patrons).
                Ok(match stream.peer_cred() {
                    Ok(cred) if cred.uid() == ours => Some(stream),
                    _ => None,
                })
            })
            .await;
            let _ = std::fs::remove_file(&path);
            served
        }
    }
}

/// Whether this process may only use loopback (the broker's switch, as every test sets it).
fn loopback_only() -> bool {
    std::env::var_os("TORRENT_PATRON_LOOPBACK_ONLY").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Binds the unix socket owner-only; a socket left by a web patron that died is replaced,
/// one that answers is not.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot make {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("a web patron already serves {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections (`accept` gives `None` for one it refused) and serves each on a task
/// of its own, at most [`MAX_CONNECTIONS`] at once, until a signal to stop.
async fn accept_loop<S, A, F>(web: Arc<Web>, mut accept: A) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<Option<S>>>,
{
    let router = crate::router(web);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let stream = tokio::select! {
            accepted = accept() => accepted,
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        };
        let stream = match stream {
            Ok(Some(stream)) => stream,
            Ok(None) => continue,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the bound, a client is told so at once rather than left in the backlog.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
}

/// Answers a connection past [`MAX_CONNECTIONS`] with 503 and closes it (within a second:
/// a client that does not read its answer is dropped).
async fn refuse_busy<S: AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "{\"event\":\"error\",\"kind\":\"limit-reached\",\"message\":\"this server holds as many connections as it serves; try again shortly\"}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
}
