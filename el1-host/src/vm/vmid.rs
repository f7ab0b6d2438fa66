//! VMIDs: the tag that keeps one guest's stage-2 TLB entries apart from
//! another's.
//!
//! VMIDs are handed out in generations, in the manner of KVM. A VM keeps the
//! VMID it was given for as long as its [`VmidSlot`] carries the current
//! generation. When every VMID of the generation is taken, the next request
//! starts a new generation: every VMID handed out so far becomes stale, each
//! VM gets a fresh one at its next [`refresh`](VmidAllocator::refresh), and
//! the request that rolled over is told to invalidate every guest TLB entry
//! ([`Refresh::flush_all`]) — a stale VMID's entries would otherwise be hit
//! by the VM that is given the same number in the new generation.
//!
//! VMID 0 is never handed out: it is the host's (`VTTBR_EL2` holds 0 while
//! the host runs).
//!
//! # The roll-over protocol ([`Vmids`])
//! A roll-over is only safe if no CPU still runs a guest under an old VMID
//! once another VM may run under the same number. So:
//! 1. [`Vmids::refresh`] is called with IRQs enabled, before a vCPU enters
//!    its guest. On a roll-over it runs the caller's `on_rollover` while it
//!    holds the allocator's lock: that must kick every physical CPU out of
//!    guest mode and wait until each has left (an IPI with wait, as KVM's
//!    `force_vm_exit`), then invalidate every guest TLB entry on every CPU
//!    (`HC_TLB_FLUSH_ALL`). No other VMID of the new generation is handed
//!    out before it returns.
//! 2. With IRQs disabled, just before entering the guest, the run loop checks
//!    [`Vmids::is_current`]; if the generation moved on meanwhile, it enables
//!    IRQs and loops back to 1. (The kick of step 1 is an IRQ, so a CPU that
//!    passed this check has either entered the guest — and leaves at once —
//!    or has not yet disabled IRQs.)
#![cfg_attr(target_os = "none", allow(dead_code, reason = "introspection used by the tests"))]

use core::sync::atomic::{AtomicU64, Ordering};

/// The widest VMID (`VTCR_EL2.VS` = 1).
pub const MAX_VMID_BITS: u8 = 16;
/// The narrowest width [`VmidAllocator::new`] accepts: one that leaves at
/// least three guest VMIDs. (The architecture has 8 and 16; tests use less.)
pub const MIN_VMID_BITS: u8 = 2;

const WORDS: usize = (1 << MAX_VMID_BITS) / 64;
const GEN_SHIFT: u32 = 16;

/// The VMID width that `ID_AA64MMFR1_EL1` reports: 16 when `VMIDBits` is
/// 0b0010, else 8.
pub const fn bits_from_mmfr1(id_aa64mmfr1: u64) -> u8 {
    if (id_aa64mmfr1 >> 4) & 0xf == 0b0010 {
        16
    } else {
        8
    }
}

/// A VM's VMID and the generation it belongs to, packed into one atomic word
/// so that every vCPU of the VM may read it. Generation 0 means "none yet".
#[derive(Debug, Default)]
pub struct VmidSlot(AtomicU64);

impl VmidSlot {
    /// A slot that holds no VMID; the first refresh assigns one.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// The generation the slot's VMID belongs to (0: none).
    pub fn generation(&self) -> u64 {
        self.0.load(Ordering::Acquire) >> GEN_SHIFT
    }

    /// The VMID last assigned (0: none). It is only valid to run with while
    /// [`generation`](Self::generation) is the current one.
    pub fn vmid(&self) -> u16 {
        self.0.load(Ordering::Acquire) as u16
    }

    fn load(&self) -> (u64, u16) {
        let v = self.0.load(Ordering::Acquire);
        (v >> GEN_SHIFT, v as u16)
    }

    fn store(&self, generation: u64, vmid: u16) {
        self.0.store((generation << GEN_SHIFT) | u64::from(vmid), Ordering::Release);
    }
}

