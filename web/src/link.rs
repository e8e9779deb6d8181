//! The web patron's way to the broker: a few patron connections for requests, a stream
//! connection per file being served, and the status board, followed by one thread.
//!
//! `patron_client` is blocking; requests run on tokio's blocking pool, each holding one
//! connection of a small pool (and a permit, moved into the blocking work: a client that
//! hangs up does not free a slot its request still uses). Adds have a pool of their own: a
//! magnet may wait minutes for its metadata, and must not hold up the page's other calls.
//! After the first connection the link never starts a broker: one that a user stopped
//! stays stopped, and the page says so.
//!
//! The board's thread turns each change into JSON once: every torrent's text, and what
//! changed since the version before. Every subscriber of the page's events sends those
//! texts as they are (none serializes a torrent of its own).

use patron_client::json::summary_json;
use patron_client::proto::{CreateNewTorrent, TorrentSource, TorrentSummary};
use patron_client::{Board, ConnectOptions, Created, Error, Patron};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Requests to the broker in flight at once from this process (adds apart).
const CONNECTIONS: usize = 4;

/// Adds of .torrent files in flight at once.
const ADDS: usize = 2;

/// Magnet adds in flight at once: each may wait up to the broker's metadata timeout, so
/// they have slots of their own and never hold up the adds of .torrent files.
const MAGNETS: usize = 8;

/// Changes kept for subscribers that fell behind; one further behind gets everything.
const HISTORY: usize = 64;

/// What changed from one version of the torrents to the next.
#[derive(Debug, Default, Clone)]
pub struct Change {
    /// The version this change leads to.
    pub version: u64,
    /// Torrents that came or changed: id and JSON text.
    pub changed: Vec<(u64, Arc<str>)>,
    /// Torrents that went.
    pub gone: Vec<u64>,
}

/// Every torrent as the board shows it, and whether a broker runs.
#[derive(Debug, Default)]
pub struct Torrents {
    /// In id order.
    pub list: Vec<TorrentSummary>,
    /// Why there is no board to read (no broker runs, it stopped), if so.
    pub down: Option<String>,
    /// Counts the changes.
    pub version: u64,
    /// Each torrent's JSON text (`patron_client::json::summary_json`), by id.
    pub texts: BTreeMap<u64, Arc<str>>,
    /// The latest changes, oldest first, the last leading to `version`.
    pub history: VecDeque<Arc<Change>>,
}

impl Torrents {
    /// What changed since `version`, merged; `None` if that is further back than the
    /// history (the caller sends everything instead).
    pub fn since(&self, version: u64) -> Option<Change> {
        if version == self.version {
            return Some(Change {
                version,
                ..Change::default()
            });
        }
        let first = self.history.front()?;
        if version + 1 < first.version {
            return None;
        }
        let mut changed: BTreeMap<u64, Arc<str>> = BTreeMap::new();
        let mut gone = Vec::new();
        for change in self.history.iter().filter(|c| c.version > version) {
            for (id, text) in &change.changed {
                changed.insert(*id, text.clone());
                gone.retain(|g| g != id);
            }
            for id in &change.gone {
                changed.remove(id);
                gone.push(*id);
            }
        }
        Some(Change {
            version: self.version,
            changed: changed.into_iter().collect(),
            gone,
        })
    }
}

/// The web patron's connections to one broker.
pub struct Link {
    options: ConnectOptions,
    idle: Mutex<Vec<Patron>>,
    requests: Arc<Semaphore>,
    adds: Arc<Semaphore>,
    magnets: Arc<Semaphore>,
    torrents: watch::Receiver<Arc<Torrents>>,
    /// What publishes to `torrents`: the board's thread at each change, and each call once
    /// its reply is in (see [`Link::catch_up`]); one at a time, each reading the board under
    /// the lock, so the last to publish has the newest read.
    publisher: Arc<Publisher>,
    /// The board, as a call reads it once its reply is in, and its change counter then.
    board: Mutex<Option<(Board, u64)>>,
}

