//! The task that applies the broker's policies over the engine (DESIGN §13): the queue
//! ([`super::queue`]) when something that counts changed, and every second the seeding
//! counts and limits ([`super::seeding`]) and, where they matter, stalls.

use super::Service;
use std::sync::Arc;
use std::time::Duration;

/// How often transfers are counted and seeding limits and stalls looked at.
const TICK: Duration = Duration::from_secs(1);

/// Starts the policy task; it ends when the broker stops.
pub fn start(service: &Arc<Service>) {
    let service = service.clone();
    service.clone().runtime.spawn(async move {
        // The first look: records restored queued, or limits changed since the last run.
        service.queue.nudge();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let queue = tokio::select! {
                _ = service.queue.nudge.notified() => true,
                _ = tick.tick() => {
                    service.follow_alt_schedule();
                    service.count_and_limit_seeding().await;
                    service.queue.looks_for_stalls()
                }
                _ = service.shutdown.wait() => return,
            };
            if queue {
                let _adding = service.adding.lock().await;
                if service.is_stopping() {
                    return;
                }
                service.advance_queue_locked().await;
            }
        }
    });
}
