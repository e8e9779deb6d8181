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
        // The state dir and everything in it are owner-only, however the dir came to exist.
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} owner-only", state_dir.display()))
            .map_err(LockError::Io)?;
        let path = state_dir.join(proto::paths::LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
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
