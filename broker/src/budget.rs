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
