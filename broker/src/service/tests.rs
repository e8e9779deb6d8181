//! The service in process, with a real engine (a librqbit session on loopback, in a temporary
//! state folder) and patrons that are only sinks: each transaction's failure paths, with the
//! failure injected where the engine or the disk would rarely fail on cue, leave the
//! registry, the records and the engine as they were.

use super::{Closed, Service};
use crate::config::{BrokerArgs, BrokerConfig};
use crate::dispatch::{Dispatched, Dispatcher, Transport, MAX_IN_FLIGHT_REQUESTS};
use crate::sink::{EventSink, PatronConnection, PatronId};
use clap::Parser;
use proto::{
    CloseTorrent, Event, MakeTorrent, Request, RequestBody, RequestId, TorrentId, TorrentRef,
    TorrentState, TorrentStatus,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A patron that keeps what it is sent.
#[derive(Default)]
struct Recorded {
    events: Mutex<Vec<Event>>,
    statuses: Mutex<Vec<TorrentStatus>>,
}

impl EventSink for Recorded {
    fn send(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
    fn push_status(&self, status: TorrentStatus) {
        self.statuses.lock().unwrap().push(status);
    }
    fn forget_status(&self, torrent: TorrentId) {
        self.statuses.lock().unwrap().retain(|s| s.id != torrent);
    }
    fn pending_bytes(&self) -> usize {
        0
    }
    fn close(&self) {}
}

struct Setup {
    service: Arc<Service>,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn service_in(dir: &Path) -> Arc<Service> {
    let state = dir.join("state");
    let root = dir.join("data");
    std::fs::create_dir_all(&root).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = BrokerArgs::parse_from([
        "torrent-broker".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--download-root".as_ref(),
        root.as_os_str(),
        "--listen".as_ref(),
        listen.as_ref(),
        "--loopback-only".as_ref(),
        "--no-dht".as_ref(),
        "--no-lsd".as_ref(),
    ] as [&std::ffi::OsStr; 10]);
    let config = BrokerConfig::resolve(args).unwrap();
    Service::start(config).await.unwrap()
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let service = service_in(dir.path()).await;
    Setup {
        service,
        root: dir.path().join("data"),
        _dir: dir,
    }
}

/// A connected patron whose events are recorded.
fn patron(service: &Service, id: PatronId) -> Arc<Recorded> {
    let sink = Arc::new(Recorded::default());
    let events: Arc<dyn EventSink> = sink.clone();
    service
        .connect(PatronConnection { id, pid: 0, events })
        .unwrap();
    sink
}

/// Seeds a fresh 64 KiB file, held by `patron`, once its check ended; its id.
async fn seeding(setup: &Setup, patron: PatronId, name: &str) -> TorrentId {
    let path = setup.root.join(name);
    std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
    let made = setup
        .service
        .make(
            patron,
            MakeTorrent {
                path: path.display().to_string(),
                piece_size: Some(16 * 1024),
                trackers: Vec::new(),
                seed: true,
            },
        )
        .await
        .unwrap();
    let id = made.seeding.unwrap().id;
    // Seeding once its check ends (a recheck is refused during it).
    let (_, handle) = setup.service.running(TorrentRef::Id(id)).unwrap();
    handle.wait_until_initialized().await.unwrap();
    id
}

/// A service with patron 1 connected and seeding `one.bin`: the start of most tests here.
/// One torrent seeding, its data taken as one the broker downloaded (a made torrent's is
/// the user's, which closing with --delete-data leaves).
async fn one_seeding() -> (Setup, Arc<Recorded>, TorrentId) {
    let setup = setup().await;
    let sink = patron(&setup.service, 1);
    let id = seeding(&setup, 1, "one.bin").await;
    setup
        .service
        .update_record(id, |restore| restore.data_was_there = false)
        .expect("record");
    (setup, sink, id)
}

fn close(id: TorrentId) -> CloseTorrent {
    CloseTorrent {
        torrent: TorrentRef::Id(id),
        delete_data: true,
        force: false,
    }
}

/// Every record on disk, as one text (`{id: record}`).
fn records(service: &Service) -> String {
    let dir = service.config.state_dir.join(crate::records::FOLDER);
    let mut all = serde_json::Map::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let (Some(id), Ok(bytes)) = (name.strip_suffix(".json"), std::fs::read(entry.path())) {
            if let Ok(value) = serde_json::from_slice(&bytes) {
                all.insert(id.to_owned(), value);
            }
        }
    }
    serde_json::Value::Object(all).to_string()
}

fn holders(service: &Service, id: TorrentId) -> Option<usize> {
    service.state().registry.get(id).map(|e| e.holders.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_whose_records_cannot_be_saved_changes_nothing() {
    let (setup, _sink, id) = one_seeding().await;
    let service = &setup.service;
    let before = records(service);
    assert!(before.contains(&format!("\"{}\"", id.0)), "{before}");

    service.faults.save.store(true, Ordering::Release);
    let error = service.close(1, close(id)).await.unwrap_err();
    assert_eq!(error.kind, proto::ErrorKind::Io, "{error}");
    // Everything as it was: in the registry, held by the caller, in the records, running
    // in the engine, its data in place.
    assert_eq!(holders(service, id), Some(1));
    assert_eq!(records(service), before);
    assert!(service.status(TorrentRef::Id(id)).is_ok());
    assert!(service.torrent_file_path(id).exists());
    assert!(setup.root.join("one.bin").exists());

    // Asked again, with the disk back, it closes.
    let closed = service.close(1, close(id)).await.unwrap();
    assert_eq!(
        closed,
        Closed {
            id,
            stopped: true,
            data_deleted: true
        }
    );
    assert!(!records(service).contains(&format!("\"{}\"", id.0)));
    assert!(!setup.root.join("one.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_the_engine_refuses_puts_the_torrent_back_everywhere() {
    let (setup, _sink, id) = one_seeding().await;
    let service = &setup.service;
    let before = records(service);

    service.faults.engine_stop.store(true, Ordering::Release);
    let error = service.close(1, close(id)).await.unwrap_err();
    assert_eq!(error.kind, proto::ErrorKind::Engine, "{error}");
    assert!(error.message.contains("is not closed"), "{error}");
    assert_eq!(holders(service, id), Some(1));
    assert_eq!(records(service), before, "the records name it again");
    assert!(service.torrent_file_path(id).exists());
    assert!(setup.root.join("one.bin").exists(), "its data stays");
    // Its files are still its own: another torrent of them is refused.
    let owned = service.room_for_files(&[setup.root.join("one.bin")], None);
    assert_eq!(owned.unwrap_err().kind, proto::ErrorKind::FileOwned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recheck_the_engine_will_not_take_back_keeps_the_record_and_tells_the_holders() {
    let (setup, sink, id) = one_seeding().await;
    let service = &setup.service;

    service.faults.engine_add.store(true, Ordering::Release);
    let error = service.recheck(TorrentRef::Id(id)).await.unwrap_err();
    assert!(error.message.contains("could not start again"), "{error}");
    // Kept as a record not restored: shown in error, its files still its own, tried again
    // at the next start.
    let status = service.status(TorrentRef::Id(id)).unwrap();
    assert!(
        matches!(&status.state, TorrentState::Error(why) if why.contains("recheck")),
        "{status:?}"
    );
    assert!(records(service).contains(&format!("\"{}\"", id.0)));
    let owned = service.room_for_files(&[setup.root.join("one.bin")], None);
    assert_eq!(owned.unwrap_err().kind, proto::ErrorKind::FileOwned);
    let told = sink.events.lock().unwrap().clone();
    assert!(
        matches!(told.as_slice(), [Event::TorrentGone { id: gone, .. }] if *gone == id),
        "{told:?}"
    );
    // A patron can still close it (it is forgotten; its data stays).
    let closed = service.close(1, close(id)).await.unwrap();
    assert!(closed.stopped && !closed.data_deleted);
    assert!(service.status(TorrentRef::Id(id)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recheck_gives_the_torrent_a_new_handle_and_streams_see_it() {
    let (setup, _sink, id) = one_seeding().await;
    let service = &setup.service;
    let (_, before) = service.running(TorrentRef::Id(id)).unwrap();
    service.recheck(TorrentRef::Id(id)).await.unwrap();
    let (_, after) = service.running(TorrentRef::Id(id)).unwrap();
    assert!(!Arc::ptr_eq(&before, &after));
    let life = crate::streams::Torrents::life(service.as_ref(), id).unwrap();
    assert!(life.is(&after) && !life.is(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_sends_each_holder_a_status_only_when_it_changed() {
    let setup = setup().await;
    let service = &setup.service;
    let sink = patron(service, 1);
    let other = patron(service, 2);
    let id = seeding(&setup, 1, "one.bin").await;
    let none = std::collections::HashMap::new();
    super::fanout::fan_out(service, None, &none);
    super::fanout::fan_out(service, None, &none);
    super::fanout::fan_out(service, Some(&std::collections::HashSet::from([id])), &none);
    let sent = sink.statuses.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].id, id);
    assert!(other.statuses.lock().unwrap().is_empty(), "not a holder");
    // A change that matters (paused) goes out once more.
    service.pause(TorrentRef::Id(id)).await.unwrap();
    super::fanout::fan_out(service, None, &none);
    super::fanout::fan_out(service, None, &none);
    assert_eq!(sink.statuses.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patron_that_leaves_lets_go_of_its_holds_and_its_ephemeral_torrents() {
    let setup = setup().await;
    let service = &setup.service;
    let _one = patron(service, 1);
    let _two = patron(service, 2);
    let id = seeding(&setup, 1, "one.bin").await;
    service.follow(2, TorrentRef::Id(id)).unwrap();
    assert_eq!(holders(service, id), Some(2));
    service.disconnect(1);
    assert_eq!(holders(service, id), Some(1));
    assert!(!service.is_connected(1));
    // A hold asked for by a patron gone meanwhile is not taken.
    assert!(service.follow(1, TorrentRef::Id(id)).is_ok());
    assert_eq!(holders(service, id), Some(1));
}

/// The transport below a dispatcher, as the dispatcher sees it: resumes are counted.
#[derive(Default)]
struct CountedTransport {
    resumed: AtomicUsize,
}

impl Transport for CountedTransport {
    fn resume(&self, _patron: PatronId) {
        self.resumed.fetch_add(1, Ordering::AcqRel);
    }
    fn forget(&self, _patron: PatronId) {}
}

/// A patron of `dispatcher` whose replies are read raw off the other end of its socket.
struct RawPatron {
    id: PatronId,
    outbox: Arc<crate::patron::Outbox>,
    theirs: std::os::fd::OwnedFd,
}

impl RawPatron {
    fn connect(dispatcher: &Arc<Dispatcher>, id: PatronId) -> RawPatron {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let unread = dispatcher.unread().clone();
        let outbox = crate::patron::Outbox::new(id, ours, None, None, unread);
        dispatcher.add_patron(id, 0, outbox.clone()).unwrap();
        RawPatron { id, outbox, theirs }
    }

    /// Sends pauses (each waits on the add lock) until the dispatcher says to hold back;
    /// how many were sent then (`None`: never within `at_most`).
    fn pause_until_held_back(&self, dispatcher: &Arc<Dispatcher>, at_most: usize) -> Option<usize> {
        for n in 1..=at_most {
            let request = Request {
                id: RequestId(n as u64),
                body: RequestBody::Pause(TorrentRef::Id(TorrentId(999))),
            };
            match dispatcher.dispatch(self.id, request, 30) {
                Dispatched::Taken => {}
                Dispatched::HoldBack => return Some(n),
                Dispatched::Gone => panic!("the patron went"),
            }
        }
        None
    }

    /// Reads its replies (one datagram each: small events) until `expected` came, or 30 s;
    /// then checks no reply more comes.
    async fn replies(&self, expected: usize) -> usize {
        let recv = |buf: &mut [u8]| {
            nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.theirs),
                buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
        };
        let mut replies = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut buf = vec![0u8; 64 * 1024];
        while replies < expected && std::time::Instant::now() < deadline {
            self.outbox.flush();
            match recv(&mut buf) {
                Ok(n) if n > 0 => replies += 1,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.outbox.flush();
        if recv(&mut buf).is_ok_and(|n| n > 0) {
            replies += 1; // a reply too many
        }
        replies
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_holds_a_patron_back_at_its_in_flight_limit_and_answers_each_request_once() {
    let setup = setup().await;
    let service = &setup.service;
    let dispatcher = Dispatcher::new(service.clone());
    let transport = Arc::new(CountedTransport::default());
    dispatcher.attach(transport.clone());
    let patron = RawPatron::connect(&dispatcher, 7);
    // Every pause waits on the add lock, held here: nothing is answered meanwhile.
    let adding = service.adding.lock().await;
    let held_back_at = patron.pause_until_held_back(&dispatcher, MAX_IN_FLIGHT_REQUESTS + 10);
    assert_eq!(held_back_at, Some(MAX_IN_FLIGHT_REQUESTS));
    assert_eq!(transport.resumed.load(Ordering::Acquire), 0);
    drop(adding);
    // Each request gets its one reply, and the reader is resumed once the patron's requests
    // in flight fall to half the limit.
    assert_eq!(
        patron.replies(MAX_IN_FLIGHT_REQUESTS).await,
        MAX_IN_FLIGHT_REQUESTS
    );
    assert_eq!(transport.resumed.load(Ordering::Acquire), 1);
}

/// Per-patron bounds times 4,096 patrons is not a bound: past the whole broker's, every
/// patron whose request is read is held back too (one request at a time each), and each
/// request still gets its one reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_holds_patrons_back_at_the_whole_brokers_in_flight_bound() {
    let setup = setup().await;
    let service = &setup.service;
    // 20 requests of 30 bytes fill it.
    let dispatcher = Dispatcher::bounded(service.clone(), 600);
    let transport = Arc::new(CountedTransport::default());
    dispatcher.attach(transport.clone());
    let first = RawPatron::connect(&dispatcher, 7);
    let second = RawPatron::connect(&dispatcher, 8);
    let adding = service.adding.lock().await;
    // Far below its own bound of 256 requests, the first is held back at the broker's.
    assert_eq!(first.pause_until_held_back(&dispatcher, 100), Some(20));
    // And so is the second, at its first request: the broker's bound is full.
    assert_eq!(second.pause_until_held_back(&dispatcher, 100), Some(1));
    drop(adding);
    assert_eq!(first.replies(20).await, 20);
    assert_eq!(second.replies(1).await, 1);
    // Both read again once their own requests were answered.
    assert_eq!(transport.resumed.load(Ordering::Acquire), 2);
}

/// A recheck of torrent `id`, under way in a task of its own.
fn start_recheck(
    service: &Arc<Service>,
    id: TorrentId,
) -> tokio::task::JoinHandle<Result<TorrentStatus, proto::ProtoError>> {
    let service = service.clone();
    tokio::spawn(async move { service.recheck(TorrentRef::Id(id)).await })
}

/// Waits for a recheck to be taken and for the check itself to end.
async fn finish_recheck(
    service: &Service,
    id: TorrentId,
    rechecking: tokio::task::JoinHandle<Result<TorrentStatus, proto::ProtoError>>,
) {
    rechecking.await.unwrap().unwrap();
    let (_, handle) = service.running(TorrentRef::Id(id)).unwrap();
    handle.wait_until_initialized().await.unwrap();
}

/// Review (hostile reviewer): listing a torrent's files or peers takes no add lock, so it can
/// land in the moment a recheck has the torrent out of the engine ([`Life::Restarting`]).
/// Before the refactor it answered off the handle it had (the metadata is the same); now it
/// is refused with an `engine` error ("ask again in a moment").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_listing_files_during_a_recheck_is_answered() {
    let (setup, _sink, id) = one_seeding().await;
    let service = &setup.service;
    let mut refused = Vec::new();
    let mut listed = 0usize;
    for _ in 0..20 {
        let rechecking = start_recheck(service, id);
        while !rechecking.is_finished() {
            let files = service
                .files(proto::FilesRequest {
                    torrent: TorrentRef::Id(id),
                    only: None,
                })
                .await;
            match files {
                Ok(_) => listed += 1,
                Err(e) => refused.push(e),
            }
            tokio::task::yield_now().await;
        }
        finish_recheck(service, id, rechecking).await;
    }
    assert!(
        refused.is_empty(),
        "{} of {} listings refused during rechecks, e.g. {:?}",
        refused.len(),
        refused.len() + listed,
        refused.first()
    );
}

/// Review (hostile reviewer): a magnet of a running torrent joins it before the add lock. If
/// that lands while a recheck has the torrent out of the engine ([`Life::Restarting`]), the
/// peers the joiner names are neither remembered nor dialled, yet the reply does not list
/// "peers" as not applied. Before the refactor they were remembered (the dial failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_peers_named_by_a_magnet_joiner_during_a_recheck_are_kept_or_reported() {
    let (setup, _sink, id) = one_seeding().await;
    let service = &setup.service;
    let hash = service.state().registry.get(id).unwrap().info.info_hash;
    // Outside a recheck, a joiner's peers are remembered.
    let mut create = proto::CreateNewTorrent::new(proto::TorrentSource::Magnet(format!(
        "magnet:?xt=urn:btih:{hash}"
    )));
    create.peers = vec!["127.0.0.1:40999".into()];
    assert!(matches!(
        service.add(1, create).await,
        Ok(super::Started::Joined { .. })
    ));
    let addr: std::net::SocketAddr = "127.0.0.1:40999".parse().unwrap();
    assert!(service
        .state()
        .registry
        .get(id)
        .unwrap()
        .restore
        .knows_peer(&addr));
    let mut port = 41000u16;
    let mut lost = Vec::new();
    let mut joins = 0;
    for _ in 0..10 {
        let rechecking = start_recheck(service, id);
        while !rechecking.is_finished() {
            port += 1;
            let peer = format!("127.0.0.1:{port}");
            let mut create = proto::CreateNewTorrent::new(proto::TorrentSource::Magnet(format!(
                "magnet:?xt=urn:btih:{hash}"
            )));
            create.peers = vec![peer.clone()];
            let restarting = || {
                matches!(
                    crate::streams::Torrents::life(service.as_ref(), id),
                    Some(crate::registry::Life::Restarting)
                )
            };
            let before = restarting();
            let added = service.add(1, create).await;
            let after = restarting();
            match added {
                Ok(super::Started::Joined { not_applied, .. }) => {
                    joins += 1;
                    if !before && !after {
                        let addr: std::net::SocketAddr = peer.parse().unwrap();
                        let kept = service
                            .state()
                            .registry
                            .get(id)
                            .is_some_and(|e| e.restore.knows_peer(&addr));
                        assert!(kept, "a join outside any restart lost its peer");
                    }
                    let addr: std::net::SocketAddr = peer.parse().unwrap();
                    let kept = service
                        .state()
                        .registry
                        .get(id)
                        .is_some_and(|e| e.restore.knows_peer(&addr));
                    if !kept && !not_applied.iter().any(|n| n == "peers") {
                        lost.push(peer);
                    }
                }
                Ok(super::Started::New { .. }) => panic!("a second torrent of the same hash"),
                Err(e) => panic!("{e}"),
            }
        }
        finish_recheck(service, id, rechecking).await;
    }
    assert!(
        lost.is_empty(),
        "{} of {joins} joiners' peers neither kept nor reported not applied: {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
}
