//! What the broker checks in a torrent before the engine sees it, and how it makes one.
//!
//! The bytes come from a patron, so they are hostile until proven otherwise: every file path
//! must stay inside the save folder, the piece count must match the length, and in
//! loopback-only mode every tracker that is not on loopback is removed *from the bytes
//! themselves* — librqbit 9.1 ignores its per-torrent `disable_trackers` and persists the
//! bytes it was given, so filtering anywhere else would leak on the next restart.

use lava_torrent::torrent::v1::TorrentBuilder;
use librqbit::{Magnet, ValidatedTorrentMetaV1Info};
use proto::{InfoHash, ProtoError, TorrentId, TorrentInfo};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};

/// Smallest piece size `make` accepts (BitTorrent's block size).
pub const MIN_PIECE_SIZE: u64 = 16 * 1024;
/// Largest piece size `make` picks or accepts.
pub const MAX_PIECE_SIZE: u64 = 64 * 1024 * 1024;

/// A checked .torrent, ready for the engine.
#[derive(Debug, Clone)]
pub struct CheckedTorrent {
    /// Its info hash.
    pub info_hash: InfoHash,
    /// Its name (a single safe path component).
    pub name: String,
    /// Files as paths relative to the torrent's data folder, with their lengths.
    pub files: Vec<(PathBuf, u64)>,
    /// Which of them are BEP 47 padding (no one's data: never listed, never chosen).
    pub padding: Vec<bool>,
    /// Sum of all file lengths.
    pub total_bytes: u64,
    /// Whether its files live in a folder named after the torrent.
    pub multi_file: bool,
    /// The bytes to give the engine: announce lists (filtered) and the original info dict.
    pub bytes: Vec<u8>,
    /// How many trackers loopback-only mode removed.
    pub trackers_removed: usize,
    /// Bytes per piece.
    pub piece_length: u64,
    /// Whether it names a tracker the engine announces to ([`is_announce_url`]; after
    /// loopback-only mode removed what it does).
    pub has_trackers: bool,
    /// Whether it is private (BEP 27): announced to its trackers only, never on DHT or LSD.
    pub private: bool,
}

impl CheckedTorrent {
    /// What patrons are told about it, once it runs as `id` saved in `save_folder`.
    /// Who it is, saved in `save_folder`; its size is that of the files `only` chooses
    /// (every file when `None`).
    pub fn info(&self, id: TorrentId, save_folder: &Path, only: Option<&[usize]>) -> TorrentInfo {
        let total_bytes = match only {
            None => self.total_bytes,
            // Each file once (a record may name one twice).
            Some(only) => only
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|&i| self.files.get(i).map(|(_, size)| size))
                .sum(),
        };
        TorrentInfo {
            id,
            info_hash: self.info_hash,
            name: self.name.clone(),
            save_folder: save_folder.display().to_string(),
            total_bytes,
        }
    }

    /// The folder the engine writes into for a torrent saved in `save_folder`: multi-file
    /// torrents get a folder of their own name, as in every mainstream client.
    pub fn data_folder(&self, save_folder: &Path) -> PathBuf {
        if self.multi_file {
            save_folder.join(&self.name)
        } else {
            save_folder.to_path_buf()
        }
    }

    /// Its files' paths inside its data folder.
    pub fn relative_paths(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|(relative, _)| relative.clone())
            .collect()
    }

    /// Its files as `files` lists them, before any byte is there.
    pub fn file_entries(&self) -> Vec<proto::FileEntry> {
        self.files
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.padding.get(*index).copied().unwrap_or(false))
            .map(|(index, (relative, size))| proto::FileEntry {
                index: index as u32,
                path: crate::engine::path_text(relative),
                size: *size,
                bytes_done: 0,
                selected: true,
            })
            .collect()
    }

    /// How many pieces it has.
    pub fn pieces(&self) -> u64 {
        self.total_bytes.div_ceil(self.piece_length.max(1))
    }

    /// Its files' full paths, written into `data_folder`.
    pub fn full_paths(&self, data_folder: &Path) -> std::sync::Arc<[PathBuf]> {
        self.files
            .iter()
            .map(|(relative, _)| data_folder.join(relative))
            .collect::<Vec<_>>()
            .into()
    }
}

fn invalid(message: impl Into<String>) -> ProtoError {
    ProtoError::invalid_torrent(message)
}

