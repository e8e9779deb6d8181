//! The broker: the service, its dispatcher and their transport, put together; its life
//! from start to stop.
//!
//! Layers depend one way: transport ([`crate::rendezvous`], [`crate::requests`],
//! [`crate::patron`]'s outboxes) → [`crate::dispatch`] → [`crate::commands`] →
//! [`crate::service`] → engine, registry, store, roots. This module only wires them.

use crate::config::BrokerConfig;
use crate::dispatch::Dispatcher;
use crate::patron;
use crate::rendezvous;
use crate::requests::RequestReader;
use crate::service::fanout;
use crate::service::Service;
use anyhow::Context;
use proto::Event;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping broker waits for patrons to take their last event.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// A running broker.
pub struct Broker {
    /// What it does with torrents.
    pub service: Arc<Service>,
    /// How patrons' requests reach the service.
    pub dispatcher: Arc<Dispatcher>,
}

impl Broker {
    /// Starts the engine and restores the torrents of a previous run.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        let service = Service::start(config).await?;
        let dispatcher = Dispatcher::new(service.clone());
        Ok(Broker {
            service,
            dispatcher,
        })
    }

    /// Runs until SIGTERM/SIGINT or a patron's stop request, then stops cleanly.
    pub async fn serve(&self) -> anyhow::Result<()> {
        let service = &self.service;
        service.shutdown.on_signals()?;
        let reader = RequestReader::start(self.dispatcher.clone())?;
        self.dispatcher.attach(Arc::new(reader.clone()));
        // The board shows every torrent restored before any patron can read it.
        fanout::start(service.clone()).await?;
        let listener = rendezvous::Rendezvous::bind(&service.config.socket_path)?;
        tracing::info!(
            pid = std::process::id(),
            socket = %service.config.socket_path.display(),
            listen = %service.config.listen,
            loopback_only = service.config.loopback_only,
            "broker ready"
        );
        listener.start(self.dispatcher.clone(), reader)?;
        if let Some(dir) = &service.config.watch_dir {
            crate::watch_dir::start(service.clone(), dir.clone())?;
        }
        // systemd (`Type=notify`): patrons can connect from now on.
        notify_service_manager(&[sd_notify::NotifyState::Ready]);
        let reason = service.shutdown.wait().await;
        notify_service_manager(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status(&format!("stopping: {reason}")),
        ]);
        self.stop(&reason).await;
        Ok(())
    }

    /// Stops: no new patrons, every patron told, state persisted, engine stopped.
    async fn stop(&self, reason: &str) {
        let service = &self.service;
        tracing::info!("stopping: {reason}");
        let _ = std::fs::remove_file(&service.config.socket_path);
        // Board readers stop waiting now and go looking for the next broker.
        service.board.stop();
        let outboxes = self.dispatcher.outboxes();
        // Say goodbye to everyone at once, then wait (bounded) for the slowest reader.
        let goodbye = Event::BrokerStopping {
            reason: reason.to_owned(),
        };
        let _ = tokio::task::spawn_blocking(move || {
            patron::say_goodbye(&outboxes, goodbye, GOODBYE_WAIT)
        })
        .await;
        service.stop_engine().await;
        tracing::info!("stopped");
    }
}

/// Starts the broker on a fresh runtime and serves until stopped. What `main` calls.
pub fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("broker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let broker = Broker::start(config).await?;
        broker.serve().await
    })?;
    // Patron reader/writer threads may still block in ipc calls; they die with the process.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) how the broker is doing. Nothing
/// happens without that variable.
fn notify_service_manager(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}
