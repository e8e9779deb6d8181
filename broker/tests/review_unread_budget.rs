//! Review tests (hostile reviewer): the whole broker's budget for unread events
//! (`budget::UnreadBudget`) against outboxes whose patrons never read.

use proto::Event;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use torrent_broker::budget::UnreadBudget;
use torrent_broker::patron::{Outbox, Pushed, MAX_QUEUED_BYTES, MAX_REGION_BYTES};

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// An event larger than a patron's region room (so never a region: it goes as fragments)
/// and under its own queue bound (so it is not cut off for it).
fn big_event(n: usize) -> Event {
    let size = MAX_REGION_BYTES + (MAX_QUEUED_BYTES - MAX_REGION_BYTES) / 2;
    // Not all one byte: keep the pages honest.
    let message: String = (0..size)
        .map(|i| (b'a' + ((i * 7 + n) % 26) as u8) as char)
        .collect();
    Event::ProtocolError { message }
}

/// Patrons that never read, each sent one large event, hold the broker's memory in the
/// message their outbox is writing: the whole broker's budget for unread events never sees
/// it, so no patron is ever cut off, however many there are.
#[test]
fn a_fragmented_event_being_written_is_not_counted_in_the_whole_brokers_budget() {
    const PATRONS: usize = 12;
    // A bound of 1 MiB (the smallest `--max-unread-bytes` takes).
    let unread = UnreadBudget::new(256, 256 << 20, 1 << 20);
    let told = Arc::new(AtomicUsize::new(0));
    let counter = told.clone();
    unread.on_over(Box::new(move || {
        counter.fetch_add(1, Ordering::AcqRel);
    }));
    let before = rss();
    let mut kept: Vec<(Arc<Outbox>, OwnedFd)> = Vec::new();
    for n in 0..PATRONS {
        let (ours, theirs) = torrent_broker::socket::seqpacket_pair().unwrap();
        let outbox = Outbox::new(n as u64, ours, None, None, unread.clone());
        let event = big_event(n);
        assert_eq!(outbox.push(event), Pushed::Queued);
        kept.push((outbox, theirs)); // the patron's end: open, never read
    }
    let grown = rss().saturating_sub(before);
    let (queued, max) = unread.queued_now();
    eprintln!(
        "{PATRONS} patrons that never read: the process grew {} MiB; the budget counts {queued} bytes (bound {max}); over-hook told {} times; queued_bytes per outbox {:?}; pending_bytes {:?}",
        grown >> 20,
        told.load(Ordering::Acquire),
        kept.iter().map(|(o, _)| o.queued_bytes()).collect::<Vec<_>>(),
        kept.iter().map(|(o, _)| o.pending_bytes()).collect::<Vec<_>>(),
    );
    // What the broker holds for these patrons is far past the bound...
    assert!(grown > 8 * max, "grew only {grown} bytes");
    // ...and the budget should say so (then the shedder would cut the largest off).
    assert!(
        unread.is_over(),
        "the budget counts {queued} bytes queued while the outboxes hold ~{} MiB for patrons that never read",
        grown >> 20
    );
}

/// A region read by a patron that then left (its outbox dropped, its end closed) is still
/// counted, and its socket's duplicate still open, until some later large event finds the
/// budget spent and sweeps: nothing lets go of it when the patron goes (DESIGN §4: "a patron
/// that leaves frees what it held at once").
#[test]
fn a_region_of_a_patron_that_left_stays_counted_and_its_socket_open_until_a_sweep() {
    let unread = UnreadBudget::new(256, 256 << 20, 1 << 30);
    for n in 0..32 {
        let (ours, theirs) = torrent_broker::socket::seqpacket_pair().unwrap();
        let outbox = Outbox::new(n, ours, None, None, unread.clone());
        let event = Event::ProtocolError {
            message: "x".repeat(4 * proto::LARGE_MESSAGE_BYTES),
        };
        assert_eq!(outbox.push(event), Pushed::Queued);
        // The patron goes: its end closes (whatever it read), and so does its outbox.
        drop(theirs);
        drop(outbox);
    }
    let held = unread.regions.use_now().0;
    // Each region counted keeps a duplicate of its socket open (the descriptors of the
    // whole process would also count other tests' running beside this one).
    let fds = unread.watched();
    eprintln!(
        "after 32 patrons came and went: {held} regions counted, {fds} descriptors still open"
    );
    assert_eq!(
        (held, fds),
        (0, 0),
        "regions counted and sockets held open for patrons long gone"
    );
}

/// A patron whose outbox closed before it let go of its socket (the broker noticed its
/// request channel close first) has its regions let go by the status loop's sweep, at most
/// a second later: nothing else may look at the budget again soon.
#[test]
fn a_region_let_go_after_its_outbox_closed_is_swept_within_a_second() {
    let unread = UnreadBudget::new(256, 256 << 20, 1 << 30);
    let (ours, theirs) = torrent_broker::socket::seqpacket_pair().unwrap();
    let outbox = Outbox::new(1, ours, None, None, unread.clone());
    let event = Event::ProtocolError {
        message: "x".repeat(4 * proto::LARGE_MESSAGE_BYTES),
    };
    assert_eq!(outbox.push(event), Pushed::Queued);
    outbox.close();
    drop(outbox);
    assert_eq!(unread.watched(), 1, "unread when its outbox closed");
    drop(theirs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while unread.watched() > 0 && std::time::Instant::now() < deadline {
        unread.sweep_now_and_then();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(unread.watched(), 0);
    assert_eq!(unread.regions.use_now().0, 0);
}
