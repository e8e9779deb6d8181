//! Every message crosses a real ipc-channel (an OS socket pair, postcard on the wire) and
//! must come back equal: this is what catches a type postcard cannot decode.

use super::*;
use ipc_channel::ipc;

fn round_trip<T>(value: T) -> T
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let (tx, rx) = ipc::channel::<T>().expect("channel");
    tx.send(value).expect("send");
    rx.recv().expect("recv")
}

fn sample_info() -> TorrentInfo {
    TorrentInfo {
        id: TorrentId(7),
        info_hash: InfoHash([0xab; 20]),
        name: "ubuntu.iso".into(),
        save_folder: "/home/me/Downloads".into(),
        total_bytes: 3 << 30,
    }
}

fn sample_status() -> TorrentStatus {
    TorrentStatus {
        id: TorrentId(7),
        info_hash: InfoHash([0xab; 20]),
        name: "ubuntu.iso".into(),
        state: TorrentState::Error("disk full".into()),
        progress: 0.25,
        bytes_done: 1 << 20,
        bytes_total: 4 << 20,
        download_rate: 1000,
        upload_rate: 0,
        uploaded: 5,
        peers: 3,
        seeds: 1,
        eta_secs: Some(42),
        complete: false,
        queue_position: None,
        downloaded: 9,
        seeding_secs: 30,
        seed_limits: crate::SeedingLimits {
            ratio: Some(2.0),
            seed_time_secs: None,
            idle_secs: Some(600),
        },
        labels: vec!["films".into()],
    }
}

#[test]
fn every_request_round_trips() {
    let bodies = vec![
        RequestBody::CreateNewTorrent(CreateNewTorrent {
            source: TorrentSource::TorrentFile(vec![b'd', 0, 255, b'e']),
            output: Some("/tmp/x".into()),
            only_files: Some(vec![FileRef::Index(0), FileRef::Path("sub/b".into())]),
            paused: true,
            peers: vec!["127.0.0.1:6881".into()],
            ephemeral: true,
            overwrite: true,
            max_download_rate: Some(1 << 20),
            max_upload_rate: Some(u64::MAX),
            seeding: crate::TorrentSeeding {
                ratio: Some(crate::SeedLimit::At(2.5)),
                seed_time_secs: Some(crate::SeedLimit::Unlimited),
                idle_secs: None,
            },
            move_completed_to: Some("/srv/done".into()),
            labels: vec!["films".into(), "4k".into()],
        }),
        RequestBody::CreateNewTorrent(CreateNewTorrent::new(TorrentSource::Magnet(
            "magnet:?xt=urn:btih:abababababababababababababababababababab".into(),
        ))),
        RequestBody::CloseTorrent(CloseTorrent {
            torrent: TorrentRef::InfoHash(InfoHash([1; 20])),
            delete_data: true,
            force: false,
        }),
        RequestBody::List,
        RequestBody::Status(TorrentRef::Id(TorrentId(3))),
        RequestBody::Follow(TorrentRef::Id(TorrentId(4))),
        RequestBody::MakeTorrent(MakeTorrent {
            path: "/data/folder".into(),
            piece_size: Some(1 << 18),
            trackers: vec!["http://127.0.0.1:6969/announce".into()],
            seed: true,
        }),
        RequestBody::StopBroker,
        RequestBody::BrokerInfo,
        RequestBody::Pause(TorrentRef::Id(TorrentId(5))),
        RequestBody::Resume(TorrentRef::InfoHash(InfoHash([2; 20]))),
        RequestBody::Recheck(TorrentRef::Id(TorrentId(6))),
        RequestBody::Files(crate::FilesRequest {
            torrent: TorrentRef::Id(TorrentId(7)),
            only: Some(vec![FileRef::Index(0), FileRef::Index(3)]),
        }),
        RequestBody::Peers(crate::PeersRequest {
            torrent: TorrentRef::Id(TorrentId(8)),
            add: vec!["127.0.0.1:51413".into()],
        }),
        RequestBody::OpenStream(crate::OpenStream {
            torrent: TorrentRef::Id(TorrentId(9)),
            file: Some(crate::FileRef::Path("dir/a.bin".into())),
            position: 1 << 40,
        }),
        RequestBody::OpenStream(crate::OpenStream {
            torrent: TorrentRef::InfoHash(InfoHash([3; 20])),
            file: Some(crate::FileRef::Index(2)),
            position: 0,
        }),
        RequestBody::StreamAt(crate::StreamAt {
            stream: crate::StreamId(1),
            position: 77,
        }),
        RequestBody::StreamRead(crate::StreamRead {
            stream: crate::StreamId(2),
            position: 5,
            length: crate::MAX_STREAM_READ,
        }),
        RequestBody::CloseStream(crate::StreamId(3)),
        RequestBody::SetLimits(crate::SetLimits {
            torrent: None,
            download: Some(2 << 20),
            upload: Some(0),
            alt: crate::AltChange {
                download: Some(1 << 20),
                upload: Some(0),
                schedule: Some(crate::AltSchedule::parse("mon-fri 09:00-18:00")),
                hours: crate::AltSchedule::parse("sat 10:00-11:00"),
                on: Some(true),
            },
        }),
        RequestBody::SetLimits(crate::SetLimits {
            torrent: Some(TorrentRef::Id(TorrentId(4))),
            download: None,
            upload: Some(512),
            alt: Default::default(),
        }),
        RequestBody::SetLimits(crate::SetLimits::default()),
        RequestBody::SetQueue(crate::SetQueue {
            max_active_downloads: Some(Some(5)),
            max_active_seeds: Some(None),
            stalled_after_secs: None,
        }),
        RequestBody::MoveInQueue(crate::MoveInQueue {
            torrent: TorrentRef::Id(TorrentId(4)),
            to: crate::QueueMove::Bottom,
        }),
        RequestBody::SetSeeding(crate::SetSeeding {
            torrent: None,
            ratio: Some(Some(2.0)),
            seed_time_secs: Some(None),
            idle_secs: None,
            action: Some(crate::SeedAction::Close),
            own: crate::OwnSeedingChange::default(),
        }),
        RequestBody::SetSeeding(crate::SetSeeding {
            torrent: Some(TorrentRef::Id(TorrentId(2))),
            own: crate::OwnSeedingChange {
                ratio: Some(Some(crate::SeedLimit::Unlimited)),
                seed_time_secs: Some(Some(crate::SeedLimit::At(3600))),
                idle_secs: Some(None),
            },
            ..Default::default()
        }),
        RequestBody::MoveStorage(crate::MoveStorage {
            torrent: TorrentRef::Id(TorrentId(2)),
            to: "/srv/done".into(),
        }),
        RequestBody::SetLabels(crate::SetLabels {
            torrent: TorrentRef::Id(TorrentId(2)),
            labels: vec!["a".into()],
        }),
        RequestBody::ConfigureLabel(Box::new(crate::ConfigureLabel {
            name: Some("films".into()),
            folder: Some(None),
            download: Some(Some(1 << 20)),
            upload: None,
            seeding: crate::OwnSeedingChange {
                ratio: Some(Some(crate::SeedLimit::At(2.0))),
                ..Default::default()
            },
            remove: false,
        })),
    ];
    for (n, body) in bodies.into_iter().enumerate() {
        let sent = Request {
            id: RequestId(n as u64),
            body,
        };
        let got = round_trip(sent.clone());
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
    }
}

