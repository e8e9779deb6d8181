//! `GET /api/events`: the torrents, pushed as server-sent events, woken by the board (never
//! polled). The first event carries every torrent; each later one only the torrents that
//! changed since the last this client got, and the ids of those that went: a page of 10,000
//! torrents gets a few lines per change, not 10,000.
//!
//! A subscriber keeps only the version it was last sent: the texts are made once per change
//! by the board's thread ([`crate::link`]), and subscribers are bounded
//! ([`MAX_SUBSCRIBERS`]; past it, 503).

use crate::link::{Change, Torrents};
use crate::Shared;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Event subscribers at once.
pub const MAX_SUBSCRIBERS: usize = 256;

/// The subscribers' slots.
pub struct Subscribers(Arc<Semaphore>);

impl Default for Subscribers {
    fn default() -> Self {
        Subscribers(Arc::new(Semaphore::new(MAX_SUBSCRIBERS)))
    }
}

/// What one subscriber was sent last.
struct Sent {
    torrents: watch::Receiver<Arc<Torrents>>,
    version: Option<u64>,
    down: Option<String>,
    _slot: OwnedSemaphorePermit,
}

/// The event stream.
pub async fn stream(State(web): State<Shared>) -> Response {
    let Ok(slot) = Arc::clone(&web.subscribers.0).try_acquire_owned() else {
        let body = serde_json::json!({"event": "error", "kind": "limit-reached",
            "message": format!("{MAX_SUBSCRIBERS} pages follow this server already; try again shortly")});
        let mut busy = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return busy;
    };
    let mut torrents = web.link.torrents();
    torrents.mark_changed();
    let sent = Sent {
        torrents,
        version: None,
        down: None,
        _slot: slot,
    };
    let events = futures_util::stream::unfold(sent, |mut sent| async move {
        loop {
            sent.torrents.changed().await.ok()?;
            let now = sent.torrents.borrow_and_update().clone();
            if let Some(data) = sent.news(&now) {
                return Some((Ok::<_, Infallible>(Event::default().data(data)), sent));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

impl Sent {
    /// The event for what changed since the last one sent, if anything did: the texts the
    /// board's thread made, joined.
    fn news(&mut self, now: &Torrents) -> Option<String> {
        let since = self.version.and_then(|version| now.since(version));
        let down_changed = self.version.is_none() || self.down != now.down;
        self.version = Some(now.version);
        self.down = now.down.clone();
        let (event, change) = match since {
            Some(change)
                if change.changed.is_empty() && change.gone.is_empty() && !down_changed =>
            {
                return None
            }
            Some(change) => ("changed", change),
            // The first event, or one far behind: everything.
            None => (
                "torrents",
                Change {
                    version: now.version,
                    changed: now.texts.iter().map(|(id, t)| (*id, t.clone())).collect(),
                    gone: Vec::new(),
                },
            ),
        };
        let torrents: Vec<&str> = change.changed.iter().map(|(_, t)| &**t).collect();
        let gone: Vec<String> = change.gone.iter().map(u64::to_string).collect();
        let down = serde_json::to_string(&now.down).unwrap_or_else(|_| "null".into());
        Some(format!(
            "{{\"event\":\"{event}\",\"torrents\":[{}],\"gone\":[{}],\"broker_down\":{down}}}",
            torrents.join(","),
            gone.join(",")
        ))
    }
}