/// What [`VmidAllocator::refresh`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refresh {
    /// The VMID to run the VM with.
    pub vmid: u16,
    /// A new generation began with this call: every guest TLB entry must be
    /// invalidated on every CPU before any VM runs with a VMID of the new
    /// generation. True for exactly one call per generation after the first.
    pub flush_all: bool,
}

/// The VMID allocator. Not thread safe by itself: [`Vmids`] wraps it in a
/// lock for use from several CPUs.
pub struct VmidAllocator {
    /// The largest VMID: `2^bits - 1`.
    max: u16,
    /// Starts at 1; a slot with generation 0 has never been assigned.
    generation: u64,
    /// VMIDs taken in the current generation (bit 0, the host's, always set).
    used: [u64; WORDS],
    /// Where the search for a free VMID starts, so a released VMID is not the
    /// next one handed out.
    next: u16,
}

impl VmidAllocator {
    /// An allocator for `bits`-wide VMIDs (8 or 16 from `ID_AA64MMFR1_EL1`,
    /// see [`bits_from_mmfr1`]). Widths outside
    /// [`MIN_VMID_BITS`]..=[`MAX_VMID_BITS`] are clamped into it.
    pub const fn new(bits: u8) -> Self {
        let bits = if bits < MIN_VMID_BITS {
            MIN_VMID_BITS
        } else if bits > MAX_VMID_BITS {
            MAX_VMID_BITS
        } else {
            bits
        };
        let max = ((1u32 << bits) - 1) as u16;
        let mut used = [0u64; WORDS];
        used[0] = 1;
        Self { max, generation: 1, used, next: 1 }
    }

    /// The largest VMID handed out.
    pub fn max_vmid(&self) -> u16 {
        self.max
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `slot` holds a VMID of the current generation.
    pub fn is_current(&self, slot: &VmidSlot) -> bool {
        slot.generation() == self.generation
    }

    /// The VMID `slot`'s VM must run with: its own if it is of the current
    /// generation, else the next free one, starting a new generation first
    /// if none is free (see [`Refresh::flush_all`]).
    pub fn refresh(&mut self, slot: &VmidSlot) -> Refresh {
        let (generation, vmid) = slot.load();
        if generation == self.generation {
            return Refresh { vmid, flush_all: false };
        }
        let mut flush_all = false;
        let vmid = match self.find_free() {
            Some(v) => v,
            None => {
                self.new_generation();
                flush_all = true;
                // A fresh generation has every guest VMID free.
                self.find_free().unwrap_or(1)
            }
        };
        self.take(vmid);
        slot.store(self.generation, vmid);
        Refresh { vmid, flush_all }
    }

    /// Gives back the VMID of a VM that is going away, and empties `slot`.
    ///
    /// The VMID may be handed to another VM in this generation, so the
    /// caller must have invalidated its TLB entries on every CPU (as
    /// `Stage2::destroy` does) and no vCPU of the VM may run any more. A
    /// stale slot's VMID is not in use in this generation, so it gives
    /// nothing back.
    pub fn release(&mut self, slot: &VmidSlot) {
        let (generation, vmid) = slot.load();
        if generation == self.generation && vmid != 0 && vmid <= self.max {
            self.used[usize::from(vmid) / 64] &= !(1 << (vmid % 64));
        }
        slot.store(0, 0);
    }

    /// VMIDs free in the current generation.
    pub fn free_count(&self) -> usize {
        let taken: u32 = self.used.iter().map(|w| w.count_ones()).sum();
        // The host's VMID 0 is counted in `taken` and in max + 1.
        usize::from(self.max) + 1 - taken as usize
    }

    fn is_used(&self, vmid: u16) -> bool {
        self.used[usize::from(vmid) / 64] & (1 << (vmid % 64)) != 0
    }

    fn take(&mut self, vmid: u16) {
        self.used[usize::from(vmid) / 64] |= 1 << (vmid % 64);
        self.next = if vmid >= self.max { 1 } else { vmid + 1 };
    }

    /// The first free VMID at or after `next`, wrapping round once.
    fn find_free(&self) -> Option<u16> {
        let start = self.next.clamp(1, self.max);
        (start..=self.max).chain(1..start).find(|&v| !self.is_used(v))
    }

    fn new_generation(&mut self) {
        // 48 bits of generation: at one roll-over per microsecond, 8 years.
        self.generation = if self.generation >= (u64::MAX >> GEN_SHIFT) { 1 } else { self.generation + 1 };
        self.used = [0; WORDS];
        self.used[0] = 1;
        self.next = 1;
    }
}

/// The VMID allocator shared by every CPU.
pub struct Vmids {
    inner: spin::Mutex<VmidAllocator>,
    /// A copy of the current generation, for the lock-free check before
    /// guest entry.
    generation: AtomicU64,
}

impl Vmids {
    /// See [`VmidAllocator::new`].
    pub const fn new(bits: u8) -> Self {
        Self { inner: spin::Mutex::new(VmidAllocator::new(bits)), generation: AtomicU64::new(1) }
    }

