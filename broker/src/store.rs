//! Crash-safe writes of what the broker remembers (DESIGN §4a).
//!
//! Every record is written to a temporary file beside its final name, fsynced, renamed over
//! the old one, and the folder fsynced: a power cut at any instant leaves either the old
//! record or the new one, never a torn or empty file. Files are owner-only (0600) however the
//! state folder came to exist.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `bytes`, durably and atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no folder", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A leftover temporary file keeps its old mode through `open`.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_folder(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Opens a file of the broker's state (DESIGN §4, "state is read as state"): never through
/// a symlink, never waiting (a FIFO planted there would hang the start while the lock is
/// held), and only a regular file of this user. `Ok(None)`: there is none.
pub fn open_state_file(path: &Path) -> io::Result<Option<File>> {
    Ok(open_state_file_as_is(path)?.map(|(file, _)| file))
}

/// [`open_state_file`], with what the file is.
fn open_state_file_as_is(path: &Path) -> io::Result<Option<(File, std::fs::Metadata)>> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(a_link(path)),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", path.display()),
            ))
        }
    };
    let meta = file.metadata()?;
    regular_and_ours(&meta, path)?;
    Ok(Some((file, meta)))
}

/// The size of a file of the broker's state, refused as [`open_state_file`] refuses one
/// (a link, not a regular file, not the broker's user's), without opening it: a look at
/// thousands before any is read.
pub fn state_file_size(path: &Path) -> io::Result<Option<u64>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot look at {}: {e}", path.display()),
            ))
        }
    };
    if meta.file_type().is_symlink() {
        return Err(a_link(path));
    }
    regular_and_ours(&meta, path)?;
    Ok(Some(meta.len()))
}

/// The refusal of a state file that is a symbolic link.
fn a_link(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link; the broker's state files are never read through one: move it aside",
        path.display()
    ))
}

/// Refuses a state file that is not a regular file of the broker's user.
fn regular_and_ours(meta: &std::fs::Metadata, path: &Path) -> io::Result<()> {
    if !meta.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file (a FIFO, a device or a folder?); the broker reads only its own regular files there: move it aside",
            path.display()
        )));
    }
    ours(meta, path)
}

/// Refuses a state file or folder that is not the broker's user's.
fn ours(meta: &std::fs::Metadata, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Asked once: a restart looks at thousands of files.
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let uid = *EUID.get_or_init(|| nix::unistd::geteuid().as_raw());
    if meta.uid() != uid {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to the broker's user ({uid}): move it aside",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Refuses a folder of the broker's state that is a symlink, not a folder, or not the
/// broker's user's: whatever is read, written or swept in it would be somewhere else (a
/// `torrents` folder linked to `~/Downloads` had every `.torrent` there swept away). A
/// missing one is fine (it is made owner-only when needed).
pub fn check_state_folder(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot look at {}: {e}", path.display()),
            ))
        }
    };
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder (a symlink?); the broker keeps its state there and follows no link: move it aside",
            path.display()
        )));
    }
    ours(&meta, path)
}

/// The most any state file may hold: a sparse file of many GiB planted there must not have
/// the start allocate it (the records of 100,000 torrents take ~30 MiB).
pub const MAX_STATE_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a file of the broker's state as [`open_state_file`] opens it, refusing one larger
/// than [`MAX_STATE_FILE_BYTES`]. `Ok(None)`: there is none.
pub fn read_state_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some((file, meta)) = open_state_file_as_is(path)? else {
        return Ok(None);
    };
    let size = meta.len();
    if size > MAX_STATE_FILE_BYTES {
        return Err(io::Error::other(format!(
            "{} is {size} bytes, more than any state file of the broker ({MAX_STATE_FILE_BYTES}): move it aside",
            path.display()
        )));
    }
    // Room for all of it and the read that finds its end: two reads, not a growing buffer's
    // many (thousands of small files at a restart).
    let mut bytes = Vec::with_capacity(size as usize + 1);
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(bytes))
}

/// [`write_atomically`], unless `path` already holds exactly `bytes` (then only its mode is
/// made owner-only): nothing is written, so a full disk does not matter.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match read_state_file(path)? {
        Some(current) if current == bytes => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        }
        _ => write_atomically(path, bytes),
    }
}

/// Removes `path` durably (a missing file is fine).
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(dir) => sync_folder(dir),
        None => Ok(()),
    }
}

pub fn sync_folder(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_replace_whole_files_owner_only_and_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("tp-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        // A write that cannot happen leaves the old record as it was.
        assert!(write_atomically(&dir.join("missing/records.json"), b"x").is_err());
        remove_durably(&path).unwrap();
        remove_durably(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Fuzzing how state files are read (`scripts/fuzz` runs it long; every test run 4,096
/// cases): whatever sits at a state file's path, reading it answers at once, never panics,
/// and only a regular file is read.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Planted {
        File(Vec<u8>),
        Fifo,
        LinkToFile,
        LinkToFifo,
        Folder,
        Dangling,
        Nothing,
    }

    fn planted() -> impl Strategy<Value = Planted> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256).prop_map(Planted::File),
            "\\{[\"0-9a-z:{}, \\[\\]]{0,64}\\}".prop_map(|s| Planted::File(s.into_bytes())),
            Just(Planted::Fifo),
            Just(Planted::LinkToFile),
            Just(Planted::LinkToFifo),
            Just(Planted::Folder),
            Just(Planted::Dangling),
            Just(Planted::Nothing),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::fuzz_cases(), ..ProptestConfig::default() })]

        #[test]
        fn no_state_file_hangs_or_panics_the_start(what in planted()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("torrents.json");
            let fifo = dir.path().join("elsewhere.fifo");
            let file = dir.path().join("elsewhere");
            std::fs::write(&file, b"{}").unwrap();
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let regular = matches!(what, Planted::File(_));
            match &what {
                Planted::File(bytes) => std::fs::write(&path, bytes).unwrap(),
                Planted::Fifo => nix::unistd::mkfifo(
                    &path,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )
                .unwrap(),
                Planted::LinkToFile => std::os::unix::fs::symlink(&file, &path).unwrap(),
                Planted::LinkToFifo => std::os::unix::fs::symlink(&fifo, &path).unwrap(),
                Planted::Folder => std::fs::create_dir(&path).unwrap(),
                Planted::Dangling => std::os::unix::fs::symlink("/nonexistent", &path).unwrap(),
                Planted::Nothing => {}
            }
            // Answers at once (a FIFO would block a plain read forever: the test would hang).
            let read = read_state_file(&path);
            match what {
                Planted::Nothing => prop_assert!(matches!(read, Ok(None))),
                _ if regular => prop_assert!(matches!(read, Ok(Some(_)))),
                _ => prop_assert!(read.is_err(), "{what:?} was read as state"),
            }
            // And the records' and the next id's readers make an error of anything that is
            // not what they read.
            let _ = crate::registry::TorrentRegistry::load_records(&path);
            let _ = crate::engine::read_next_id(&path);
        }
    }
}
