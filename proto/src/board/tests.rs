use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn summary(id: u64, name: &str, state: TorrentState) -> TorrentSummary {
    let info = TorrentInfo {
        id: TorrentId(id),
        info_hash: InfoHash([id as u8; 20]),
        name: name.to_owned(),
        save_folder: format!("/data/{name}"),
        total_bytes: 1000 + id,
    };
    let mut status = TorrentStatus::idle(&info, state);
    status.bytes_done = id;
    status.eta_secs = Some(id * 2);
    status.peers = 3;
    status.seeds = 2;
    TorrentSummary {
        info,
        status,
        holders: 2,
        held_by_you: false,
        ephemeral: true,
    }
}

#[test]
fn what_is_written_is_read() {
    let board = BoardWriter::create(4, 42, 7).unwrap();
    let reader = board.reader().unwrap();
    let one = summary(1, "ubuntu.iso", TorrentState::Downloading);
    let two = summary(2, "broken", TorrentState::Error("disk full".into()));
    board.write(0, &one);
    board.write(3, &two);
    board.set_in_use(4);
    board.publish();
    assert_eq!(reader.get(TorrentId(1)), Some(one.clone()));
    assert_eq!(reader.status(TorrentId(1)), Some(one.status.clone()));
    assert_eq!(reader.status(TorrentId(9)), None);
    // Found again from its slot hint, and after the hint went stale.
    assert_eq!(
        reader.status(TorrentId(2)).map(|s| s.id),
        Some(TorrentId(2))
    );
    assert_eq!(
        reader.status(TorrentId(1)).map(|s| s.id),
        Some(TorrentId(1))
    );
    assert!(reader.all_texts_whole());
    assert_eq!(reader.find(&two.info.info_hash), Some(two.clone()));
    assert_eq!(reader.iter().collect::<Vec<_>>(), vec![one, two]);
    let header = reader.header();
    assert_eq!(
        (header.broker_pid, header.generation, header.capacity),
        (42, 7, 4)
    );
    assert_eq!(header.changes, 1);
    board.clear(0);
    assert_eq!(reader.get(TorrentId(1)), None);
    assert_eq!(reader.iter().count(), 1);
}

/// `list` lines come in id order, as `status_line` formats them, whatever slot each is in
/// and however long (a line too long for its region is formatted from the slot).
#[test]
fn list_lines_are_the_status_lines_in_id_order() {
    let board = BoardWriter::create(4, 1, 1).unwrap();
    let wide = "𝄞".repeat(40); // 4 bytes a character: the line no longer fits its region
    let entries = [
        (0, summary(7, "seventh", TorrentState::Seeding)),
        (1, summary(2, &wide, TorrentState::Downloading)),
        (
            3,
            summary(5, "fifth\x1b[2J", TorrentState::Error("gone".into())),
        ),
    ];
    for (slot, entry) in &entries {
        board.write(*slot, entry);
    }
    board.set_in_use(4);
    let mut printed = Vec::new();
    board.reader().unwrap().write_list(&mut printed).unwrap();
    let expected: String = [&entries[1].1, &entries[2].1, &entries[0].1]
        .iter()
        .map(|e| crate::text::status_line(&e.status) + "\n")
        .collect();
    assert!(crate::text::status_line(&entries[1].1.status).len() > LINE_BYTES);
    assert_eq!(String::from_utf8(printed).unwrap(), expected);
    board.clear(1);
    let mut printed = Vec::new();
    board.reader().unwrap().write_list(&mut printed).unwrap();
    assert_eq!(String::from_utf8(printed).unwrap().lines().count(), 2);
}

