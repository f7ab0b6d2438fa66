//! Deferred cache maintenance (seed 003, DESIGN §2).
//!
//! Populating guest memory (zeroing it, loading images) does no per-page
//! cache maintenance. It records the region and raises a VM-wide pending
//! operation. Before any vCPU of the VM enters the guest, the run loop calls
//! [`PendingOps::perform_pending`]: under the VM's memory lock, once, every
//! recorded region is cleaned and invalidated to the point of coherency and
//! the instruction cache invalidated — what a guest running with its MMU and
//! caches off needs to see what the host wrote. It is a VM-wide request, not
//! a first-run hook: populating again after vCPUs ran (a `SYSTEM_RESET`
//! reloading the images) raises it again, and the next entry of any vCPU
//! performs it in a new epoch.
//!
//! The counters prove the rule "each populated region is cleaned once per
//! epoch": every epoch records how many regions were populated for it and
//! how many were cleaned, and the two must match.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A populated range of guest memory: its IPA, where the host wrote it, its
/// length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub ipa: u64,
    pub pa: u64,
    pub len: u64,
}

/// The cache operations, done by the host on the board and faked in tests.
pub trait CacheOps {
    fn clean_inval_poc(&self, pa: u64, len: u64);
    fn invalidate_icache(&self);
}

/// What the VM's statistics print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmoCounters {
    /// Epochs performed.
    pub epochs: u64,
    /// Regions cleaned, over all epochs.
    pub regions: u64,
    pub bytes: u64,
    /// Epochs in which the regions cleaned differed from those populated:
    /// must stay 0.
    pub mismatched_epochs: u64,
}

/// A VM's pending cache maintenance.
pub struct PendingOps {
    pending: AtomicBool,
    regions: spin::Mutex<Vec<Region>>,
    populated: AtomicU64,
    epochs: AtomicU64,
    cleaned: AtomicU64,
    bytes: AtomicU64,
    mismatched: AtomicU64,
}

impl Default for PendingOps {
    fn default() -> Self {
        Self::new()
    }
}

impl PendingOps {
    pub const fn new() -> Self {
        Self {
            pending: AtomicBool::new(false),
            regions: spin::Mutex::new(Vec::new()),
            populated: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
            cleaned: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
        }
    }

    /// Records a region the host wrote and raises the pending operation
    /// (release: a vCPU that sees the bit sees the region).
    pub fn populated(&self, region: Region) {
        let mut regions = self.regions.lock();
        if !regions.contains(&region) {
            regions.push(region);
            self.populated.fetch_add(1, Ordering::Relaxed);
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Whether maintenance is pending (acquire; pairs with [`Self::populated`]).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Performs the pending maintenance, if any, under `mem_lock` (the VM's
    /// memory lock, which populating holds too). Returns the regions cleaned
    /// in this call: 0 when there was nothing to do or another vCPU did it.
    pub fn perform_pending<L>(&self, mem_lock: &spin::Mutex<L>, ops: &impl CacheOps) -> usize {
        if !self.is_pending() {
            return 0;
        }
        let _mem = mem_lock.lock();
        if !self.pending.load(Ordering::Acquire) {
            return 0;
        }
        let regions = core::mem::take(&mut *self.regions.lock());
        for r in &regions {
            ops.clean_inval_poc(r.pa, r.len);
            self.bytes.fetch_add(r.len, Ordering::Relaxed);
        }
        ops.invalidate_icache();
        let populated = self.populated.swap(0, Ordering::Relaxed);
        if populated != regions.len() as u64 {
            self.mismatched.fetch_add(1, Ordering::Relaxed);
        }
        self.cleaned.fetch_add(regions.len() as u64, Ordering::Relaxed);
        self.epochs.fetch_add(1, Ordering::Relaxed);
        self.pending.store(false, Ordering::Release);
        regions.len()
    }

    pub fn counters(&self) -> CmoCounters {
        CmoCounters {
            epochs: self.epochs.load(Ordering::Relaxed),
            regions: self.cleaned.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            mismatched_epochs: self.mismatched.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        cleaned: Mutex<Vec<(u64, u64)>>,
        icache: AtomicU64,
    }

    impl CacheOps for Fake {
        fn clean_inval_poc(&self, pa: u64, len: u64) {
            self.cleaned.lock().unwrap().push((pa, len));
        }
        fn invalidate_icache(&self) {
            self.icache.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn r(n: u64) -> Region {
        Region { ipa: 0x4000_0000 + n * 0x1000, pa: 0x8000_0000 + n * 0x1000, len: 0x1000 }
    }

    #[test]
    fn each_region_is_cleaned_once_per_epoch() {
        let ops = PendingOps::new();
        let lock = spin::Mutex::new(());
        let fake = Fake::default();
        assert_eq!(ops.perform_pending(&lock, &fake), 0, "nothing populated");
        for n in 0..3 {
            ops.populated(r(n));
        }
        ops.populated(r(1));
        assert!(ops.is_pending());
        assert_eq!(ops.perform_pending(&lock, &fake), 3);
        assert_eq!(ops.perform_pending(&lock, &fake), 0, "second call is a no-op");
        assert_eq!(fake.cleaned.lock().unwrap().len(), 3);
        assert_eq!(fake.icache.load(Ordering::Relaxed), 1);
        // Populated again after vCPUs ran: raised again, a new epoch.
        ops.populated(r(1));
        assert!(ops.is_pending());
        assert_eq!(ops.perform_pending(&lock, &fake), 1);
        let c = ops.counters();
        assert_eq!((c.epochs, c.regions, c.bytes, c.mismatched_epochs), (2, 4, 4 * 0x1000, 0));
        assert_eq!(fake.cleaned.lock().unwrap()[3], (r(1).pa, 0x1000));
    }

    #[test]
    fn racing_vcpus_perform_it_once() {
        for _ in 0..50 {
            let ops = PendingOps::new();
            let lock = spin::Mutex::new(());
            let fake = Fake::default();
            for n in 0..4 {
                ops.populated(r(n));
            }
            let done: Vec<usize> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4).map(|_| s.spawn(|| ops.perform_pending(&lock, &fake))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(done.iter().sum::<usize>(), 4);
            assert_eq!(done.iter().filter(|&&d| d > 0).count(), 1);
            assert_eq!(fake.cleaned.lock().unwrap().len(), 4);
            assert_eq!(ops.counters().epochs, 1);
        }
    }
}