/// Checks .torrent bytes and rebuilds them for the engine.
pub fn check_torrent_file(bytes: &[u8], loopback_only: bool) -> Result<CheckedTorrent, ProtoError> {
    if bytes.is_empty() {
        return Err(invalid("the .torrent data is empty"));
    }
    // Something else entirely (a video, a text) says so, not where its bencode broke.
    if bytes[0] != b'd' {
        return Err(invalid(
            "not a valid .torrent file: it does not even start as one (with 'd'); to share a file or folder, make a torrent of it: patron-client make PATH --seed",
        ));
    }
    check_bencode(bytes).map_err(|why| invalid(format!("not a valid .torrent file: {why}")))?;
    let meta = librqbit::torrent_from_bytes(bytes)
        .map_err(|e| invalid(format!("not a valid .torrent file: {e}")))?;
    let info_hash = InfoHash(meta.info_hash.0);
    // Names are written to disk as given: refuse what would have to be guessed at.
    let raw_names = meta.info.data.name.iter().chain(
        meta.info
            .data
            .files
            .iter()
            .flatten()
            .flat_map(|file| file.path.iter()),
    );
    for raw in raw_names {
        if std::str::from_utf8(raw.as_ref()).is_err() {
            return Err(invalid(format!(
                "a file name is not UTF-8 ({:?})",
                String::from_utf8_lossy(raw.as_ref())
            )));
        }
    }
    let piece_length = u64::from(meta.info.data.piece_length);
    let pieces_len = meta.info.data.pieces.as_ref().len();
    // Before validate(): librqbit divides by the piece length there (found by fuzzing),
    // sums the file lengths unchecked, and counts pieces in a u32.
    if piece_length == 0 {
        return Err(invalid("the torrent's piece length is 0"));
    }
    let lengths: Vec<u64> = match &meta.info.data.files {
        Some(files) => files.iter().map(|f| f.length).collect(),
        None => meta.info.data.length.into_iter().collect(),
    };
    let total = lengths
        .iter()
        .try_fold(0u64, |sum, len| sum.checked_add(*len))
        .ok_or_else(|| invalid("the torrent's total size overflows"))?;
    if total == 0 {
        return Err(invalid("the torrent holds no data (total size 0)"));
    }
    if total.div_ceil(piece_length) > u64::from(u32::MAX) {
        return Err(invalid(format!(
            "the torrent would have {} pieces, more than any client counts",
            total.div_ceil(piece_length)
        )));
    }
    let validated: ValidatedTorrentMetaV1Info<_> = meta
        .info
        .data
        .clone()
        .validate()
        .map_err(|e| invalid(format!("invalid torrent info: {e}")))?;

    let name = validated
        .name()
        .map(|n| n.into_owned())
        .ok_or_else(|| invalid("the torrent has no name"))?;
    check_component(&name).map_err(|why| invalid(format!("torrent name {name:?} {why}")))?;

    let multi_file = meta.info.data.files.is_some();
    let mut files = Vec::new();
    let mut padding = Vec::new();
    let mut seen = HashSet::new();
    let mut total_bytes: u64 = 0;
    for detail in validated.iter_file_details() {
        let mut path = PathBuf::new();
        for component in detail.filename.iter_components() {
            check_component(&component)
                .map_err(|why| invalid(format!("file path component {component:?} {why}")))?;
            path.push(&*component);
        }
        if path.as_os_str().is_empty() {
            return Err(invalid("a file in the torrent has an empty path"));
        }
        if !seen.insert(path.clone()) {
            return Err(invalid(format!(
                "the torrent lists {} twice",
                path.display()
            )));
        }
        total_bytes = total_bytes
            .checked_add(detail.len)
            .ok_or_else(|| invalid("the torrent's total size overflows"))?;
        files.push((path, detail.len));
        padding.push(detail.attrs().padding);
    }
    // A file may not also be a folder of another ("a" and "a/b").
    for (path, _) in &files {
        for ancestor in path.ancestors().skip(1) {
            if !ancestor.as_os_str().is_empty() && seen.contains(ancestor) {
                return Err(invalid(format!(
                    "{} is both a file and a folder in the torrent",
                    ancestor.display()
                )));
            }
        }
    }
    let expected_pieces = total_bytes.div_ceil(piece_length);
    if pieces_len % 20 != 0 || pieces_len as u64 / 20 != expected_pieces {
        return Err(invalid(format!(
            "the torrent has {} piece hashes, but {total_bytes} bytes in pieces of {piece_length} need {expected_pieces}",
            pieces_len / 20
        )));
    }

    let mut trackers_removed = 0;
    let tiers: Vec<Vec<String>> = if meta.announce_list.iter().flatten().next().is_some() {
        meta.announce_list
            .iter()
            .map(|tier| tier.iter().filter_map(|t| utf8(t.as_ref())).collect())
            .collect()
    } else {
        meta.announce
            .iter()
            .filter_map(|t| utf8(t.as_ref()))
            .map(|t| vec![t])
            .collect()
    };
    let tiers: Vec<Vec<String>> = tiers
        .into_iter()
        .map(|tier| {
            let before = tier.len();
            let kept: Vec<String> = tier
                .into_iter()
                .filter(|t| !loopback_only || is_loopback_url(t))
                .collect();
            trackers_removed += before - kept.len();
            kept
        })
        .filter(|tier| !tier.is_empty())
        .collect();

    Ok(CheckedTorrent {
        info_hash,
        name,
        files,
        padding,
        total_bytes,
        multi_file,
        bytes: encode_torrent(&tiers, meta.info.raw_bytes.as_ref()),
        trackers_removed,
        piece_length,
        has_trackers: tiers
            .iter()
            .flatten()
            .any(|t| url::Url::parse(t).is_ok_and(|url| is_announce_url(&url))),
        private: meta.info.data.private,
    })
}