/// One torrent's status asks only its own slot whether a text was cut.
#[test]
fn one_torrents_texts_are_whole_or_not_whatever_the_others() {
    let board = BoardWriter::create(2, 1, 1).unwrap();
    let mut cut = summary(1, "cut", TorrentState::Seeding);
    cut.info.save_folder = "/d".repeat(FOLDER_BYTES);
    board.write(0, &cut);
    board.write(1, &summary(2, "whole", TorrentState::Seeding));
    board.set_in_use(2);
    let reader = board.reader().unwrap();
    assert!(!reader.all_texts_whole());
    let (read, whole) = reader.get_whole(TorrentId(2)).unwrap();
    assert_eq!((read.info.id, whole), (TorrentId(2), true));
    let (read, whole) = reader.get_whole(TorrentId(1)).unwrap();
    assert_eq!((read.info.id, whole), (TorrentId(1), false));
    assert!(reader.get_whole(TorrentId(3)).is_none());
}

#[test]
fn long_texts_are_cut_at_a_character_and_marked() {
    let board = BoardWriter::create(1, 1, 1).unwrap();
    let name = "é".repeat(NAME_BYTES); // 2 bytes each: twice the room
    let mut long = summary(1, &name, TorrentState::Error("x".repeat(1000)));
    long.info.save_folder = "/d".repeat(FOLDER_BYTES);
    board.write(0, &long);
    board.set_in_use(1);
    assert!(!board.reader().unwrap().all_texts_whole());
    let read = board.reader().unwrap().read(0).unwrap();
    assert!(read.status.name.ends_with('…'));
    assert!(read.status.name.len() <= NAME_BYTES + '…'.len_utf8());
    assert!(name.starts_with(read.status.name.trim_end_matches('…')));
    assert!(read.info.save_folder.ends_with('…'));
    let TorrentState::Error(message) = read.status.state else {
        panic!("state lost")
    };
    assert!(message.len() <= ERROR_BYTES + 3 && message.ends_with('…'));
}

/// A writer hammers slots with statuses whose fields all derive from one number; readers
/// check every read is whole. A torn read (half of one write, half of the next) breaks it.
#[test]
fn readers_never_see_a_torn_slot() {
    let board = Arc::new(BoardWriter::create(2, 1, 1).unwrap());
    board.set_in_use(2);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (board, done) = (board.clone(), done.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !done.load(Ordering::Relaxed) {
                k += 1;
                // Name and folder lengths vary with k, so a torn read mixes lengths too.
                let name = format!("{k}-").repeat((k % 20) as usize + 1);
                board.write((k % 2) as usize, &whole(k, &name));
            }
            k
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let reader = board.reader().unwrap();
            std::thread::spawn(move || {
                let (mut reads, mut distinct, mut last) = (0u64, 0u64, 0u64);
                // Until enough races happened (a loaded machine takes longer), bounded.
                let deadline = Instant::now() + Duration::from_secs(30);
                while (reads < 20_000 || distinct < 2_000) && Instant::now() < deadline {
                    for index in 0..2 {
                        if let Some(read) = reader.read(index) {
                            let k = read.info.id.0;
                            let name = format!("{k}-").repeat((k % 20) as usize + 1);
                            assert_eq!(read, whole(k, &name), "torn read at k={k}");
                            reads += 1;
                            if k != last {
                                distinct += 1;
                                last = k;
                            }
                        }
                    }
                }
                (reads, distinct)
            })
        })
        .collect();
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    for (reads, distinct) in results {
        // The test means something only if readers raced many different writes.
        assert!(
            reads > 10_000 && distinct > 1_000,
            "{reads} reads, {distinct} distinct, {writes} writes"
        );
    }
}

