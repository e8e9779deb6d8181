//! Budgets for the whole broker (DESIGN §4): what patrons together may make the broker hold,
//! beside each patron's own bounds. Per-patron bounds times 4,096 patrons is not a bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The whole broker's budget for patrons' large messages read and not yet answered (DESIGN
/// §4: per-patron bounds times 4,096 patrons is not a bound). A large message that finds it
/// spent is refused (`limit-reached`, in its turn) and its region closed at once.
pub struct RegionBudget {
    max_regions: usize,
    max_bytes: usize,
    regions: AtomicUsize,
    bytes: AtomicUsize,
}

impl RegionBudget {
    /// At most `max_regions` regions of `max_bytes` in all.
    pub fn new(max_regions: usize, max_bytes: usize) -> Arc<RegionBudget> {
        Arc::new(RegionBudget {
            max_regions,
            max_bytes,
            regions: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    /// Regions and bytes held now, and the limits: `(regions, max, bytes, max)`.
    pub fn use_now(&self) -> (usize, usize, usize, usize) {
        (
            self.regions.load(Ordering::Acquire),
            self.max_regions,
            self.bytes.load(Ordering::Acquire),
            self.max_bytes,
        )
    }

    /// Takes one region of `size` bytes from the budget, if it has room.
    pub fn take(self: &Arc<Self>, size: usize) -> Option<RegionTicket> {
        let regions = self.regions.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = self.bytes.fetch_add(size, Ordering::AcqRel) + size;
        let ticket = RegionTicket {
            size,
            budget: self.clone(),
        };
        if regions > self.max_regions || bytes > self.max_bytes {
            return None; // the ticket, dropped, gives both back
        }
        Some(ticket)
    }
}

/// One region counted against the [`RegionBudget`] until dropped.
pub struct RegionTicket {
    size: usize,
    budget: Arc<RegionBudget>,
}

impl Drop for RegionTicket {
    fn drop(&mut self) {
        self.budget.regions.fetch_sub(1, Ordering::AcqRel);
        self.budget.bytes.fetch_sub(self.size, Ordering::AcqRel);
    }
}

/// The whole broker's bounds on the events its patrons leave unread (DESIGN §4): each
/// patron's own bounds (`patron::MAX_QUEUED_BYTES`, `MAX_REGION_BYTES`) times 4,096 patrons
/// is not a bound.
///
/// - Each large event's shared memory region counts against [`UnreadBudget::regions`] from
///   when it is made until the socket it went on is seen drained: its patron read
///   everything, or closed its end (the kernel holds an unread region in that socket, the
///   broker's own outbox gone or not). Past the budget a large event goes as fragments:
///   slower, never refused.
/// - Events queued in the broker's own memory count against the queued bytes. Past that
///   bound the patron that leaves the most unread is cut off (see
///   [`UnreadBudget::on_over`]): a patron that reads its events holds next to nothing.
pub struct UnreadBudget {
    /// Regions of large events not yet seen read.
    pub regions: Arc<RegionBudget>,
    max_queued: usize,
    queued: AtomicUsize,
    /// Each region's ticket, with the socket it went on (a duplicate: the outbox may close
    /// its own), until that socket is seen drained. At most one per ticket.
    sent: std::sync::Mutex<Vec<(std::os::fd::OwnedFd, RegionTicket)>>,
    over: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// When [`UnreadBudget::sweep_now_and_then`] last swept.
    swept: std::sync::Mutex<Option<std::time::Instant>>,
}

impl UnreadBudget {
    /// At most `max_regions` regions of `max_region_bytes` in all, and `max_queued` bytes
    /// queued in all outboxes together.
    pub fn new(max_regions: usize, max_region_bytes: usize, max_queued: usize) -> Arc<Self> {
        Arc::new(UnreadBudget {
            regions: RegionBudget::new(max_regions, max_region_bytes),
            max_queued,
            queued: AtomicUsize::new(0),
            sent: Default::default(),
            over: Default::default(),
            swept: Default::default(),
        })
    }

    /// What to do when the queued bytes pass their bound (set once, by the event loop: it
    /// cuts off the patron with the most unread). It must not block or take the service's
    /// locks: it is called where events are pushed.
    pub fn on_over(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.over.set(hook);
    }

    /// Counts an outbox's queued bytes going from `before` to `now`. Growing past the bound
    /// tells the hook.
    pub fn requeued(&self, before: usize, now: usize) {
        let total = if now >= before {
            self.queued.fetch_add(now - before, Ordering::AcqRel) + (now - before)
        } else {
            self.queued.fetch_sub(before - now, Ordering::AcqRel) - (before - now)
        };
        if total > self.max_queued && now > before {
            if let Some(hook) = self.over.get() {
                hook();
            }
        }
    }

    /// Whether all outboxes together queue more than the bound.
    pub fn is_over(&self) -> bool {
        self.queued.load(Ordering::Acquire) > self.max_queued
    }

    /// Bytes queued in all outboxes, and the bound.
    pub fn queued_now(&self) -> (usize, usize) {
        (self.queued.load(Ordering::Acquire), self.max_queued)
    }

    /// Whether a region of `size` bytes may go on `socket`: if so it is counted until that
    /// socket is seen drained. Regions whose sockets drained since are let go first when
    /// the budget looks spent.
    pub fn take_region(&self, size: usize, socket: &std::os::fd::OwnedFd) -> bool {
        let ticket = self.regions.take(size).or_else(|| {
            self.sweep();
            self.regions.take(size)
        });
        let Some(ticket) = ticket else {
            return false;
        };
        // No descriptor to watch it with: no region (the ticket, dropped, gives it back).
        let Ok(watched) = socket.try_clone() else {
            return false;
        };
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.push((watched, ticket));
        true
    }

    /// Regions counted now, each with the duplicate of its socket kept to watch it.
    pub fn watched(&self) -> usize {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sweeps (see [`UnreadBudget::sweep`]) at most once a second, and only while regions
    /// are counted: a patron that read its regions and then left lets go of its socket just
    /// after its outbox closed, and nothing else may look again soon.
    pub fn sweep_now_and_then(&self) {
        if self.watched() == 0 {
            return;
        }
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
                return;
            }
            *swept = Some(std::time::Instant::now());
        }
        self.sweep();
    }

    /// Lets go of the regions whose sockets are drained (read, or their patrons gone).
    pub fn sweep(&self) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.retain(|(socket, _)| !crate::socket::drained(socket));
    }
}
