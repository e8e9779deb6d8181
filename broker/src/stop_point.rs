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
