//! A host-wide bound on the interrupt state guests can make the host keep on
//! its heap: the ITS's devices and interrupt translation entries and the
//! vGIC's LPIs. Each VM has its own bounds too (`its::MAX_DEVICES`,
//! `its::MAX_ITES`, `MAX_LPIS`), but many VMs together could still exhaust
//! the heap, and an allocation failure there would stop the host. With this
//! budget spent, further mappings are refused the way a full table is (the
//! command is dropped and counted), and the host goes on.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Entries of interrupt state, shared by every VM.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Budget {
    /// Unlimited until [`Budget::set_limit`].
    pub const fn new() -> Self {
        Self { limit: AtomicUsize::new(usize::MAX), used: AtomicUsize::new(0) }
    }

    pub fn set_limit(&self, entries: usize) {
        self.limit.store(entries, Ordering::Relaxed);
    }

    /// Takes `n` entries; `false` (and nothing taken) if that would pass the limit.
    pub fn take(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(n).filter(|&u| u <= limit))
            .is_ok()
    }

    /// Gives back `n` entries taken before.
    pub fn give(&self, n: usize) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(n)));
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

/// The budget every VM's ITS and vGIC draw from.
pub static INTERRUPT_STATE: Budget = Budget::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back() {
        let b = Budget::new();
        assert!(b.take(1_000_000), "unlimited until set");
        b.give(1_000_000);
        b.set_limit(10);
        assert!(b.take(6) && b.take(4));
        assert!(!b.take(1));
        assert_eq!(b.used(), 10);
        b.give(3);
        assert!(b.take(3) && !b.take(1));
        b.give(100);
        assert_eq!(b.used(), 0, "never below zero");
        assert!(!b.take(usize::MAX));
    }
}