    /// As [`VmidAllocator::refresh`]. On a roll-over, `on_rollover` runs
    /// before the lock is released, so no VM can be given a VMID of the new
    /// generation before it returns: it must force every CPU out of guest
    /// mode and flush every guest TLB entry (see the module's protocol).
    /// Call with IRQs enabled.
    pub fn refresh(&self, slot: &VmidSlot, on_rollover: impl FnOnce()) -> Refresh {
        if self.is_current(slot) {
            return Refresh { vmid: slot.vmid(), flush_all: false };
        }
        let mut vmids = self.inner.lock();
        let r = vmids.refresh(slot);
        if r.flush_all {
            self.generation.store(vmids.generation(), Ordering::Release);
            on_rollover();
        }
        r
    }

    /// Whether `slot`'s VMID is still of the current generation: the check
    /// the run loop makes with IRQs disabled just before guest entry.
    pub fn is_current(&self, slot: &VmidSlot) -> bool {
        slot.generation() == self.generation.load(Ordering::Acquire)
    }

    /// As [`VmidAllocator::release`], with the invalidation done here:
    /// `flush_vmid` runs (under the lock, before the VMID can be reused) with
    /// the VMID when the slot holds one of the current generation.
    pub fn release(&self, slot: &VmidSlot, flush_vmid: impl FnOnce(u16)) {
        let mut vmids = self.inner.lock();
        if vmids.is_current(slot) {
            flush_vmid(slot.vmid());
        }
        vmids.release(slot);
    }

    /// VMIDs free in the current generation.
    pub fn free_count(&self) -> usize {
        self.inner.lock().free_count()
    }
}

/// The host's allocator, its width set once at start-up.
#[cfg(target_os = "none")]
static HOST: spin::Once<Vmids> = spin::Once::new();

/// Sets the host's allocator up with `bits`-wide VMIDs.
#[cfg(target_os = "none")]
pub fn init(bits: u8) {
    HOST.call_once(|| Vmids::new(bits));
}

/// The host's allocator.
#[cfg(target_os = "none")]
pub fn vmids() -> &'static Vmids {
    HOST.get().expect("vm::vmid::init ran")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn slots(n: usize) -> Vec<VmidSlot> {
        (0..n).map(|_| VmidSlot::new()).collect()
    }

    /// VMIDs that slots of the current generation hold, checked distinct.
    fn live_vmids(a: &VmidAllocator, slots: &[VmidSlot]) -> BTreeSet<u16> {
        let mut seen = BTreeSet::new();
        for s in slots.iter().filter(|s| a.is_current(s)) {
            assert!(seen.insert(s.vmid()), "VMID {} held by two live VMs in generation {}", s.vmid(), a.generation());
        }
        seen
    }