/// The sending side of the torrents, and the lock its publishers take.
struct Publisher {
    sender: watch::Sender<Arc<Torrents>>,
    lock: Mutex<()>,
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
        let publisher = Arc::new(Publisher {
            sender,
            lock: Mutex::new(()),
        });
        let board_options = options.clone();
        let following = publisher.clone();
        std::thread::Builder::new()
            .name("board".into())
            .spawn(move || follow_board(&board_options, &following))
            .map_err(|source| Error::Io {
                context: "cannot start the board's thread".into(),
                source,
            })?;
        Ok(Arc::new(Link {
            options,
            idle: Mutex::new(vec![first]),
            requests: Arc::new(Semaphore::new(CONNECTIONS)),
            adds: Arc::new(Semaphore::new(ADDS)),
            magnets: Arc::new(Semaphore::new(MAGNETS)),
            torrents,
            publisher,
            board: Mutex::new(None),
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

    /// Runs `request` on a connection of the pool, on the blocking pool.
    pub async fn call<T, F>(self: &Arc<Self>, request: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Patron) -> Result<T, Error> + Send + 'static,
    {
        self.run(&self.requests, request).await
    }

    /// Starts (or joins) a torrent, in a pool of the adds' own: a magnet's, which may wait
    /// minutes for its metadata, in slots of its own (see [`MAGNETS`]), never holding up
    /// the adds of .torrent files or the other calls.
    pub async fn create(self: &Arc<Self>, create: CreateNewTorrent) -> Result<Created, Error> {
        let pool = match create.source {
            TorrentSource::Magnet(_) => &self.magnets,
            TorrentSource::TorrentFile(_) => &self.adds,
        };
        self.run(pool, move |patron| patron.create(create)).await
    }

    async fn run<T, F>(self: &Arc<Self>, pool: &Arc<Semaphore>, request: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Patron) -> Result<T, Error> + Send + 'static,
    {
        let permit = Arc::clone(pool)
            .acquire_owned()
            .await
            .map_err(|_| Error::BrokerStopped("the web patron is stopping".into()))?;
        let link = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            // Held until the request is done, whether or not its client still waits.
            let _permit = permit;
            let taken = link.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut patron = match taken {
                // A connection to a broker that has since stopped (a restart) is dropped
                // here, not found broken by the request.
                Some(patron) if patron_client::proto::board::process_alive(patron.broker_pid()) => {
                    patron
                }
                _ => Patron::connect_with(&link.options)?,
            };
            let result = request(&mut patron);
            // What the reply changed is in the torrents before the caller answers its
            // client: a `torrent-stop` then a `torrent-get` must show it stopped.
            link.catch_up();
            let broken = matches!(
                result,
                Err(Error::BrokerStopped(_)
                    | Error::BrokerUnreachable(_)
                    | Error::TimedOut(_)
                    | Error::Protocol(_)
                    | Error::Refused { .. })
            );
            if !broken {
                let mut idle = link.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < CONNECTIONS + ADDS + MAGNETS {
                    idle.push(patron);
                }
            }
            result
        })
        .await;
        joined.unwrap_or_else(|e| Err(Error::Protocol(format!("a request failed: {e}"))))
    }
}

impl Link {
    /// Publishes the board as it is now (the broker writes a change to it before its reply).
    /// Where a text on it was cut, the board's thread asks the broker and publishes.
    fn catch_up(&self) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if board.is_none() {
            *board = Board::open(&self.options).ok().map(|b| (b, u64::MAX));
        }
        let Some((reader, caught_up)) = board.as_mut() else {
            return;
        };
        // A broker restarted since: its new board, or none.
        if reader.refresh().is_err() {
            *board = None;
            return;
        }
        // A call that changed nothing (files, peers: many per `torrent-get`) reads no list.
        let changes = reader.header().changes;
        if changes == *caught_up {
            return;
        }
        *caught_up = changes;
        let _publishing = self
            .publisher
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = reader.list_exact() {
            publish(&self.publisher.sender, list, None);
        }
    }
}

/// Publishes the board's torrents at every change until nobody listens; with no broker,
/// says so and looks again every second.
fn follow_board(options: &ConnectOptions, publisher: &Publisher) {
    let sender = &publisher.sender;
    let publishing = || publisher.lock.lock().unwrap_or_else(|e| e.into_inner());
    while !sender.is_closed() {
        let mut board = match Board::open(options) {
            Ok(board) => board,
            Err(e) => {
                let _publishing = publishing();
                publish(sender, Vec::new(), Some(e.to_string()));
                drop(_publishing);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        // Asked for the whole list when the board cut a text; kept between changes.
        let mut lister: Option<Patron> = None;
        {
            let _publishing = publishing();
            publish(sender, whole_list(options, &board, &mut lister), None);
        }
        loop {
            // The timeout only lets this thread notice that nobody listens any more.
            match board.wait_for_change(Duration::from_secs(1)) {
                Ok(_) if sender.is_closed() => return,
                Ok(true) => {
                    let _publishing = publishing();
                    publish(sender, whole_list(options, &board, &mut lister), None)
                }
                Ok(false) => {}
                Err(e) => {
                    let _publishing = publishing();
                    publish(sender, Vec::new(), Some(e.to_string()));
                    break;
                }
            }
        }
    }
}

/// The board's torrents; where a text on it was cut to fit its slot, the broker's list,
/// asked on `lister` (connected once, again only after it failed).
fn whole_list(
    options: &ConnectOptions,
    board: &Board,
    lister: &mut Option<Patron>,
) -> Vec<TorrentSummary> {
    if let Some(list) = board.list_exact() {
        return list;
    }
    let asked = match lister {
        Some(patron) => patron.list(),
        None => Patron::connect_with(options).and_then(|mut patron| {
            let list = patron.list();
            *lister = Some(patron);
            list
        }),
    };
    asked.unwrap_or_else(|_| {
        *lister = None;
        board.list()
    })
}

/// The next version, if anything changed: each torrent serialized once, here.
fn publish(sender: &watch::Sender<Arc<Torrents>>, list: Vec<TorrentSummary>, down: Option<String>) {
    let now = sender.borrow().clone();
    if now.list == list && now.down == down {
        return;
    }
    let mut texts = BTreeMap::new();
    let mut changed = Vec::new();
    for torrent in &list {
        let id = torrent.info.id.0;
        let unchanged = now
            .list
            .binary_search_by_key(&id, |t| t.info.id.0)
            .ok()
            .is_some_and(|at| now.list[at] == *torrent);
        let text = match (unchanged, now.texts.get(&id)) {
            (true, Some(text)) => text.clone(),
            _ => {
                let text: Arc<str> = summary_json(torrent).to_string().into();
                changed.push((id, text.clone()));
                text
            }
        };
        texts.insert(id, text);
    }
    let gone: Vec<u64> = now
        .texts
        .keys()
        .filter(|id| !texts.contains_key(id))
        .copied()
        .collect();
    let version = now.version + 1;
    let mut history = now.history.clone();
    history.push_back(Arc::new(Change {
        version,
        changed,
        gone,
    }));
    while history.len() > HISTORY {
        history.pop_front();
    }
    sender.send_replace(Arc::new(Torrents {
        list,
        down,
        version,
        texts,
        history,
    }));
}