/// Deepest nesting of lists and dictionaries accepted (a real torrent uses 4 or 5).
const MAX_BENCODE_DEPTH: usize = 32;

/// Walks the bencode structure before the engine's parser sees it: every integer fits the
/// type the engine reads it into (an i64, a u32 for `piece length`, a u8 for the flags it
/// reads as booleans), every string length fits what is left, nesting stays shallow.
/// librqbit's parser overflows on an integer too big for its field (a panic where overflow
/// is checked, a wrong value where not; found by fuzzing) and recurses once per nesting
/// level (a stack overflow is an abort, not a panic).
fn check_bencode(bytes: &[u8]) -> Result<(), String> {
    /// Where the walk is: in a list, or in a dictionary (about to read a key, or the value
    /// of the key at that range of `bytes`).
    enum Frame {
        List,
        Dict { key: Option<(usize, usize)> },
    }
    let number = |digits: &[u8], what: &str| -> Result<i64, String> {
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<i64>().ok())
            .ok_or_else(|| {
                format!(
                    "{what} {:?} is not a 64-bit number",
                    String::from_utf8_lossy(digits)
                )
            })
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(&byte) = bytes.get(pos) else {
            return Err("the data ends in the middle of a value".into());
        };
        // The key this value belongs to, when it is a dictionary's value.
        let key = match stack.last() {
            Some(Frame::Dict {
                key: Some((from, to)),
            }) => Some(&bytes[*from..*to]),
            _ => None,
        };
        let reading_key = matches!(stack.last(), Some(Frame::Dict { key: None }));
        let mut string = None;
        match byte {
            b'e' if !stack.is_empty() => {
                if !reading_key && matches!(stack.last(), Some(Frame::Dict { .. })) {
                    return Err("a dictionary key has no value".into());
                }
                stack.pop();
                pos += 1;
                // The parent (if any) already expects its next key or item.
                if stack.is_empty() {
                    return Ok(());
                }
                continue;
            }
            b'd' | b'l' if !reading_key => {
                if stack.len() >= MAX_BENCODE_DEPTH {
                    return Err(format!(
                        "values nest deeper than {MAX_BENCODE_DEPTH} levels"
                    ));
                }
                pos += 1;
                // Its parent's value is this container: the parent reads a key next.
                if let Some(Frame::Dict { key }) = stack.last_mut() {
                    *key = None;
                }
                stack.push(if byte == b'd' {
                    Frame::Dict { key: None }
                } else {
                    Frame::List
                });
                continue;
            }
            b'i' if !reading_key => {
                let end = bytes[pos..]
                    .iter()
                    .position(|&b| b == b'e')
                    .ok_or("an integer is not terminated")?;
                let value = number(&bytes[pos + 1..pos + end], "an integer")?;
                let fits = match key {
                    Some(b"piece length") => u32::try_from(value).is_ok(),
                    Some(b"private" | b"symlink" | b"hidden" | b"padding" | b"executable") => {
                        u8::try_from(value).is_ok()
                    }
                    _ => true,
                };
                if !fits {
                    let name = String::from_utf8_lossy(key.unwrap_or_default());
                    return Err(format!("{name:?} is {value}, out of its range"));
                }
                pos += end + 1;
            }
            b'0'..=b'9' => {
                let colon = bytes[pos..]
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or("a string length is not terminated")?;
                let len = number(&bytes[pos..pos + colon], "a string length")?;
                let start = pos + colon + 1;
                let len = usize::try_from(len).map_err(|_| "a negative string length")?;
                if len > bytes.len() - start {
                    return Err("a string runs past the end of the data".into());
                }
                string = Some((start, start + len));
                pos = start + len;
            }
            other => return Err(format!("unexpected byte {other:#04x} at offset {pos}")),
        }
        // A value was read: a dictionary alternates key and value.
        match stack.last_mut() {
            None => return Ok(()),
            Some(Frame::Dict { key }) if reading_key => *key = string,
            Some(Frame::Dict { key }) => *key = None,
            Some(Frame::List) => {}
        }
        if reading_key && string.is_none() {
            return Err("a dictionary key is not a string".into());
        }
    }
}

