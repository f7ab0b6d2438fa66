//! Deferred cache maintenance (docs/run-loop.md §7).
//!
//! Populating guest memory (zeroing it, loading images) does no per-page
//! cache maintenance: it records the region and raises a VM-wide pending
//! operation. Before any vCPU of the VM enters the guest it performs the
//! pending operations once, under the VM's memory lock: clean and invalidate
//! every recorded region to the point of coherency, then invalidate the
//! instruction cache. The guest starts with its MMU and caches off, so this is
//! what makes what the host wrote visible to it. It is a VM-wide request, not a
//! first-run hook: populating again after vCPUs ran (a `SYSTEM_RESET` that
//! reloads the images) raises it again, and it is performed in a new epoch.
//!
//! # API
//!
//! - [`PendingOps::new`] (`const` outside loom), one per VM.
//! - [`PendingOps::populated`]`(region)`: records a [`Region`] the host wrote
//!   and raises [`PENDING_CLEAN_INVAL`] (release). The caller holds the VM's
//!   memory lock, then kicks the VM's vCPUs (a vCPU in the guest keeps running
//!   until its next exit).
//! - [`PendingOps::is_pending`] / [`PendingOps::pending`] (acquire): for the
//!   run loop's re-check before entry.
//! - [`PendingOps::perform_pending`]`(mem_lock, ops)`: for the run loop
//!   before entry. Returns at once if nothing is pending; otherwise takes
//!   `mem_lock` ([`MemLock`]: the VM's memory lock), re-checks, and — for
//!   exactly one of any number of racing vCPUs — cleans each recorded region
//!   once with [`CacheOps::clean_inval_poc`], invalidates the I-cache once,
//!   clears the list and the bit (release), and returns [`Performed`].
//! - [`PendingOps::counters`]: [`CmoCounters`] (epochs, regions and bytes
//!   cleaned, and the per-epoch check: epochs whose cleaned regions differ from
//!   the regions populated for them, which must stay 0). Its `Display` is the
//!   statistics line `cmo: N epochs, M regions, K KiB`.
//!
//! A region that lies inside one already recorded in the same epoch is not
//! recorded again; one that continues the last recorded region (in both IPA
//! and PA) extends it. Zero-length regions are ignored.

use crate::rcu::sync::{const_unless_loom, AtomicU32, Mutex, Ordering};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64 as StatU64, Ordering::Relaxed};

/// Pending-operation bit: clean and invalidate recorded regions to PoC, then
/// invalidate the I-cache.
pub const PENDING_CLEAN_INVAL: u32 = 1 << 0;

/// A populated range of guest memory: its IPA, where the host wrote it (PA),
/// its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub ipa: u64,
    pub pa: u64,
    pub len: u64,
}

impl Region {
    /// `other` lies inside `self`, at the same offset in both address spaces.
    fn covers(&self, other: &Region) -> bool {
        let Some(off) = other.ipa.checked_sub(self.ipa) else { return false };
        off.checked_add(other.len).is_some_and(|end| end <= self.len) && self.pa.checked_add(off) == Some(other.pa)
    }

    /// `next` starts where `self` ends, in both address spaces.
    fn continued_by(&self, next: &Region) -> bool {
        self.ipa.checked_add(self.len) == Some(next.ipa) && self.pa.checked_add(self.len) == Some(next.pa)
    }
}

/// The cache operations: the host's on the board, fakes in tests.
pub trait CacheOps {
    /// Clean and invalidate `[pa, pa + len)` to the point of coherency, and
    /// wait for completion (`dsb`).
    fn clean_inval_poc(&self, pa: u64, len: u64);
    /// Invalidate the whole instruction cache to PoU (inner shareable).
    fn invalidate_icache(&self);
}

/// The VM's memory lock, held while the maintenance runs so memory cannot be
/// populated or unmapped meanwhile.
pub trait MemLock {
    /// Takes the lock; it is held until the returned guard is dropped.
    fn hold(&self) -> impl Sized + '_;
}