#[test]
fn every_event_round_trips() {
    let events = vec![
        Event::NewTorrentCreated {
            request: RequestId(1),
            torrent: sample_info(),
            queued: true,
        },
        Event::TorrentAlreadyDownloading {
            request: RequestId(2),
            torrent: sample_info(),
            not_applied: vec!["output".into(), "paused".into()],
        },
        Event::TorrentStartFail {
            request: RequestId(3),
            error: ProtoError::new(ErrorKind::InvalidTorrent, "not bencode"),
        },
        Event::TorrentClosed {
            request: RequestId(4),
            id: TorrentId(7),
            stopped: false,
            data_deleted: false,
        },
        Event::TorrentList {
            request: RequestId(5),
            torrents: vec![TorrentSummary {
                info: sample_info(),
                status: sample_status(),
                holders: 2,
                held_by_you: true,
                ephemeral: false,
            }],
        },
        Event::Status {
            request: RequestId(6),
            status: sample_status(),
        },
        Event::Following {
            request: RequestId(7),
            torrent: sample_info(),
        },
        Event::TorrentMade {
            request: RequestId(8),
            made: MadeTorrent {
                torrent_file: vec![1, 2, 3],
                info_hash: InfoHash([9; 20]),
                name: "f".into(),
                pieces: 4,
                piece_size: 16384,
                total_bytes: 65536,
                seeding: Some(sample_info()),
            },
        },
        Event::Ok {
            request: RequestId(9),
        },
        Event::BrokerInfo {
            request: RequestId(11),
            info: BrokerInfo {
                pid: 1,
                version: "0.1.0".into(),
                state_dir: "/s".into(),
                listen: "127.0.0.1:4240".into(),
                loopback_only: true,
                download_roots: vec!["/d".into()],
                patrons: 2,
                torrents: 3,
                kept: 1,
                streams: 4,
                open_files: 5,
                open_files_limit: 512,
                large_requests: (1, 256),
                large_request_bytes: (70_000, 1 << 28),
                files: (3, 4_000_000),
                board_waiters: (2, 1024),
                unread_bytes: (4096, 512 << 20),
                unread_regions: (1, 256),
                limits: crate::RateLimits {
                    download: Some(1 << 20),
                    upload: None,
                },
                queue: crate::QueueSettings {
                    max_active_downloads: Some(3),
                    max_active_seeds: None,
                    stalled_after_secs: Some(1800),
                },
                seeding: Default::default(),
                watch_dir: Some("/srv/watch".into()),
                move_completed_to: None,
                alt: crate::AltSpeed {
                    download: Some(1 << 20),
                    upload: None,
                    schedule: crate::AltSchedule::parse("22:00-06:00"),
                    hours: crate::AltSchedule::parse("22:00-06:00"),
                    on: false,
                },
            },
        },
        Event::Queue {
            request: RequestId(15),
            queue: crate::QueueSettings::default(),
        },
        Event::Seeding {
            request: RequestId(16),
            limits: crate::SeedingLimits {
                ratio: Some(1.5),
                seed_time_secs: None,
                idle_secs: Some(60),
            },
            action: crate::SeedAction::Pause,
        },
        Event::Limits {
            request: RequestId(14),
            limits: crate::RateLimits {
                download: None,
                upload: Some(512 << 10),
            },
            alt: Some(crate::AltSpeed::default()),
        },
        Event::Error {
            request: RequestId(10),
            error: ProtoError::new(ErrorKind::UnknownTorrent, "no torrent 9"),
        },
        Event::Files {
            request: RequestId(12),
            torrent: TorrentId(2),
            files: vec![crate::FileEntry {
                index: 3,
                path: "dir/a.bin".into(),
                size: 10,
                bytes_done: 4,
                selected: true,
            }],
        },
        Event::Peers {
            request: RequestId(13),
            torrent: TorrentId(2),
            dialled: vec!["127.0.0.1:6881".into()],
            banned: vec![crate::BannedPeer {
                address: "127.0.0.1:6882".into(),
                reason: "sent piece 3 with data that failed its hash check".into(),
            }],
            peers: vec![crate::PeerEntry {
                address: "127.0.0.1:6881".into(),
                client: Some("Transmission 3.00".into()),
                incoming: false,
                download_rate: 1,
                upload_rate: 2,
                downloaded: 3,
                uploaded: 4,
                progress: Some(0.5),
            }],
        },
        Event::StreamOpened {
            request: RequestId(14),
            stream: crate::StreamInfo {
                id: crate::StreamId(1),
                torrent: TorrentId(2),
                file: crate::FileEntry {
                    index: 0,
                    path: "a.mkv".into(),
                    size: 1 << 33,
                    bytes_done: 0,
                    selected: true,
                },
                local_path: "/d/a.mkv".into(),
                local_file: Some(crate::FileIdentity {
                    device: 2049,
                    inode: u64::MAX,
                }),
                verified_to: 16384,
            },
        },
        Event::StreamVerified {
            request: RequestId(15),
            stream: crate::StreamId(1),
            position: 3,
            verified_to: 3,
        },
        Event::StreamProgress {
            stream: crate::StreamId(1),
            position: 3,
            verified_to: 1 << 20,
        },
        Event::StreamData {
            request: RequestId(16),
            stream: crate::StreamId(1),
            position: 8,
            bytes: vec![0, 1, 255],
        },
        Event::StreamEnded {
            stream: crate::StreamId(1),
            error: ProtoError::new(ErrorKind::Engine, "the torrent failed"),
        },
        Event::TorrentStatusUpdate(sample_status()),
        Event::TorrentGone {
            id: TorrentId(1),
            reason: "closed by another patron".into(),
        },
        Event::BrokerStopping {
            reason: "SIGTERM".into(),
        },
        Event::Disconnected {
            reason: "too slow".into(),
        },
    ];
    for sent in events {
        let got = round_trip(sent.clone());
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
        assert_eq!(got.request(), sent.request());
    }
}

