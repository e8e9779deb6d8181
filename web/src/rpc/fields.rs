//! `torrent-get`'s fields, written straight into the answer's bytes.
//!
//! A list of every torrent is what RPC tools poll, every second or two, so it is the RPC's hot
//! path: each requested name is looked up once per request, not once per torrent, and each
//! value is written as JSON text with no `serde_json::Value` between the board and the wire
//! (one allocation per answer, not several per field).

use patron_client::proto::{FileEntry, TorrentState, TorrentStatus, TorrentSummary};
use serde::Serialize;

/// An answer being written: JSON text.
pub struct Json(Vec<u8>);

impl Json {
    pub fn with_capacity(bytes: usize) -> Json {
        Json(Vec::with_capacity(bytes))
    }

    /// Any value serde writes (numbers, strings with their escapes, a `Value`).
    pub fn put<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Writing to a Vec fails only for a map with keys that are not strings, which
        // nothing here writes; a failure would leave the text cut, so it writes `null`.
        if serde_json::to_writer(&mut self.0, value).is_err() {
            self.0.extend_from_slice(b"null");
        }
    }

    /// Text that is JSON already.
    pub fn raw(&mut self, text: &[u8]) {
        self.0.extend_from_slice(text);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Writes one field's value of a torrent.
type Write = fn(&TorrentSummary, &mut Json);

/// The fields the board answers, as Transmission names them. A field not here and not a
/// file or peer field is left out of the answer, as Transmission leaves out what it does
/// not know.
const BOARD: &[(&str, Write)] = &[
    ("id", |t, o| o.put(&t.info.id.0)),
    ("name", |t, o| o.put(&t.info.name)),
    ("hashString", |t, o| o.put(&t.info.info_hash.to_string())),
    ("status", |t, o| o.put(&status_number(&t.status))),
    ("percentDone", |t, o| o.put(&t.status.progress)),
    ("percentComplete", |t, o| o.put(&t.status.progress)),
    ("metadataPercentComplete", |t, o| {
        let resolving = matches!(t.status.state, TorrentState::ResolvingMetadata);
        o.put(&if resolving { 0.0 } else { 1.0 })
    }),
    ("recheckProgress", |t, o| {
        let checking = matches!(t.status.state, TorrentState::Checking);
        o.put(&if checking { t.status.progress } else { 0.0 })
    }),
    ("totalSize", |t, o| o.put(&t.status.bytes_total)),
    ("sizeWhenDone", |t, o| o.put(&t.status.bytes_total)),
    ("leftUntilDone", |t, o| o.put(&left(t))),
    ("desiredAvailable", |t, o| o.put(&left(t))),
    ("haveValid", |t, o| o.put(&t.status.bytes_done)),
    ("haveUnchecked", |_, o| o.raw(b"0")),
    ("corruptEver", |_, o| o.raw(b"0")),
    ("downloadedEver", |t, o| o.put(&t.status.downloaded)),
    ("uploadedEver", |t, o| o.put(&t.status.uploaded)),
    ("uploadRatio", |t, o| {
        let s = &t.status;
        // -1: no ratio yet, as Transmission says.
        let ratio = match s.downloaded.max(s.bytes_done) {
            0 => -1.0,
            _ => s.ratio(),
        };
        o.put(&ratio)
    }),
    ("rateDownload", |t, o| o.put(&t.status.download_rate)),
    ("rateUpload", |t, o| o.put(&t.status.upload_rate)),
    // -1: not available, as Transmission says.
    ("eta", |t, o| o.put(&eta(t))),
    ("etaIdle", |t, o| o.put(&eta(t))),
    ("peersConnected", |t, o| o.put(&t.status.peers)),
    ("peersSendingToUs", |t, o| {
        let s = &t.status;
        o.put(&if s.download_rate > 0 { s.peers } else { 0 })
    }),
    ("peersGettingFromUs", |t, o| {
        let s = &t.status;
        o.put(&if s.upload_rate > 0 { s.peers } else { 0 })
    }),
    ("webseedsSendingToUs", |_, o| o.raw(b"0")),
    // Transmission's "finished" is "reached its seeding limit" (and stopped): never, yet.
    ("isFinished", |_, o| o.raw(b"false")),
    ("isStalled", |_, o| o.raw(b"false")),
    ("isPrivate", |_, o| o.raw(b"false")),
    ("error", |t, o| {
        let failed = matches!(t.status.state, TorrentState::Error(_));
        o.raw(if failed { b"3" } else { b"0" })
    }),
    ("errorString", |t, o| match &t.status.state {
        TorrentState::Error(why) => o.put(why),
        _ => o.raw(b"\"\""),
    }),
    ("downloadDir", |t, o| o.put(&t.info.save_folder)),
    // Transmission counts from 0.
    ("queuePosition", |t, o| {
        o.put(&t.status.queue_position.map_or(0, |p| p.saturating_sub(1)))
    }),
    ("labels", |t, o| o.put(&t.status.labels)),
    ("trackers", |_, o| o.raw(b"[]")),
    ("trackerStats", |_, o| o.raw(b"[]")),
    ("webseeds", |_, o| o.raw(b"[]")),
    // What is in force: 1 with its value, or 2 (none). (Whether the value is the torrent's
    // own or the broker's is not on the board.)
    ("seedRatioMode", |t, o| {
        o.raw(if t.status.seed_limits.ratio.is_some() {
            b"1"
        } else {
            b"2"
        })
    }),
    ("seedIdleMode", |t, o| {
        o.raw(if t.status.seed_limits.idle_secs.is_some() {
            b"1"
        } else {
            b"2"
        })
    }),
    ("bandwidthPriority", |_, o| o.raw(b"0")),
    ("seedRatioLimit", |t, o| {
        o.put(&t.status.seed_limits.ratio.unwrap_or(0.0))
    }),
    // Minutes.
    ("seedIdleLimit", |t, o| {
        o.put(&t.status.seed_limits.idle_secs.map_or(0, |s| s.div_ceil(60)))
    }),
    ("downloadLimited", |_, o| o.raw(b"false")),
    ("uploadLimited", |_, o| o.raw(b"false")),
    ("honorsSessionLimits", |_, o| o.raw(b"false")),
    ("downloadLimit", |_, o| o.raw(b"0")),
    ("uploadLimit", |_, o| o.raw(b"0")),
    ("magnetLink", |t, o| {
        o.put(&format!("magnet:?xt=urn:btih:{}", t.info.info_hash))
    }),
    ("comment", |_, o| o.raw(b"\"\"")),
    ("creator", |_, o| o.raw(b"\"\"")),
    ("addedDate", |_, o| o.raw(b"0")),
    ("doneDate", |_, o| o.raw(b"0")),
    ("activityDate", |_, o| o.raw(b"0")),
    ("startDate", |_, o| o.raw(b"0")),
    ("dateCreated", |_, o| o.raw(b"0")),
    ("secondsDownloading", |_, o| o.raw(b"0")),
    ("secondsSeeding", |t, o| o.put(&t.status.seeding_secs)),
];

/// [`BOARD`]'s names, to their place in it.
fn board_index() -> &'static std::collections::HashMap<&'static str, usize> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static str, usize>> =
        std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        BOARD
            .iter()
            .enumerate()
            .map(|(at, (name, _))| (*name, at))
            .collect()
    })
}