impl<L> MemLock for Mutex<L> {
    fn hold(&self) -> impl Sized + '_ {
        self.lock()
    }
}

/// What one [`PendingOps::perform_pending`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Performed {
    /// The epoch it completed (1 for the first).
    pub epoch: u64,
    pub regions: usize,
    pub bytes: u64,
}

/// Statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmoCounters {
    /// Epochs performed.
    pub epochs: u64,
    /// Regions cleaned, over all epochs.
    pub regions: u64,
    /// Bytes cleaned, over all epochs.
    pub bytes: u64,
    /// Epochs in which the regions cleaned differed from those populated for
    /// them: must stay 0.
    pub mismatched_epochs: u64,
}

impl fmt::Display for CmoCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cmo: {} epochs, {} regions, {} KiB", self.epochs, self.regions, self.bytes.div_ceil(1024))?;
        if self.mismatched_epochs != 0 {
            write!(f, " ({} epochs MISMATCHED)", self.mismatched_epochs)?;
        }
        Ok(())
    }
}

/// Regions recorded for the next epoch.
#[derive(Debug)]
struct Recorded {
    regions: Vec<Region>,
}

/// A VM's pending cache maintenance.
#[derive(Debug)]
pub struct PendingOps {
    pending: AtomicU32,
    recorded: Mutex<Recorded>,
    epochs: StatU64,
    regions: StatU64,
    bytes: StatU64,
    mismatched: StatU64,
}

impl Default for PendingOps {
    fn default() -> Self {
        Self::new()
    }
}

impl PendingOps {
    const_unless_loom! {
        pub fn new() -> Self {
            Self {
                pending: AtomicU32::new(0),
                recorded: Mutex::new(Recorded { regions: Vec::new() }),
                epochs: StatU64::new(0),
                regions: StatU64::new(0),
                bytes: StatU64::new(0),
                mismatched: StatU64::new(0),
            }
        }
    }

    /// Records a region the host wrote and raises [`PENDING_CLEAN_INVAL`]
    /// (release: a vCPU that sees the bit sees the region, and the data the
    /// host wrote before this call).
    pub fn populated(&self, region: Region) {
        if region.len == 0 {
            return;
        }
        let mut rec = self.recorded.lock();
        let regions = &mut rec.regions;
        if let Some(last) = regions.last_mut().filter(|last| last.continued_by(&region)) {
            last.len += region.len;
        } else if !regions.iter().any(|r| r.covers(&region)) {
            regions.push(region);
        }
        self.pending.fetch_or(PENDING_CLEAN_INVAL, Ordering::Release);
    }

    /// The pending-operation bits (acquire).
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Whether maintenance is pending (acquire).
    pub fn is_pending(&self) -> bool {
        self.pending() & PENDING_CLEAN_INVAL != 0
    }

    /// Epochs performed so far.
    #[cfg_attr(target_os = "none", allow(dead_code, reason = "statistics read counters() instead"))]
    pub fn epoch(&self) -> u64 {
        self.epochs.load(Relaxed)
    }