fn whole(k: u64, name: &str) -> TorrentSummary {
    let info = TorrentInfo {
        id: TorrentId(k),
        info_hash: InfoHash([k as u8; 20]),
        name: name.to_owned(),
        save_folder: name.chars().rev().collect(),
        total_bytes: k,
    };
    TorrentSummary {
        status: TorrentStatus {
            id: TorrentId(k),
            info_hash: InfoHash([k as u8; 20]),
            name: name.to_owned(),
            state: TorrentState::Downloading,
            progress: k as f64,
            bytes_done: k,
            bytes_total: k,
            download_rate: k,
            upload_rate: k,
            uploaded: k,
            peers: k as u32,
            seeds: k as u32,
            eta_secs: Some(k),
            complete: k % 2 == 0,
            queue_position: Some(k as u32),
            downloaded: k,
            seeding_secs: k,
            seed_limits: crate::SeedingLimits {
                ratio: (k % 3 == 0).then_some(k as f64 / 2.0),
                seed_time_secs: (k % 2 == 0).then_some(k),
                idle_secs: None,
            },
            // Every board test round-trips labels too, the longest a torrent may have among
            // them.
            labels: match k % 3 {
                0 => Vec::new(),
                1 => vec!["films".into(), "4k".into()],
                _ => (0..crate::MAX_LABELS)
                    .map(|n| format!("{n}{}", "x".repeat(crate::MAX_LABEL_BYTES - 1)))
                    .collect(),
            },
        },
        info,
        holders: k as u32,
        held_by_you: false,
        ephemeral: k % 3 == 0,
    }
}

#[test]
fn a_reader_cannot_get_write_access() {
    use nix::sys::mman::{mprotect, MapFlags, ProtFlags};
    let board = BoardWriter::create(1, 1, 1).unwrap();
    let fd = board.reader_fd().unwrap();
    let len = NonZeroUsize::new(board_bytes(1)).unwrap();
    let shared_rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // The call is expected to fail; a mapping it made anyway would only leak until the end.
    // SAFETY: a fresh mapping at an address the kernel picks aliases nothing.
    let writable = unsafe { mmap(None, len, shared_rw, MapFlags::MAP_SHARED, &fd, 0) };
    assert!(writable.is_err(), "mapped the reader's fd writable");
    // Reopening the memfd read-write through /proc gives a writable fd, but the seal holds.
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap();
    // SAFETY: as above: a fresh mapping that aliases nothing, expected to be refused.
    let writable = unsafe { mmap(None, len, shared_rw, MapFlags::MAP_SHARED, &reopened, 0) };
    assert_eq!(writable.err(), Some(nix::errno::Errno::EPERM));
    assert!(
        std::io::Write::write(&mut &reopened, b"x").is_err(),
        "wrote through write(2)"
    );
    assert!(reopened.set_len(0).is_err(), "shrank the board");
    // A read-only mapping cannot be made writable afterwards.

    // A read-only mapping of `len` bytes of a sealed memfd at least that long, unmapped below.
    // SAFETY: a fresh mapping aliases nothing, and no access within `len` can fault.
    let readonly = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    }
    .unwrap();
    // Changing its protection should fail.
    // SAFETY: `readonly` is the mapping just made, `len` long, and no reference points into it.
    let upgraded = unsafe { mprotect(readonly, len.get(), shared_rw) };
    assert!(upgraded.is_err(), "mprotect made the mapping writable");
    // SAFETY: exactly the pointer and length mmap returned; nothing refers into it.
    unsafe { munmap(readonly, len.get()) }.unwrap();
}

#[test]
fn only_sealed_boards_are_mapped() {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let unsealed = memfd_create(c"fake", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&unsealed, board_bytes(4) as libc::off_t).unwrap();
    assert!(BoardReader::map(unsealed).is_err());
    let tiny = memfd_create(c"tiny", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    assert!(BoardReader::map(tiny).is_err());
}

#[test]
fn waiters_wake_on_publish_and_time_out_without() {
    let board = Arc::new(BoardWriter::create(1, 1, 1).unwrap());
    let reader = board.reader().unwrap();
    let started = Instant::now();
    assert_eq!(reader.wait_for_change(0, Duration::from_millis(100)), 0);
    assert!(started.elapsed() >= Duration::from_millis(100));
    let publisher = {
        let board = board.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            board.publish();
        })
    };
    let started = Instant::now();
    assert_eq!(reader.wait_for_change(0, Duration::from_secs(10)), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    publisher.join().unwrap();
    board.mark(STOPPED);
    assert!(reader.header().stopped);
    assert!(!reader.is_current());
}

