//! Where a broker's state and rendezvous live. Both sides compute these the same way, so a
//! patron finds the broker of a state directory without any other configuration.

use std::path::{Path, PathBuf};

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "TORRENT_PATRON_STATE";

/// File (in the state dir) whose exclusive `flock` is the single-client rule.
pub const LOCK_FILE: &str = "broker.lock";

/// File (in the state dir) holding the broker's settings (TOML, keys as the long flags).
pub const CONFIG_FILE: &str = "broker.toml";

/// The default state directory: `$XDG_STATE_HOME/torrent-patron`, else
/// `~/.local/state/torrent-patron`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("torrent-patron");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/state/torrent-patron")
}

/// The state directory to use: the explicit one, else `$TORRENT_PATRON_STATE`, else the default.
pub fn resolve_state_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    match std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => default_state_dir(),
    }
}

/// The broker's Unix socket for a state directory (which should be absolute and canonical).
///
/// It lives in `$XDG_RUNTIME_DIR/torrent-patron/<hash of the state dir>/` when that is set
/// (a per-user tmpfs, cleaned at logout), else in `<state dir>/run/`. A path too long for a
/// Unix socket address falls back to the state dir too.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    const SUN_PATH_MAX: usize = 107;
    let fallback = state_dir.join("run").join("broker.sock");
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(runtime).join("torrent-patron").join(format!(
            "{:016x}",
            fnv1a(state_dir.as_os_str().as_encoded_bytes())
        ));
        let path = dir.join("broker.sock");
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return path;
        }
    }
    fallback
}

/// FNV-1a: a stable hash, so patron and broker builds agree on the runtime folder name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
