//! `GET /api/events`: the torrents, pushed as server-sent events, woken by the board (never
//! polled). The first event carries every torrent; each later one only the torrents that
//! changed since the last this client got, and the ids of those that went: a page of 10,000
//! torrents gets a few lines per change, not 10,000.

use crate::link::Torrents;
use crate::Shared;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use patron_client::json::summary_json;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What one client was sent last: each torrent's JSON by id.
struct Sent {
    torrents: watch::Receiver<Arc<Torrents>>,
    last: HashMap<u64, String>,
    down: Option<Option<String>>,
}

/// The event stream.
pub async fn stream(
    State(web): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut torrents = web.link.torrents();
    torrents.mark_changed();
    let sent = Sent {
        torrents,
        last: HashMap::new(),
        down: None,
    };
    let events = futures_util::stream::unfold(sent, |mut sent| async move {
        loop {
            sent.torrents.changed().await.ok()?;
            let now = sent.torrents.borrow_and_update().clone();
            if let Some(event) = sent.news(&now) {
                return Some((Ok(event), sent));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

impl Sent {
    /// The event for what changed since the last one sent, if anything did.
    fn news(&mut self, now: &Torrents) -> Option<Event> {
        let first = self.down.is_none();
        let mut changed = Vec::new();
        let mut seen = HashMap::with_capacity(now.list.len());
        for torrent in &now.list {
            let value = summary_json(torrent);
            let text = value.to_string();
            let id = torrent.info.id.0;
            if self.last.get(&id) != Some(&text) {
                changed.push(value);
            }
            seen.insert(id, text);
        }
        let gone: Vec<u64> = self
            .last
            .keys()
            .filter(|id| !seen.contains_key(id))
            .copied()
            .collect();
        let down_changed = self.down.as_ref() != Some(&now.down);
        self.last = seen;
        self.down = Some(now.down.clone());
        if !first && changed.is_empty() && gone.is_empty() && !down_changed {
            return None;
        }
        let data = json!({
            "event": if first { "torrents" } else { "changed" },
            "torrents": changed,
            "gone": gone,
            "broker_down": now.down,
        });
        Some(Event::default().data(data.to_string()))
    }
}