    #[test]
    fn widths_from_mmfr1_and_clamping() {
        assert_eq!(bits_from_mmfr1(0), 8);
        assert_eq!(bits_from_mmfr1(0b0010 << 4), 16);
        assert_eq!(bits_from_mmfr1(0xffff_ff0f), 8);
        assert_eq!(VmidAllocator::new(8).max_vmid(), 255);
        assert_eq!(VmidAllocator::new(16).max_vmid(), 0xffff);
        assert_eq!(VmidAllocator::new(0).max_vmid(), 3);
        assert_eq!(VmidAllocator::new(40).max_vmid(), 0xffff);
    }

    #[test]
    fn eight_bits_exhaust_then_roll_over() {
        let mut a = VmidAllocator::new(8);
        let vms = slots(256);
        let mut got = BTreeSet::new();
        for s in &vms[..255] {
            let r = a.refresh(s);
            assert!(!r.flush_all);
            assert_ne!(r.vmid, 0, "VMID 0 is the host's");
            assert!(got.insert(r.vmid));
        }
        assert_eq!(got.len(), 255);
        assert_eq!(a.free_count(), 0);
        // A running VM keeps its VMID while the generation lasts.
        assert_eq!(a.refresh(&vms[7]), Refresh { vmid: vms[7].vmid(), flush_all: false });

        let r = a.refresh(&vms[255]);
        assert!(r.flush_all, "the 256th VM starts generation 2");
        assert_eq!(a.generation(), 2);
        assert_eq!(live_vmids(&a, &vms).len(), 1, "every other VM is stale");
        for s in &vms[..254] {
            assert!(!a.is_current(s));
            assert!(!a.refresh(s).flush_all, "one flush per generation");
        }
        assert_eq!(live_vmids(&a, &vms).len(), 255);
        assert_eq!(a.free_count(), 0);
        // 256 VMs do not fit in 255 VMIDs: the last one rolls over again.
        assert!(a.refresh(&vms[254]).flush_all);
        assert_eq!(a.generation(), 3);
        assert_eq!(live_vmids(&a, &vms).len(), 1);
    }

    #[test]
    fn two_bits_roll_over_every_fourth_vm_and_running_vms_get_fresh_vmids() {
        let mut a = VmidAllocator::new(2);
        let vms = slots(3);
        let first: Vec<u16> = vms.iter().map(|s| a.refresh(s).vmid).collect();
        assert_eq!(first, [1, 2, 3]);
        let newcomer = VmidSlot::new();
        let r = a.refresh(&newcomer);
        assert!(r.flush_all);
        assert_eq!(r.vmid, 1);
        // vms[0] ran across the roll-over: its VMID 1 now belongs to the
        // newcomer, so it must get another.
        assert!(!a.is_current(&vms[0]));
        let again = a.refresh(&vms[0]);
        assert!(!again.flush_all);
        assert_ne!(again.vmid, 1);
        assert_eq!(vms[0].generation(), 2);
        let all: Vec<&VmidSlot> = vec![&vms[0], &vms[1], &newcomer];
        for s in &all {
            a.refresh(s);
        }
        let live: BTreeSet<u16> = all.iter().map(|s| s.vmid()).collect();
        assert_eq!(live, BTreeSet::from([1, 2, 3]));
        // The fourth live VM forces generation 3.
        assert!(a.refresh(&vms[2]).flush_all);
        assert_eq!(a.generation(), 3);
    }

