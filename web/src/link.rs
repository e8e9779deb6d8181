//! The web patron's way to the broker: a few patron connections for requests, a stream
//! connection per file being served, and the status board, followed by one thread.
//!
//! `patron_client` is blocking; requests run on tokio's blocking pool, each holding one
//! connection of a small pool for its length, so a slow request (a magnet resolving) does
//! not hold up the others. After the first connection the link never starts a broker: one
//! that a user stopped stays stopped, and the page says so.

use patron_client::proto::TorrentSummary;
use patron_client::{Board, ConnectOptions, Error, Patron};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Requests to the broker in flight at once from this process.
const CONNECTIONS: usize = 4;

/// Every torrent as the board shows it, and whether a broker runs.
#[derive(Debug, Default)]
pub struct Torrents {
    /// In id order.
    pub list: Vec<TorrentSummary>,
    /// Why there is no board to read (no broker runs, it stopped), if so.
    pub down: Option<String>,
}

/// The web patron's connections to one broker.
pub struct Link {
    options: ConnectOptions,
    idle: Mutex<Vec<Patron>>,
    permits: Semaphore,
    torrents: watch::Receiver<Arc<Torrents>>,
}

impl Link {
    /// Connects to the broker of `options` (starting one if `options` say so), and starts
    /// following its board.
    pub fn start(options: ConnectOptions) -> Result<Arc<Link>, Error> {
        let first = Patron::connect_with(&options)?;
        let options = ConnectOptions {
            auto_start: false,
            ..options
        };
        let (sender, torrents) = watch::channel(Arc::new(Torrents::default()));
        let board_options = options.clone();
        std::thread::Builder::new()
            .name("board".into())
            .spawn(move || follow_board(&board_options, &sender))
            .map_err(|source| Error::Io {
                context: "cannot start the board's thread".into(),
                source,
            })?;
        Ok(Arc::new(Link {
            options,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(CONNECTIONS),
            torrents,
        }))
    }

    /// How to reach the broker (never starting one): for streams, which connect on their own.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The torrents as last read off the board; `changed()` on it wakes at the next change.
    pub fn torrents(&self) -> watch::Receiver<Arc<Torrents>> {
        self.torrents.clone()
    }

    /// Runs `request` on a connection of the pool, on the blocking pool. A connection that
    /// failed (the broker went) is dropped, and the next request connects again.
    pub async fn call<T, F>(self: &Arc<Self>, request: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Patron) -> Result<T, Error> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::BrokerStopped("the web patron is stopping".into()))?;
        let link = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let taken = link.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut patron = match taken {
                Some(patron) => patron,
                None => Patron::connect_with(&link.options)?,
            };
            let result = request(&mut patron);
            let broken = matches!(
                result,
                Err(Error::BrokerStopped(_)
                    | Error::BrokerUnreachable(_)
                    | Error::Protocol(_)
                    | Error::Refused { .. })
            );
            if !broken {
                link.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(patron);
            }
            result
        })
        .await;
        joined.unwrap_or_else(|e| Err(Error::Protocol(format!("a request failed: {e}"))))
    }
}

/// Publishes the board's torrents at every change until nobody listens; with no broker,
/// says so and looks again every second.
fn follow_board(options: &ConnectOptions, sender: &watch::Sender<Arc<Torrents>>) {
    while !sender.is_closed() {
        let mut board = match Board::open(options) {
            Ok(board) => board,
            Err(e) => {
                publish(sender, Vec::new(), Some(e.to_string()));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            publish(sender, whole_list(options, &board), None);
            match board.wait_for_change(Duration::from_secs(1)) {
                Ok(_) if sender.is_closed() => return,
                Ok(_) => {}
                Err(e) => {
                    publish(sender, Vec::new(), Some(e.to_string()));
                    break;
                }
            }
        }
    }
}

/// The board's torrents; where a text on it was cut to fit its slot, the broker's list.
fn whole_list(options: &ConnectOptions, board: &Board) -> Vec<TorrentSummary> {
    match board.list_exact() {
        Some(list) => list,
        None => Patron::connect_with(options)
            .and_then(|mut patron| patron.list())
            .unwrap_or_else(|_| board.list()),
    }
}

fn publish(sender: &watch::Sender<Arc<Torrents>>, list: Vec<TorrentSummary>, down: Option<String>) {
    sender.send_if_modified(|now| {
        let changed = now.list != list || now.down != down;
        if changed {
            *now = Arc::new(Torrents { list, down });
        }
        changed
    });
}