/// Fields that need the broker (not on the board): asked once per torrent, only when named.
const FILE_FIELDS: [&str; 5] = ["files", "fileStats", "wanted", "priorities", "fileCount"];

/// The fields one `torrent-get` asked for, each looked up once.
pub struct Fields {
    /// Board fields: the key already written as JSON (`"name":`), and its writer.
    board: Vec<(Vec<u8>, Write)>,
    /// File fields asked for, in the order asked.
    files: Vec<&'static str>,
    pub peers: bool,
}

impl Fields {
    /// The fields named, each once; names nobody knows are dropped. Linear in the names
    /// (a request may name millions): each is looked up in a table, and only known names
    /// are remembered as seen.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Fields {
        let mut fields = Fields {
            board: Vec::new(),
            files: Vec::new(),
            peers: false,
        };
        let mut board_seen = [false; BOARD.len()];
        let mut files_seen = [false; FILE_FIELDS.len()];
        for name in names {
            if let Some(&at) = board_index().get(name) {
                if !std::mem::replace(&mut board_seen[at], true) {
                    let (known, write) = BOARD[at];
                    let mut key = serde_json::to_vec(known).unwrap_or_default();
                    key.push(b':');
                    fields.board.push((key, write));
                }
            } else if let Some(at) = FILE_FIELDS.iter().position(|known| *known == name) {
                if !std::mem::replace(&mut files_seen[at], true) {
                    fields.files.push(FILE_FIELDS[at]);
                }
            } else if name == "peers" {
                fields.peers = true;
            }
        }
        fields
    }

    pub fn wants_files(&self) -> bool {
        !self.files.is_empty()
    }

    /// Writes the board's fields of `torrent` (an object's members, no braces); returns
    /// whether any was written.
    pub fn write_board(&self, torrent: &TorrentSummary, out: &mut Json) -> bool {
        for (n, (key, write)) in self.board.iter().enumerate() {
            if n > 0 {
                out.raw(b",");
            }
            out.raw(key);
            write(torrent, out);
        }
        !self.board.is_empty()
    }

    /// Writes the file fields asked for, each preceded by a comma when `after` says members
    /// came before it.
    ///
    /// A file's name is Transmission's: inside the torrent's folder (`name/path`), except
    /// the one file of a single-file torrent.
    pub fn write_files(
        &self,
        torrent_name: &str,
        files: &[FileEntry],
        mut after: bool,
        out: &mut Json,
    ) -> bool {
        let single = files.len() == 1 && files[0].path == torrent_name;
        for field in &self.files {
            if after {
                out.raw(b",");
            }
            after = true;
            out.put(field);
            out.raw(b":");
            match *field {
                "files" => list(out, files, |f, o| {
                    o.raw(b"{\"name\":");
                    match single {
                        true => o.put(&f.path),
                        false => o.put(&format!("{torrent_name}/{}", f.path)),
                    }
                    o.raw(b",\"length\":");
                    o.put(&f.size);
                    o.raw(b",\"bytesCompleted\":");
                    o.put(&f.bytes_done);
                    o.raw(b"}");
                }),
                "fileStats" => list(out, files, |f, o| {
                    o.raw(b"{\"bytesCompleted\":");
                    o.put(&f.bytes_done);
                    o.raw(b",\"wanted\":");
                    o.put(&f.selected);
                    o.raw(b",\"priority\":0}");
                }),
                "wanted" => list(out, files, |f, o| {
                    o.raw(if f.selected { b"1" } else { b"0" })
                }),
                "priorities" => list(out, files, |_, o| o.raw(b"0")),
                _ => out.put(&files.len()),
            }
        }
        after
    }
}

