//! The `shutdown` helper: one place that decides the broker is stopping, and why.
//!
//! SIGTERM and SIGINT (via signal-hook, on a thread of its own) and a patron's stop request
//! all end up here; the first reason wins and everything waiting on [`Shutdown::wait`] wakes.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;
use tokio::sync::watch;

/// A clonable trigger plus the ability to wait for it.
#[derive(Clone, Debug)]
pub struct Shutdown {
    reason: Arc<watch::Sender<Option<String>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            reason: Arc::new(watch::channel(None).0),
        }
    }
}

impl Shutdown {
    /// Starts stopping, unless already stopping for an earlier reason.
    pub fn trigger(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Routes SIGTERM and SIGINT to [`Shutdown::trigger`].
    pub fn on_signals(&self) -> std::io::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    this.trigger(format!("received {name}"));
                }
            })?;
        Ok(())
    }

    /// Waits until stopping; returns why.
    pub async fn wait(&self) -> String {
        let mut rx = self.reason.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "shutdown trigger dropped".into();
            }
        }
    }

    /// Whether stopping has begun.
    pub fn is_triggered(&self) -> bool {
        self.reason.borrow().is_some()
    }
}