#[test]
fn welcome_carries_a_working_event_channel() {
    let (evt_tx, evt_rx) = ipc::channel::<Event>().unwrap();
    let welcome = round_trip(Welcome::Accepted {
        broker_pid: 1,
        patron_id: 2,
        events: evt_rx,
    });
    let Welcome::Accepted { events, .. } = welcome else {
        panic!("not accepted");
    };
    evt_tx
        .send(Event::Ok {
            request: RequestId(5),
        })
        .unwrap();
    assert_eq!(events.recv().unwrap().request(), Some(RequestId(5)));
}

#[test]
fn torrent_refs_parse_as_users_type_them() {
    assert_eq!(TorrentRef::parse("12"), Some(TorrentRef::Id(TorrentId(12))));
    let hex = "ABABABABABABABABABABABABABABABABABABABAB";
    assert_eq!(
        TorrentRef::parse(hex),
        Some(TorrentRef::InfoHash(InfoHash([0xab; 20])))
    );
    assert_eq!(TorrentRef::parse("nope"), None);
    assert_eq!(TorrentRef::parse(&hex[1..]), None);
}

/// A list past its bound is refused where it is decoded: a few bytes on the wire per entry
/// must not become the broker's gigabytes.
#[test]
fn lists_in_requests_are_bounded_where_they_are_decoded() {
    let request = |n: usize| {
        ToBroker::Request(Request {
            id: RequestId(1),
            body: RequestBody::Files(FilesRequest {
                torrent: TorrentRef::Id(TorrentId(0)),
                only: Some(vec![FileRef::Index(0); n]),
            }),
        })
    };
    let decode = |message: &ToBroker| {
        let bytes = wire::encode_payload(message).expect("encode");
        wire::decode_payload::<ToBroker>(&bytes)
    };
    assert!(decode(&request(bounded::MAX_FILES_NAMED)).is_ok());
    assert!(decode(&request(bounded::MAX_FILES_NAMED + 1)).is_err());
    let peers = ToBroker::Request(Request {
        id: RequestId(2),
        body: RequestBody::Peers(PeersRequest {
            torrent: TorrentRef::Id(TorrentId(0)),
            add: vec![String::new(); bounded::MAX_ADDRESSES_NAMED + 1],
        }),
    });
    assert!(decode(&peers).is_err());
}