    /// Performs the pending maintenance, if any, holding `mem_lock` (the VM's
    /// memory lock, which populating holds too). Returns what it did, or
    /// `None` when there was nothing to do or another vCPU did it first.
    pub fn perform_pending(&self, mem_lock: &impl MemLock, ops: &impl CacheOps) -> Option<Performed> {
        if !self.is_pending() {
            return None;
        }
        let _mem = mem_lock.hold();
        // The list lock is held throughout, so a region recorded meanwhile
        // (by code that does not take the memory lock) waits for the next
        // epoch instead of having its bit cleared here.
        let mut rec = self.recorded.lock();
        if self.pending.load(Ordering::Acquire) & PENDING_CLEAN_INVAL == 0 {
            return None;
        }
        let populated = rec.regions.len();
        let (mut cleaned, mut bytes) = (0usize, 0u64);
        for r in rec.regions.drain(..) {
            ops.clean_inval_poc(r.pa, r.len);
            cleaned += 1;
            bytes += r.len;
        }
        ops.invalidate_icache();
        if cleaned != populated {
            self.mismatched.fetch_add(1, Relaxed);
        }
        self.regions.fetch_add(cleaned as u64, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        let epoch = self.epochs.fetch_add(1, Relaxed) + 1;
        // Release: a vCPU that sees the bit clear enters after the maintenance.
        self.pending.fetch_and(!PENDING_CLEAN_INVAL, Ordering::Release);
        Some(Performed { epoch, regions: cleaned, bytes })
    }

    pub fn counters(&self) -> CmoCounters {
        CmoCounters {
            epochs: self.epochs.load(Relaxed),
            regions: self.regions.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            mismatched_epochs: self.mismatched.load(Relaxed),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::sync::Mutex as StdMutex;
    use std::vec::Vec;

    /// Records every operation in order.
    #[derive(Default)]
    struct Fake {
        log: StdMutex<Vec<Op>>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Op {
        Clean(u64, u64),
        Icache,
    }

    impl CacheOps for Fake {
        fn clean_inval_poc(&self, pa: u64, len: u64) {
            self.log.lock().unwrap().push(Op::Clean(pa, len));
        }
        fn invalidate_icache(&self) {
            self.log.lock().unwrap().push(Op::Icache);
        }
    }

    impl Fake {
        fn take(&self) -> Vec<Op> {
            core::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    /// Non-adjacent regions (a gap of one page between each).
    fn r(n: u64) -> Region {
        Region { ipa: 0x4000_0000 + n * 0x2000, pa: 0x8000_0000 + n * 0x2000, len: 0x1000 }
    }

    #[test]
    fn three_regions_are_cleaned_once_each_then_nothing_is_pending() {
        let cmo = PendingOps::new();
        let mem = spin::Mutex::new(());
        let fake = Fake::default();
        assert_eq!(cmo.perform_pending(&mem, &fake), None, "nothing populated");
        assert!(fake.take().is_empty());
        for n in 0..3 {
            cmo.populated(r(n));
        }
        assert!(cmo.is_pending());
        assert_eq!(cmo.pending(), PENDING_CLEAN_INVAL);
        assert_eq!(cmo.perform_pending(&mem, &fake), Some(Performed { epoch: 1, regions: 3, bytes: 0x3000 }));
        assert_eq!(
            fake.take(),
            [Op::Clean(r(0).pa, 0x1000), Op::Clean(r(1).pa, 0x1000), Op::Clean(r(2).pa, 0x1000), Op::Icache]
        );
        assert!(!cmo.is_pending());
        assert_eq!(cmo.perform_pending(&mem, &fake), None, "a second call is a no-op");
        assert!(fake.take().is_empty());
        assert!(mem.try_lock().is_some(), "the memory lock is released");
    }

    #[test]
    fn populating_after_a_perform_raises_it_again_in_a_new_epoch() {
        let cmo = PendingOps::new();
        let mem = spin::Mutex::new(());
        let fake = Fake::default();
        cmo.populated(r(0));
        cmo.populated(r(1));
        cmo.perform_pending(&mem, &fake);
        fake.take();
        // vCPUs ran; a reset reloads one image.
        cmo.populated(r(1));
        assert!(cmo.is_pending());
        assert_eq!(cmo.perform_pending(&mem, &fake), Some(Performed { epoch: 2, regions: 1, bytes: 0x1000 }));
        assert_eq!(fake.take(), [Op::Clean(r(1).pa, 0x1000), Op::Icache]);
        let c = cmo.counters();
        assert_eq!(c, CmoCounters { epochs: 2, regions: 3, bytes: 0x3000, mismatched_epochs: 0 });
        assert_eq!(c.to_string(), "cmo: 2 epochs, 3 regions, 12 KiB");
        assert_eq!(cmo.epoch(), 2);
    }

    #[test]
    fn duplicates_are_cleaned_once_and_contiguous_regions_merge() {
        let cmo = PendingOps::new();
        let mem = spin::Mutex::new(());
        let fake = Fake::default();
        cmo.populated(r(0));
        cmo.populated(r(1));
        cmo.populated(r(0)); // the same again in one epoch
                             // Page by page, contiguous in IPA and PA: one region.
        let base = Region { ipa: 0x4800_0000, pa: 0x9000_0000, len: 0x1000 };
        for i in 0..4 {
            cmo.populated(Region { ipa: base.ipa + i * 0x1000, pa: base.pa + i * 0x1000, len: 0x1000 });
        }
        // Inside the merged region: nothing new. Same IPA, other PA: new.
        cmo.populated(Region { ipa: base.ipa + 0x2000, pa: base.pa + 0x2000, len: 0x2000 });
        cmo.populated(Region { ipa: base.ipa + 0x2000, pa: 0xb000_0000, len: 0x1000 });
        // Contiguous in IPA only: separate.
        cmo.populated(Region { ipa: base.ipa + 0x4000, pa: 0xa000_0000, len: 0x1000 });
        cmo.populated(Region { ipa: 0, pa: 0, len: 0 }); // ignored
        assert_eq!(cmo.perform_pending(&mem, &fake).map(|p| p.regions), Some(5));
        assert_eq!(
            fake.take(),
            [
                Op::Clean(r(0).pa, 0x1000),
                Op::Clean(r(1).pa, 0x1000),
                Op::Clean(base.pa, 0x4000),
                Op::Clean(0xb000_0000, 0x1000),
                Op::Clean(0xa000_0000, 0x1000),
                Op::Icache
            ]
        );
        // A zero-length region raises nothing.
        cmo.populated(Region { ipa: 0x4000_0000, pa: 0x8000_0000, len: 0 });
        assert!(!cmo.is_pending());
        // A region at the top of the address space does not overflow.
        cmo.populated(Region { ipa: u64::MAX - 0xfff, pa: u64::MAX - 0xfff, len: 0x1000 });
        cmo.populated(Region { ipa: 0, pa: 0, len: 0x1000 });
        assert_eq!(cmo.perform_pending(&mem, &fake).map(|p| p.regions), Some(2));
    }

    #[test]
    fn racing_vcpus_perform_it_exactly_once() {
        for _ in 0..200 {
            let cmo = PendingOps::new();
            let mem = spin::Mutex::new(());
            let fake = Fake::default();
            for n in 0..4 {
                cmo.populated(r(n));
            }
            let done: Vec<Option<Performed>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4).map(|_| s.spawn(|| cmo.perform_pending(&mem, &fake))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let performed: Vec<_> = done.iter().flatten().collect();
            assert_eq!(performed, [&Performed { epoch: 1, regions: 4, bytes: 0x4000 }], "{done:?}");
            let log = fake.take();
            assert_eq!(log.len(), 5);
            assert_eq!(log.iter().filter(|o| **o == Op::Icache).count(), 1);
            for n in 0..4 {
                assert_eq!(log.iter().filter(|o| **o == Op::Clean(r(n).pa, 0x1000)).count(), 1);
            }
        }
    }

    #[test]
    fn regions_populated_while_vcpus_perform_are_each_cleaned_once() {
        for _ in 0..100 {
            let cmo = PendingOps::new();
            let mem = spin::Mutex::new(());
            let fake = Fake::default();
            std::thread::scope(|s| {
                s.spawn(|| {
                    for n in 0..16 {
                        let _mem = mem.lock();
                        cmo.populated(r(n));
                    }
                });
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..16 {
                            cmo.perform_pending(&mem, &fake);
                            std::hint::spin_loop();
                        }
                    });
                }
            });
            cmo.perform_pending(&mem, &fake);
            assert!(!cmo.is_pending());
            let log = fake.take();
            for n in 0..16 {
                assert_eq!(log.iter().filter(|o| **o == Op::Clean(r(n).pa, 0x1000)).count(), 1, "region {n}");
            }
            let c = cmo.counters();
            assert_eq!((c.regions, c.mismatched_epochs), (16, 0));
            assert_eq!(log.iter().filter(|o| **o == Op::Icache).count() as u64, c.epochs);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::rcu::sync::{thread, AtomicUsize};
    use loom::sync::Arc;

    #[derive(Default)]
    struct Fake {
        cleaned: AtomicUsize,
        icache: AtomicUsize,
    }

    impl CacheOps for Fake {
        fn clean_inval_poc(&self, _pa: u64, _len: u64) {
            self.cleaned.fetch_add(1, Ordering::Relaxed);
        }
        fn invalidate_icache(&self) {
            self.icache.fetch_add(1, Ordering::Relaxed);
        }
    }

    const R0: Region = Region { ipa: 0x4000_0000, pa: 0x8000_0000, len: 0x1000 };
    const R1: Region = Region { ipa: 0x4100_0000, pa: 0x8100_0000, len: 0x1000 };

    /// Two vCPUs race to perform: exactly one does the work, and a vCPU that
    /// finds nothing pending sees the work done (the release of the bit).
    #[test]
    fn loom_cmo_racing_vcpus_perform_it_once() {
        loom::model(|| {
            let cmo = Arc::new(PendingOps::new());
            let mem = Arc::new(Mutex::new(()));
            let fake = Arc::new(Fake::default());
            cmo.populated(R0);
            cmo.populated(R1);
            let other = {
                let (cmo, mem, fake) = (cmo.clone(), mem.clone(), fake.clone());
                thread::spawn(move || {
                    let p = cmo.perform_pending(&*mem, &*fake);
                    if p.is_none() {
                        assert_eq!(fake.cleaned.load(Ordering::Relaxed), 2, "entered before the clean");
                    }
                    p
                })
            };
            let mine = cmo.perform_pending(&*mem, &*fake);
            let theirs = other.join().unwrap();
            assert!(mine.is_some() != theirs.is_some(), "{mine:?} {theirs:?}");
            assert_eq!(mine.or(theirs), Some(Performed { epoch: 1, regions: 2, bytes: 0x2000 }));
            assert_eq!(fake.cleaned.load(Ordering::Relaxed), 2);
            assert_eq!(fake.icache.load(Ordering::Relaxed), 1);
        });
    }

    /// The host populates a region while a vCPU performs: the region is
    /// cleaned in this epoch or stays pending for the next, never lost.
    #[test]
    fn loom_cmo_a_region_populated_during_a_perform_is_not_lost() {
        loom::model(|| {
            let cmo = Arc::new(PendingOps::new());
            let mem = Arc::new(Mutex::new(()));
            let fake = Arc::new(Fake::default());
            cmo.populated(R0);
            let vcpu = {
                let (cmo, mem, fake) = (cmo.clone(), mem.clone(), fake.clone());
                thread::spawn(move || cmo.perform_pending(&*mem, &*fake))
            };
            {
                let _mem = mem.lock();
                cmo.populated(R1);
            }
            vcpu.join().unwrap();
            if fake.cleaned.load(Ordering::Relaxed) < 2 {
                assert!(cmo.is_pending(), "a populated region was dropped");
                cmo.perform_pending(&*mem, &*fake);
            }
            assert_eq!(fake.cleaned.load(Ordering::Relaxed), 2);
            assert!(!cmo.is_pending());
            assert_eq!(cmo.counters().mismatched_epochs, 0);
        });
    }
}