/// A board's texts too long for their slot, error messages and labels live in the slots'
/// extras, whose pages are written only when used: ten thousand idle seeds with ordinary
/// names cost their slots and lines, not room for texts they do not have (issue 23).
#[test]
fn short_texts_leave_the_extras_unwritten() {
    const N: usize = 1024;
    let board = BoardWriter::create(N, 1, 1).unwrap();
    let stored = || {
        nix::sys::stat::fstat(board.memfd.as_raw_fd())
            .unwrap()
            .st_blocks
            * 512
    };
    for i in 0..N {
        let name = format!("seed-{i:05}.txt");
        board.write(i, &summary(i as u64 + 1, &name, TorrentState::Seeding));
    }
    board.set_in_use(N);
    // Its slot and line (352 and 160 bytes); room for every text would be 1.4 KiB.
    let per_torrent = stored() as usize / N;
    assert!(
        per_torrent <= 576,
        "{per_torrent} bytes stored a torrent (slot and line: {})",
        (SLOT_WORDS + LINE_WORDS) * 8
    );
    // Texts that need the extra still go there, and come back whole.
    let mut long = summary(
        7,
        &"n".repeat(NAME_INLINE + 1),
        TorrentState::Error("x".into()),
    );
    long.info.save_folder = "/f".repeat(FOLDER_INLINE);
    long.status.labels = vec!["films".into()];
    board.write(5, &long);
    assert_eq!(board.reader().unwrap().get(TorrentId(7)), Some(long));
    assert!(stored() as usize > N * per_torrent);
}

/// A board that grows takes its slots over as they are: texts in the slot or its extra,
/// cut ones still marked cut (`list --json` then asks the broker for them whole), errors,
/// labels and `list` lines.
#[test]
fn a_copied_slot_reads_as_the_original() {
    let old = BoardWriter::create(4, 1, 1).unwrap();
    let mut cut = summary(1, &"é".repeat(NAME_BYTES), TorrentState::Seeding);
    cut.info.save_folder = "/f".repeat(FOLDER_BYTES);
    let long = summary(
        2,
        &"n".repeat(NAME_INLINE + 3),
        TorrentState::Error("no".into()),
    );
    let mut labelled = summary(3, "short", TorrentState::Paused);
    labelled.status.labels = vec!["films".into(), "4k".into()];
    for (index, s) in [&cut, &long, &labelled].into_iter().enumerate() {
        old.write(index, s);
    }
    old.set_in_use(3);
    let new = BoardWriter::create(8, 1, 2).unwrap();
    for index in 0..3 {
        new.copy_from(&old, index);
    }
    new.set_in_use(3);
    let (before, after) = (old.reader().unwrap(), new.reader().unwrap());
    assert_eq!(
        after.iter().collect::<Vec<_>>(),
        before.iter().collect::<Vec<_>>()
    );
    assert!(!after.all_texts_whole(), "the cut name is still marked cut");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    before.write_list(&mut a).unwrap();
    after.write_list(&mut b).unwrap();
    assert_eq!(String::from_utf8(b).unwrap(), String::from_utf8(a).unwrap());
}

/// A reader tells its broker gone as soon as it ends, reaped or not (a pidfd of it), and one
/// mapped after its broker went never takes it for alive.
#[test]
fn a_reader_sees_its_broker_end_even_unreaped() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("a process to stand for the broker");
    let board = BoardWriter::create(1, child.id(), 1).unwrap();
    let reader = board.reader().unwrap();
    assert!(matches!(reader.broker, BrokerWatch::Pidfd(_)));
    assert!(reader.broker_alive());
    child.kill().expect("killed");
    // Not reaped (a zombie) until the end of the test.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.broker_alive() {
        assert!(
            Instant::now() < deadline,
            "the ended broker still seen alive"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !board.reader().unwrap().broker_alive(),
        "mapped after it ended"
    );
    child.wait().expect("reaped");
    let mapped_after = board.reader().unwrap();
    assert!(matches!(mapped_after.broker, BrokerWatch::Gone));
    assert!(!mapped_after.broker_alive());
}