#[test]
fn alternative_schedules_read_as_users_type_them_and_span_midnight() {
    use crate::AltSchedule;
    let work = AltSchedule::parse("mon-fri 09:00-18:00").expect("parses");
    assert_eq!(work.to_string(), "mon,tue,wed,thu,fri 09:00-18:00");
    assert!(work.contains(0, 9 * 60));
    assert!(!work.contains(0, 18 * 60), "the end is not in it");
    assert!(!work.contains(5, 10 * 60), "not on Saturday");
    let night = AltSchedule::parse("fri 22:00-06:00").expect("parses");
    assert!(night.contains(4, 23 * 60), "Friday night");
    assert!(night.contains(5, 5 * 60), "into Saturday morning");
    assert!(
        !night.contains(4, 5 * 60),
        "not Friday morning (Thursday's night is not on)"
    );
    let daily = AltSchedule::parse("00:00-24:00").expect("all day");
    assert!(daily.contains(6, 0) && daily.contains(2, 1439));
    assert_eq!(
        AltSchedule::parse("sun-tue 1:00-2:00").map(|s| s.days),
        Some(0b1000011)
    );
    for bad in [
        "",
        "mon",
        "mon 9-18",
        "xyz 09:00-10:00",
        "mon 25:00-26:00",
        "mon 09:00-10:00 x",
    ] {
        assert_eq!(AltSchedule::parse(bad), None, "{bad:?}");
    }
}

/// A wire fingerprint is the hash of the value's wire form, whatever its length against the
/// buffer it goes through: equal values, equal fingerprints; any change, another.
#[test]
fn wire_fingerprints_are_the_wire_forms_hashes() {
    use std::hash::{BuildHasher, Hasher};
    let keys = std::collections::hash_map::RandomState::new();
    let print = |value: &(String, u64, Vec<u8>)| {
        let mut hasher = keys.build_hasher();
        assert!(crate::hash_wire(value, &mut hasher));
        hasher.finish()
    };
    for len in [0, 5, 120, 127, 128, 129, 300] {
        let value = ("x".repeat(len), 7, vec![1u8; len]);
        let mut wire = keys.build_hasher();
        wire.write(&postcard::to_stdvec(&value).unwrap());
        assert_eq!(print(&value), wire.finish(), "{len}");
        let mut number = value.clone();
        number.1 = 8;
        let mut longer = value.clone();
        longer.2.push(1);
        assert_ne!(print(&value), print(&number), "{len}");
        assert_ne!(print(&value), print(&longer), "{len}");
    }
}