    #[test]
    fn release_frees_a_vmid_for_this_generation_only() {
        let mut a = VmidAllocator::new(2);
        let vms = slots(3);
        for s in &vms {
            a.refresh(s);
        }
        let freed = vms[1].vmid();
        a.release(&vms[1]);
        assert_eq!(vms[1].generation(), 0);
        assert_eq!(a.free_count(), 1);
        let late = VmidSlot::new();
        assert_eq!(a.refresh(&late), Refresh { vmid: freed, flush_all: false });

        // A slot from an old generation gives back nothing of the new one.
        let newest = VmidSlot::new();
        assert!(a.refresh(&newest).flush_all);
        let taken = a.free_count();
        a.release(&vms[0]);
        assert_eq!(a.free_count(), taken, "stale VMID released");
        assert!(a.is_current(&newest));
    }

    /// Random refresh/release traffic against the rules: distinct VMIDs among
    /// the live VMs of a generation, VMID 0 never handed out, one flush per
    /// generation, and a roll-over only when the generation is full.
    #[test]
    fn random_traffic_keeps_the_rules() {
        for bits in [2u8, 3, 4, 8] {
            let mut a = VmidAllocator::new(bits);
            let n = 2 * usize::from(a.max_vmid()) + 8;
            let vms = slots(n);
            let mut flushes: BTreeMap<u64, usize> = BTreeMap::new();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(bits);
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let s = &vms[(x % n as u64) as usize];
                if x & 0x700 == 0 {
                    a.release(s);
                } else {
                    let was_current = a.is_current(s);
                    let free_before = a.free_count();
                    let r = a.refresh(s);
                    assert_ne!(r.vmid, 0);
                    assert!(r.vmid <= a.max_vmid());
                    if r.flush_all {
                        assert_eq!(free_before, 0, "rolled over with VMIDs free");
                        assert!(!was_current);
                        *flushes.entry(a.generation()).or_default() += 1;
                    }
                }
                live_vmids(&a, &vms);
            }
            assert!(a.generation() > 3, "{bits} bits: the traffic should roll over");
            assert!(flushes.values().all(|&n| n == 1), "{bits} bits: {flushes:?}");
            assert_eq!(flushes.len() as u64, a.generation() - 1);
        }
    }

    #[test]
    fn shared_allocator_from_several_threads() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        let vmids = Arc::new(Vmids::new(2));
        let vms: Arc<Vec<VmidSlot>> = Arc::new(slots(6));
        let rollovers = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (vmids, vms, rollovers, log) = (vmids.clone(), vms.clone(), rollovers.clone(), log.clone());
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let s = &vms[t * 2 + i % 2];
                        let r = vmids.refresh(s, || {
                            rollovers.fetch_add(1, Ordering::SeqCst);
                        });
                        // Read back under no lock: the slot says which generation.
                        log.lock().unwrap().push((s.generation(), r.vmid, t * 2 + i % 2, r.flush_all));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let log = log.lock().unwrap();
        let mut owner: BTreeMap<(u64, u16), usize> = BTreeMap::new();
        for &(generation, vmid, slot, _) in log.iter() {
            assert_ne!(vmid, 0);
            let prev = owner.insert((generation, vmid), slot);
            assert!(prev.is_none() || prev == Some(slot), "VMID {vmid} shared in generation {generation}");
        }
        let flushes = log.iter().filter(|e| e.3).count();
        assert_eq!(flushes, rollovers.load(Ordering::SeqCst));
        let generations: BTreeSet<u64> = log.iter().map(|e| e.0).collect();
        assert!(flushes >= 1, "six VMs on three VMIDs must roll over");
        assert!(generations.len() >= 2);
    }

    #[test]
    fn shared_release_flushes_only_a_current_vmid() {
        let vmids = Vmids::new(8);
        let vm = VmidSlot::new();
        let r = vmids.refresh(&vm, || panic!("no roll-over expected"));
        let mut flushed = None;
        vmids.release(&vm, |v| flushed = Some(v));
        assert_eq!(flushed, Some(r.vmid));
        assert_eq!(vmids.free_count(), 255);
        let mut called = false;
        vmids.release(&vm, |_| called = true);
        assert!(!called, "an empty slot has nothing to flush");
    }
}