/// An announce URL as text; empty ones (librqbit writes `announce: ""` into the metadata
/// it resolves for trackerless magnets) are no trackers at all.
fn utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// A path component that is safe to join under a save folder.
fn check_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("is empty");
    }
    if component.contains(['/', '\\', '\0']) {
        return Err("contains a path separator or NUL");
    }
    // Names are data, not terminal commands (DESIGN §4): ESC, newlines and the like never
    // become file names.
    if component.chars().any(char::is_control) {
        return Err("holds control characters");
    }
    let mut parts = Path::new(component).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => Err("is not a plain file name (`.`, `..` or absolute)"),
    }
}

/// Whether an announce URL points at this machine's loopback.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether the engine announces to a tracker at this URL: `http` or `https`, or `udp` with
/// a port, as its tracker client (librqbit-tracker-comms) takes. Any other URL (`wss://`)
/// the engine keeps in the torrent's tracker set but never announces to (one that does not
/// parse it drops). The broker asks this, not whether the set is empty, wherever a seed's
/// tracker session matters (see [`crate::service::sleep`]).
pub fn is_announce_url(url: &url::Url) -> bool {
    match url.scheme() {
        "http" | "https" => true,
        "udp" => url.port().is_some(),
        _ => false,
    }
}

/// Whether a peer address may be dialled in this mode.
pub fn peer_allowed(ip: IpAddr, loopback_only: bool) -> bool {
    !loopback_only || ip.is_loopback()
}

/// Bencodes `{announce, announce-list, info}` around the original info dict's exact bytes
/// (so the info hash is untouched). Keys are written in bencode's required sorted order.
fn encode_torrent(tiers: &[Vec<String>], info: &[u8]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(s.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(s);
    }
    let mut out = Vec::with_capacity(info.len() + 256);
    out.push(b'd');
    if let Some(first) = tiers.first().and_then(|tier| tier.first()) {
        string(&mut out, b"announce");
        string(&mut out, first.as_bytes());
        string(&mut out, b"announce-list");
        out.push(b'l');
        for tier in tiers {
            out.push(b'l');
            for tracker in tier {
                string(&mut out, tracker.as_bytes());
            }
            out.push(b'e');
        }
        out.push(b'e');
    }
    string(&mut out, b"info");
    out.extend_from_slice(info);
    out.push(b'e');
    out
}

/// A checked magnet link.
#[derive(Debug, Clone)]
pub struct CheckedMagnet {
    /// Its info hash.
    pub info_hash: InfoHash,
    /// Its display name, if it has one.
    pub name: Option<String>,
    /// The link to give the engine (off-loopback trackers removed in loopback-only mode).
    pub uri: String,
    /// Peers the link names (`x.pe`), which librqbit 9.1's parser drops: given to the engine
    /// as initial peers. Off-loopback ones are left out in loopback-only mode.
    pub peers: Vec<SocketAddr>,
}

