//! Where the tests that kill the broker at the worst moments stop it: with
//! `TORRENT_PATRON_TEST_STOP_AT=<step>` in its environment, the broker stops itself
//! (SIGSTOP) when it reaches that step, for the test to SIGKILL it at exactly that instant.
//! The steps are named where they are (`move:copied`, `watch:added`...). Without the
//! variable this is one comparison.

/// Stops the broker here if the environment names `step`.
pub fn at(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("TORRENT_PATRON_TEST_STOP_AT").ok());
    if at.as_deref() == Some(step) {
        tracing::warn!("stopping at {step} (TORRENT_PATRON_TEST_STOP_AT)");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// Holds the calling thread for a while here if `TORRENT_PATRON_TEST_HOLD_AT=<step>=<ms>`
/// names `step`: the rest of the broker goes on (a SIGSTOP would stop it all), so a test
/// can act while one piece of work is in a known place (a check that has begun but not
/// ended, say). Only for threads that may block (the blocking pool's).
pub fn hold(step: &str) {
    static HOLD: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        let spec = std::env::var("TORRENT_PATRON_TEST_HOLD_AT").ok()?;
        let (step, millis) = spec.rsplit_once('=')?;
        Some((step.to_owned(), millis.parse().ok()?))
    });
    if let Some((at, millis)) = hold {
        if at == step {
            tracing::warn!("holding at {step} for {millis} ms (TORRENT_PATRON_TEST_HOLD_AT)");
            std::thread::sleep(std::time::Duration::from_millis(*millis));
        }
    }
}