fn list<T>(out: &mut Json, items: &[T], mut each: impl FnMut(&T, &mut Json)) {
    out.raw(b"[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.raw(b",");
        }
        each(item, out);
    }
    out.raw(b"]");
}

/// Transmission's status numbers: 0 stopped, 2 checking, 3 queued to download,
/// 4 downloading, 5 queued to seed, 6 seeding. (Transmission moves data while the torrent
/// is stopped: a move shows as 0.)
pub fn status_number(status: &TorrentStatus) -> u64 {
    match status.state {
        TorrentState::Paused | TorrentState::Error(_) | TorrentState::Moving => 0,
        TorrentState::Checking => 2,
        TorrentState::Queued if status.complete => 5,
        TorrentState::Queued => 3,
        TorrentState::ResolvingMetadata | TorrentState::Downloading => 4,
        TorrentState::Seeding => 6,
    }
}

fn left(t: &TorrentSummary) -> u64 {
    t.status.bytes_total.saturating_sub(t.status.bytes_done)
}

fn eta(t: &TorrentSummary) -> i64 {
    t.status
        .eta_secs
        .map_or(-1, |e| i64::try_from(e).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use patron_client::proto::{InfoHash, TorrentId, TorrentInfo, TorrentStatus};
    use serde_json::{json, Value};

    fn torrent(state: TorrentState) -> TorrentSummary {
        let info = TorrentInfo {
            id: TorrentId(7),
            info_hash: InfoHash([0xab; 20]),
            name: "a \"quoted\"\nname\u{1}é".into(),
            save_folder: "/data/x".into(),
            total_bytes: 1000,
        };
        let mut status = TorrentStatus::idle(&info, state);
        status.bytes_done = 250;
        status.progress = 0.25;
        status.uploaded = 500;
        status.download_rate = 10;
        status.peers = 3;
        TorrentSummary {
            info,
            status,
            holders: 1,
            held_by_you: false,
            ephemeral: false,
        }
    }

    fn written(fields: &Fields, torrent: &TorrentSummary, files: &[FileEntry]) -> Value {
        let mut out = Json::with_capacity(0);
        out.raw(b"{");
        let after = fields.write_board(torrent, &mut out);
        fields.write_files(&torrent.info.name, files, after, &mut out);
        out.raw(b"}");
        serde_json::from_slice(&out.into_bytes()).expect("the text is JSON")
    }

    #[test]
    fn board_fields_are_json_with_their_values_each_once() {
        let fields = Fields::parse([
            "id",
            "name",
            "name",
            "status",
            "percentDone",
            "leftUntilDone",
            "uploadRatio",
            "eta",
            "peersSendingToUs",
            "error",
            "errorString",
            "hashString",
            "no-such-field",
        ]);
        let value = written(&fields, &torrent(TorrentState::Downloading), &[]);
        assert_eq!(
            value,
            json!({
                "id": 7, "name": "a \"quoted\"\nname\u{1}é", "status": 4, "percentDone": 0.25,
                "leftUntilDone": 750, "uploadRatio": 2.0, "eta": -1, "peersSendingToUs": 3,
                "error": 0, "errorString": "", "hashString": "ab".repeat(20),
            })
        );
    }

    #[test]
    fn an_error_is_told_and_file_fields_follow_the_board_ones() {
        let fields = Fields::parse(["error", "errorString", "fileCount", "wanted", "files"]);
        let file = FileEntry {
            index: 0,
            path: "d/f\"1".into(),
            size: 10,
            bytes_done: 4,
            selected: true,
        };
        let value = written(
            &fields,
            &torrent(TorrentState::Error("disk \"full\"".into())),
            &[file],
        );
        assert_eq!(
            value,
            json!({
                "error": 3, "errorString": "disk \"full\"", "fileCount": 1, "wanted": [1],
                "files": [{"name": "a \"quoted\"\nname\u{1}é/d/f\"1", "length": 10, "bytesCompleted": 4}],
            })
        );
        // Only file fields: no comma before the first.
        let value = written(
            &Fields::parse(["priorities"]),
            &torrent(TorrentState::Paused),
            &[],
        );
        assert_eq!(value, json!({"priorities": []}));
    }
}