/// Parses a magnet link (or a bare 40-digit info hash).
pub fn check_magnet(link: &str, loopback_only: bool) -> Result<CheckedMagnet, ProtoError> {
    let bad = |why: String| ProtoError::invalid_magnet(why);
    let magnet = Magnet::parse(link).map_err(|e| bad(format!("not a valid magnet link: {e}")))?;
    let id = magnet
        .as_id20()
        .ok_or_else(|| bad("the magnet link has no BitTorrent v1 (btih) info hash".into()))?;
    let trackers = magnet
        .trackers
        .iter()
        .filter(|t| !loopback_only || is_loopback_url(t))
        .cloned()
        .collect();
    let rebuilt = Magnet::from_id20(id, trackers, magnet.get_select_only());
    // x.pe=HOST:PORT (an IP address: the broker resolves no names for a patron).
    let peers = url::Url::parse(link)
        .map(|url| {
            url.query_pairs()
                .filter(|(key, _)| key == "x.pe")
                .filter_map(|(_, value)| value.parse::<SocketAddr>().ok())
                .filter(|peer| peer_allowed(peer.ip(), loopback_only))
                .collect()
        })
        .unwrap_or_default();
    Ok(CheckedMagnet {
        info_hash: InfoHash(id.0),
        // Shown on every terminal that lists it until the metadata comes: a name with control
        // characters (escape sequences) is left out, as it is refused in a .torrent.
        name: magnet
            .name
            .clone()
            .filter(|name| !name.is_empty() && !name.chars().any(char::is_control)),
        uri: rebuilt.to_string(),
        peers,
    })
}

/// A .torrent made from local data.
#[derive(Debug, Clone)]
pub struct MadeTorrent {
    /// The .torrent file, for the user (trackers as asked).
    pub bytes: Vec<u8>,
    /// The same, checked as any patron's torrent would be; its `bytes` are the engine's.
    pub checked: CheckedTorrent,
    /// Number of pieces.
    pub pieces: u64,
    /// Piece size.
    pub piece_size: u64,
}

/// Hashes a file or folder into a .torrent. Blocking: run it off the async runtime.
///
/// Uses lava_torrent rather than librqbit's `create_torrent`, which in 9.1 appends a hash of
/// an empty piece when the length is an exact multiple of the piece size (other clients then
/// reject the torrent), drops the last piece when the last file is empty, and panics on file
/// names that are not UTF-8.
pub fn make_torrent(
    path: &Path,
    piece_size: Option<u64>,
    trackers: &[String],
    loopback_only: bool,
) -> Result<MadeTorrent, ProtoError> {
    let io = |e: std::io::Error| ProtoError::io(format!("cannot read {}: {e}", path.display()));
    let total = data_size(path).map_err(io)?;
    if total == 0 {
        return Err(ProtoError::bad_request(format!(
            "{} holds no data to share",
            path.display()
        )));
    }
    let piece_size = match piece_size {
        Some(size)
            if !size.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&size) =>
        {
            return Err(ProtoError::bad_request(format!(
                "piece size {} must be a power of two from {} to {} (16K, 32K, ... 64M)",
                proto::text::bytes(size),
                proto::text::bytes(MIN_PIECE_SIZE),
                proto::text::bytes(MAX_PIECE_SIZE)
            )))
        }
        Some(size) => size,
        None => choose_piece_size(total),
    };
    let mut builder = TorrentBuilder::new(path, piece_size as i64).set_num_threads(2);
    if let Some(first) = trackers.first() {
        builder = builder.set_announce(Some(first.clone()));
        if trackers.len() > 1 {
            builder = builder.set_announce_list(trackers.iter().map(|t| vec![t.clone()]).collect());
        }
    }
    let torrent = builder.build().map_err(|e| {
        ProtoError::bad_request(format!("cannot make a torrent of {}: {e}", path.display()))
    })?;
    let pieces = torrent.pieces.len() as u64;
    let bytes = torrent
        .encode()
        .map_err(|e| ProtoError::engine(format!("cannot encode the torrent: {e}")))?;
    // What we make must pass the same checks as what a patron sends.
    let checked = check_torrent_file(&bytes, loopback_only)?;
    Ok(MadeTorrent {
        bytes,
        checked,
        pieces,
        piece_size,
    })
}

