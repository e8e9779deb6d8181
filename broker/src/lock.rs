//! The single-client rule: one broker per state directory, enforced by an exclusive `flock`
//! on `<state dir>/broker.lock`. The kernel drops the lock when its holder dies, however it
//! dies, so a SIGKILLed broker never leaves a stale lock behind; the pid written into the file
//! is only there to name the owner in the refusal.

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Held for the broker's whole life; dropping it releases the state directory.
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another live broker owns the state directory.
    Held {
        /// Its pid, if it had written one yet.
        owner_pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    Io(anyhow::Error),
}

impl StateLock {
    /// Takes the lock without waiting, and records our pid in it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        make_owner_only(state_dir).map_err(LockError::Io)?;
        let path = state_dir.join(proto::paths::LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // Never through a link, never waiting on a FIFO planted there.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .and_then(|file| {
                if !file.metadata()?.file_type().is_file() {
                    return Err(std::io::Error::other(
                        "it is not a regular file: move it aside",
                    ));
                }
                // An existing lock file keeps its old mode through `open`.
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                Ok(file)
            })
            .with_context(|| format!("cannot open {}", path.display()))
            .map_err(LockError::Io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    owner_pid: text.trim().parse().ok(),
                });
            }
            Err((_, errno)) => {
                return Err(LockError::Io(anyhow::anyhow!(
                    "cannot lock {}: {errno}",
                    path.display()
                )))
            }
        };
        let record_pid = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        record_pid(&mut file)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(LockError::Io)?;
        Ok(StateLock { _file: file })
    }
}

/// Makes the state dir owner-only (0700), however it came to exist, but only if it is the
/// broker's own: owned by this user and either empty or already a state dir. A shared folder
/// given by mistake (`--state-dir /tmp`, a project folder) is refused, not locked down.
fn make_owner_only(state_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state_dir)
        .with_context(|| format!("cannot read {}", state_dir.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 && mode & 0o7000 == 0 {
        return Ok(());
    }
    let ours = meta.uid() == nix::unistd::geteuid().as_raw();
    let known = [
        proto::paths::LOCK_FILE,
        proto::paths::CONFIG_FILE,
        "torrents.json",
        "records",
        "records.new",
        "torrents.json.migrated",
        "settings.json",
        "labels.json",
        crate::counts::FILE,
        crate::records::JOURNAL,
        "left-data.json",
        "torrents",
        "next-id",
        "listen-port",
        "engine",
        "run",
        // What an auto-starting patron leaves: its lock and the broker's log.
        "autostart.lock",
        "broker.log",
    ];
    let entries: Vec<_> = std::fs::read_dir(state_dir)
        .with_context(|| format!("cannot read {}", state_dir.display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    // Its own files, and the store's temporary files left by a crash.
    let a_state_dir = entries.iter().all(|name| {
        let temporary = name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
        temporary || known.iter().any(|k| name == std::ffi::OsStr::new(k))
    });
    if !ours || !a_state_dir {
        anyhow::bail!(
            "state directory {} (mode {mode:o}) is shared or holds other files; give the broker a folder of its own",
            state_dir.display()
        );
    }
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} owner-only", state_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_state_dir_with_every_file_the_broker_writes_is_made_owner_only_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        for file in [crate::counts::FILE, crate::records::JOURNAL, "labels.json"] {
            std::fs::write(dir.path().join(file), b"{}").unwrap();
        }
        std::fs::create_dir(dir.path().join("records")).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        make_owner_only(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