/// Aim for about 1,500 pieces: small enough .torrent files, fine-grained enough verification.
fn choose_piece_size(total: u64) -> u64 {
    let mut size = MIN_PIECE_SIZE;
    while size < MAX_PIECE_SIZE && total.div_ceil(size) > 1500 {
        size *= 2;
    }
    size
}

fn data_size(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += data_size(&entry?.path())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ErrorKind;

    fn torrent_with(info: &str, announce: &str) -> Vec<u8> {
        format!("d{announce}4:info{info}e").into_bytes()
    }

    fn single_file_info(name: &str, length: u64, piece_length: u64, pieces: usize) -> String {
        let hashes = "x".repeat(20 * pieces);
        format!(
            "d6:lengthi{length}e4:name{}:{name}12:piece lengthi{piece_length}e6:pieces{}:{hashes}e",
            name.len(),
            hashes.len()
        )
    }

    /// BEP 47 padding files are no one's data: never listed for choosing (the engine does
    /// not list them either; `add --only` of one "chose" nothing and seeded 0 B).
    #[test]
    fn padding_files_are_not_listed() {
        let hashes = "x".repeat(40);
        let info = format!(
            "d5:filesld6:lengthi5e4:pathl5:a.txteed4:attr1:p6:lengthi16379e4:pathl4:.pad5:16379eed6:lengthi5e4:pathl5:c.txteee4:name6:padded12:piece lengthi16384e6:pieces{}:{hashes}e",
            hashes.len()
        );
        let checked = check_torrent_file(&torrent_with(&info, ""), false).expect("valid");
        assert_eq!(checked.padding, [false, true, false]);
        let listed: Vec<(u32, String)> = checked
            .file_entries()
            .into_iter()
            .map(|f| (f.index, f.path))
            .collect();
        assert_eq!(listed, [(0, "a.txt".to_owned()), (2, "c.txt".to_owned())]);
    }

    #[test]
    fn a_valid_torrent_keeps_its_info_hash() {
        let info = single_file_info("a.bin", 40000, 16384, 3);
        let bytes = torrent_with(&info, "");
        let checked = check_torrent_file(&bytes, false).expect("valid");
        assert_eq!(checked.name, "a.bin");
        assert_eq!(checked.total_bytes, 40000);
        assert!(!checked.multi_file);
        let again = check_torrent_file(&checked.bytes, false).expect("rebuilt is valid");
        assert_eq!(again.info_hash, checked.info_hash);
    }

    #[test]
    fn loopback_only_strips_other_trackers_from_the_bytes() {
        let info = single_file_info("a.bin", 10, 16384, 1);
        let (far, near) = (
            "http://tracker.example/announce",
            "http://127.0.0.1:6969/announce",
        );
        let s = |t: &str| format!("{}:{t}", t.len());
        let announce = format!(
            "8:announce{}13:announce-listll{}el{}ee",
            s(far),
            s(far),
            s(near)
        );
        let bytes = torrent_with(&info, &announce);
        let checked = check_torrent_file(&bytes, true).expect("valid");
        assert_eq!(checked.trackers_removed, 1);
        let text = String::from_utf8_lossy(&checked.bytes);
        assert!(!text.contains("example"), "{text}");
        assert!(text.contains("127.0.0.1:6969"), "{text}");
        let kept = check_torrent_file(&bytes, false).expect("valid");
        assert_eq!(kept.trackers_removed, 0);
    }

    /// A torrent "has trackers" only if the engine announces to one of them: a `wss://`
    /// or a `udp://` with no port alone is none (such a seed has no tracker session to keep).
    #[test]
    fn only_trackers_the_engine_announces_to_count() {
        let info = single_file_info("a.bin", 10, 16384, 1);
        let s = |t: &str| format!("{}:{t}", t.len());
        let with = |trackers: &[&str]| {
            let tiers: String = trackers.iter().map(|t| format!("l{}e", s(t))).collect();
            let announce = format!("13:announce-listl{tiers}e");
            check_torrent_file(&torrent_with(&info, &announce), false).expect("valid")
        };
        for (trackers, has) in [
            (&["wss://127.0.0.1:9/announce"][..], false),
            (&["udp://127.0.0.1/announce"][..], false),
            (&["not a url"][..], false),
            (&["udp://127.0.0.1:6969/announce"][..], true),
            (&["https://127.0.0.1/announce"][..], true),
            (
                &[
                    "wss://127.0.0.1:9/announce",
                    "http://127.0.0.1:6969/announce",
                ][..],
                true,
            ),
        ] {
            assert_eq!(with(trackers).has_trackers, has, "{trackers:?}");
        }
        assert!(!with(&[]).private);
    }

    #[test]
    fn hostile_torrents_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not bencode".to_vec(), "not a valid"),
            (Vec::new(), "empty"),
            (
                torrent_with(&single_file_info("..", 10, 16384, 1), ""),
                "..",
            ),
            (
                torrent_with(&single_file_info("a.bin", 40000, 16384, 2), ""),
                "piece hashes",
            ),
        ];
        for (bytes, expected) in cases {
            let err = check_torrent_file(&bytes, false).expect_err("must be refused");
            assert_eq!(err.kind, ErrorKind::InvalidTorrent);
            assert!(err.message.contains(expected), "{err} lacks {expected:?}");
        }
    }

    #[test]
    fn bencode_the_engine_would_choke_on_is_refused_first() {
        for (bytes, why) in [
            (&b"d6:lengthi99999999999999999999999ee"[..], "64-bit"),
            (&b"d4:name40000000000000000000000:xe"[..], "64-bit"),
            (&b"d4:name5:abc"[..], "past the end"),
            (&b"d4:infod"[..], "ends in the middle"),
            (&b"d12:piece lengthi4294967296ee"[..], "out of its range"),
            (&b"d7:privatei256ee"[..], "out of its range"),
        ] {
            let err = check_torrent_file(bytes, false).unwrap_err();
            assert!(err.message.contains(why), "{why}: {}", err.message);
        }
        let deep = [
            b"d1:x".to_vec(),
            vec![b'l'; 10_000],
            vec![b'e'; 10_000],
            b"e".to_vec(),
        ]
        .concat();
        let err = check_torrent_file(&deep, false).unwrap_err();
        assert!(err.message.contains("nest deeper"), "{}", err.message);
    }

    #[test]
    fn multi_file_paths_must_stay_inside() {
        let hashes = "x".repeat(20);
        for path in ["l2:..1:ae", "l1:/e", "l0:e"] {
            let info = format!(
                "d5:filesld6:lengthi5e4:path{path}ee4:name3:dir12:piece lengthi16384e6:pieces20:{hashes}e"
            );
            let err = check_torrent_file(&torrent_with(&info, ""), false).expect_err(path);
            assert_eq!(err.kind, ErrorKind::InvalidTorrent, "{path}: {err}");
        }
    }

    #[test]
    fn made_torrents_have_no_spurious_last_piece() {
        let dir = std::env::temp_dir().join(format!("tp-make-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("exact.bin");
        std::fs::write(&file, vec![7u8; 4 * 16384]).unwrap();
        let made = make_torrent(&file, Some(16384), &[], false).expect("made");
        assert_eq!(made.pieces, 4);
        assert_eq!(made.checked.total_bytes, 4 * 16384);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:6969/announce"));
        assert!(is_loopback_url("udp://localhost:1/announce"));
        assert!(is_loopback_url("http://[::1]:80/announce"));
        assert!(!is_loopback_url("http://10.0.0.1/announce"));
        assert!(!is_loopback_url("not a url"));
    }
}

#[cfg(test)]
mod magnet_tests {
    use super::*;

    #[test]
    fn loopback_only_strips_off_loopback_trackers_from_magnets() {
        let hash = "631f6001c7f4e6d077d47b24b1a68d4a2bf917e1";
        let link = format!(
            "magnet:?xt=urn:btih:{hash}&tr=http://tracker.example.com/announce&tr=http://127.0.0.1:1/announce"
        );
        let checked = check_magnet(&link, true).expect("valid magnet");
        assert!(!checked.uri.contains("example"), "{}", checked.uri);
        assert!(checked.uri.contains("127.0.0.1"), "{}", checked.uri);
        let kept = check_magnet(&link, false).expect("valid magnet");
        assert!(kept.uri.contains("example"), "{}", kept.uri);
    }

    #[test]
    fn a_magnets_name_with_control_characters_is_left_out() {
        let hash = "631f6001c7f4e6d077d47b24b1a68d4a2bf917e1";
        let named = |dn: &str| {
            check_magnet(&format!("magnet:?xt=urn:btih:{hash}&dn={dn}"), true)
                .expect("valid magnet")
                .name
        };
        assert_eq!(named("debian.iso").as_deref(), Some("debian.iso"));
        // ESC [ 2 J clears a terminal; BEL rings it.
        assert_eq!(named("x%1B%5B2Jy"), None);
        assert_eq!(named("bell%07"), None);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Bencode-ish bytes: mostly the characters torrents are made of, so the parser gets deep.
    fn bencodeish() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'd'),
                Just(b'l'),
                Just(b'e'),
                Just(b'i'),
                Just(b':'),
                (b'0'..=b'9'),
                any::<u8>(),
            ],
            0..2048,
        )
    }

    /// A path component as a hostile torrent might write it.
    fn component() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"..".to_vec()),
            Just(b".".to_vec()),
            Just(b"".to_vec()),
            Just(b"/etc".to_vec()),
            Just(b"a\\b".to_vec()),
            Just(b"\x1b[2J".to_vec()),
            Just(b"ok\nname".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..16),
            "[a-z.]{1,8}".prop_map(String::into_bytes),
        ]
    }

    fn bstr(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(format!("{}:", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::fuzz_cases(), ..ProptestConfig::default() })]

        #[test]
        fn no_torrent_bytes_make_the_checker_panic(bytes in bencodeish()) {
            let _ = check_torrent_file(&bytes, true);
        }

        #[test]
        fn no_info_dict_makes_the_checker_panic(
            name in proptest::collection::vec(any::<u8>(), 0..12),
            length in any::<u64>(),
            piece_length in any::<u32>(),
            pieces in 0usize..4,
        ) {
            let mut info = b"d6:lengthi".to_vec();
            info.extend_from_slice(length.to_string().as_bytes());
            info.extend_from_slice(format!("e4:name{}:", name.len()).as_bytes());
            info.extend_from_slice(&name);
            info.extend_from_slice(format!("12:piece lengthi{piece_length}e6:pieces{}:", pieces * 20).as_bytes());
            info.extend(std::iter::repeat_n(b'x', pieces * 20));
            info.push(b'e');
            let mut torrent = b"d4:info".to_vec();
            torrent.extend_from_slice(&info);
            torrent.push(b'e');
            let _ = check_torrent_file(&torrent, false);
        }

        #[test]
        fn no_multi_file_torrent_makes_the_checker_panic(
            name in component(),
            files in proptest::collection::vec(
                (
                    proptest::collection::vec(component(), 0..4),
                    prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>(), Just(i64::MAX as u64), Just(1u64 << 32)],
                ),
                0..6,
            ),
            piece_length in prop_oneof![Just(0u64), Just(1u64), Just(16384u64), any::<u64>()],
            pieces in 0usize..6,
            announce in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut info = b"d5:filesl".to_vec();
            for (path, length) in &files {
                info.extend_from_slice(format!("d6:lengthi{length}e4:pathl").as_bytes());
                for part in path {
                    bstr(&mut info, part);
                }
                info.extend_from_slice(b"ee");
            }
            info.extend_from_slice(b"e4:name");
            bstr(&mut info, &name);
            info.extend_from_slice(format!("12:piece lengthi{piece_length}e6:pieces").as_bytes());
            bstr(&mut info, &vec![7u8; pieces * 20]);
            info.push(b'e');
            let mut torrent = b"d8:announce".to_vec();
            bstr(&mut torrent, &announce);
            torrent.extend_from_slice(b"4:info");
            torrent.extend_from_slice(&info);
            torrent.push(b'e');
            let _ = check_torrent_file(&torrent, true);
        }

        #[test]
        fn no_magnet_makes_the_checker_panic(
            link in ".{0,200}",
            hash in "[0-9a-fA-Z]{0,48}",
            params in proptest::collection::vec(("(xt|dn|tr|x\\.pe|ws|xl)", ".{0,40}"), 0..5),
        ) {
            let _ = check_magnet(&link, true);
            let _ = check_magnet(&format!("magnet:?{link}"), true);
            let mut built = format!("magnet:?xt=urn:btih:{hash}");
            for (key, value) in &params {
                built.push_str(&format!("&{key}={value}"));
            }
            let _ = check_magnet(&built, true);
            let _ = check_magnet(&built, false);
        }
    }
}
