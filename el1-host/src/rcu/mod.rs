//! A small RCU (read-copy-update) for the host's CPUs, with extended quiescent
//! states for CPUs that run a guest or idle (docs/run-loop.md §5, §6).
//!
//! # Model
//!
//! Each of up to [`MAX_CPUS`] CPUs has a quiescent-state (QS) counter and an
//! EQS counter that is odd while the CPU is in an *extended quiescent state*
//! (it runs a guest or idles, and holds no RCU references). A grace period
//! started at time `t` has passed when every other online CPU has, since `t`,
//! reported a QS, entered or left EQS, or gone offline, or was in EQS at `t`.
//! The CPU that waits counts as quiescent itself.
//!
//! # API (all methods take `&self`; `cpu` is the index of the CPU the code runs on)
//!
//! - [`Rcu::new`] (`const` outside loom, so a `static RCU: Rcu` works).
//! - [`Rcu::online`] / [`Rcu::offline`]: a CPU joins / leaves (CPUs start offline).
//! - [`Rcu::note_quiescent`]: the run loop calls it between guest entries, idle
//!   between sleeps.
//! - [`Rcu::eqs_enter`] / [`Rcu::eqs_exit`]: balanced, with IRQs disabled, around
//!   the `hvc` that runs a guest and around idle's `wfi`.
//! - [`Rcu::in_eqs`], [`Rcu::irq_entry_check`] (the IRQ entry path calls it;
//!   `false` means an IRQ was taken in EQS, a bug: count it, and panic in debug
//!   builds), [`Rcu::stats`], [`Rcu::grace_periods`].
//! - [`Rcu::synchronize`] waits for a grace period, calling `relax` while it
//!   spins; [`Rcu::start_grace_period`] + [`GracePeriod::poll`] is the same without
//!   blocking.
//! - [`Rcu::read_lock`] opens a read-side section ([`ReadGuard`]) on a CPU.
//! - [`RcuCell<T>`]: a `Box<T>` behind an atomic pointer. [`RcuCell::read`]
//!   borrows the current value for as long as the guard lives;
//!   [`RcuCell::replace`] publishes a new value and hands back the old one as
//!   [`Retired`], which [`Retired::free_after`] drops after a grace period.
//!
//! # The reader's rule
//!
//! A reference from [`RcuCell::read`] is valid until the reader's CPU next
//! reports a quiescent state: [`Rcu::note_quiescent`], [`Rcu::eqs_enter`],
//! [`Rcu::offline`], or waiting for a grace period itself. The borrow ties it
//! to a [`ReadGuard`] (which cannot leave its thread), and each of those
//! reports asserts that the CPU has no open guard, so breaking the rule panics
//! instead of freeing memory under a reader. What it relies on: the `cpu`
//! passed to every call is the CPU the code is running on, and the host does
//! not move a thread to another CPU while it holds a guard.
//!
//! Writers that replace the same cell serialise among themselves (a lock of
//! their own); readers never block. [`Rcu::synchronize`] must not be called with
//! IRQs disabled or while holding a lock that another CPU needs on its way to a
//! quiescent state.
//!
//! # Memory ordering
//!
//! The writer publishes (swap), then a `SeqCst` fence, then reads the counters.
//! Every QS report, EQS exit and `online` ends with a `SeqCst` fence before the
//! CPU can read again. By the fence-fence rule either the writer sees the
//! counter change, or the CPU's later reads see the new pointer. Counter
//! increments are `Release` and the writer's reads `Acquire`, so everything a
//! reader did before its report happens before the free.
//!
//! # Model checking
//!
//! The loom tests in this module and in `sched::work`, `vcpu::psci` and
//! `vm::cmo` run with (also `scripts/loom`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ferrovisor-host --release --target-dir target/loom -- loom
//! ```
#![cfg_attr(
    target_os = "none",
    allow(dead_code, reason = "statistics and offline are used by the tests and CPU hot-unplug")
)]

use alloc::boxed::Box;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32 as StatU32, AtomicU64 as StatU64, Ordering::Relaxed};
use ferrovisor_shared::boot::MAX_CPUS;
use sync::{fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// Atomics, hints and a mutex that are loom's under `cfg(loom)` and the real
/// ones otherwise, for the modules whose protocols loom checks.
pub(crate) mod sync {
    // A shim: not every build uses every item.
    #![allow(unused_imports)]
    #[cfg(not(loom))]
    pub(crate) use core::hint;
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::*;
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::*;
    #[cfg(loom)]
    pub(crate) use loom::{hint, thread};

    #[cfg(not(loom))]
    pub(crate) use spin::{Mutex, MutexGuard};

    /// loom's mutex behind `spin::Mutex`'s API (a `lock` that cannot fail).
    #[cfg(loom)]
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    #[cfg(loom)]
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
    #[cfg(loom)]
    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // A poisoned lock means another model thread already panicked.
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// Declares a `const fn`, or a plain `fn` under loom (whose atomics have no
    /// `const` constructors).
    macro_rules! const_unless_loom {
        ($(#[$m:meta])* $v:vis fn $($rest:tt)*) => {
            #[cfg(not(loom))]
            $(#[$m])* $v const fn $($rest)*
            #[cfg(loom)]
            $(#[$m])* $v fn $($rest)*
        };
    }
    pub(crate) use const_unless_loom;
}

use sync::const_unless_loom;

/// One CPU's RCU state.
#[derive(Debug)]
struct CpuState {
    /// Quiescent states reported (including going offline).
    qs: AtomicU64,
    /// Odd while the CPU is in an extended quiescent state.
    eqs: AtomicU64,
    online: AtomicBool,
    /// Open read-side sections; only this CPU touches it.
    readers: StatU32,
    /// IRQs taken while in EQS (each one a bug in the entry discipline).
    irq_in_eqs: StatU64,
}

impl CpuState {
    const_unless_loom! {
        fn new() -> Self {
            Self {
                qs: AtomicU64::new(0),
                eqs: AtomicU64::new(0),
                online: AtomicBool::new(false),
                readers: StatU32::new(0),
                irq_in_eqs: StatU64::new(0),
            }
        }
    }

    /// A quiescent-state report is a promise that no reference from this CPU's
    /// read-side sections is still in use: check it, always (it is what makes
    /// [`RcuCell::read`] sound).
    #[track_caller]
    #[inline(always)]
    fn assert_no_readers(&self, what: &str) {
        let open = self.readers.load(Relaxed);
        if open != 0 {
            readers_open(what, open);
        }
    }
}

/// `assert_no_readers`'s failure, out of line: the check runs twice per
/// guest entry, and its formatting made each caller a full call.
#[cold]
#[inline(never)]
#[track_caller]
fn readers_open(what: &str, open: u32) -> ! {
    panic!("rcu: {what} with {open} read-side section(s) open on this CPU")
}

/// Counters of one CPU, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuRcuStats {
    pub online: bool,
    pub in_eqs: bool,
    /// Quiescent states reported (including going offline).
    pub quiescent_states: u64,
    /// Times the CPU entered EQS.
    pub eqs_entries: u64,
    /// IRQs taken while in EQS; anything but 0 is a bug.
    pub irq_in_eqs: u64,
}

/// Grace-period state for up to [`MAX_CPUS`] CPUs.
#[derive(Debug)]
pub struct Rcu {
    cpus: [CpuState; MAX_CPUS],
    grace_periods: StatU64,
}

impl Default for Rcu {
    fn default() -> Self {
        Self::new()
    }
}

/// The host's RCU: the VM list is read under it (`vm::registry`).
#[cfg(target_os = "none")]
pub static RCU: Rcu = Rcu::new();

impl Rcu {
    /// Every CPU offline, outside EQS, with no quiescent states yet.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { cpus: [const { CpuState::new() }; MAX_CPUS], grace_periods: StatU64::new(0) }
    }

    /// Every CPU offline, outside EQS, with no quiescent states yet.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self { cpus: core::array::from_fn(|_| CpuState::new()), grace_periods: StatU64::new(0) }
    }

    /// # Panics
    /// If `cpu >= MAX_CPUS` (a host bug: CPU indices come from the boot info).
    #[track_caller]
    fn cpu(&self, cpu: usize) -> &CpuState {
        assert!(cpu < MAX_CPUS, "rcu: cpu {cpu} out of range");
        &self.cpus[cpu]
    }

    /// `cpu` takes part in grace periods from now on. Called by the CPU itself,
    /// before its first read-side section.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn online(&self, cpu: usize) {
        self.cpu(cpu).online.store(true, Ordering::Relaxed);
        // Pairs with the writer's fence: it sees this CPU online, or this
        // CPU's reads see what the writer published.
        fence(Ordering::SeqCst);
    }

    /// `cpu` leaves: it counts as quiescent until it comes back. Called by the
    /// CPU itself, outside any read-side section and outside EQS.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS` or the CPU has a read-side section open.
    #[track_caller]
    pub fn offline(&self, cpu: usize) {
        let c = self.cpu(cpu);
        c.assert_no_readers("offline");
        debug_assert!(c.eqs.load(Ordering::Relaxed) & 1 == 0, "rcu: offline while in EQS");
        // Also a QS, so a CPU that goes offline and comes back during one grace
        // period is not mistaken for one that never left.
        c.qs.fetch_add(1, Ordering::Release);
        c.online.store(false, Ordering::Release);
    }

    /// `cpu` passes through a quiescent state: none of its earlier read-side
    /// references is used any more.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS` or the CPU has a read-side section open.
    #[track_caller]
    pub fn note_quiescent(&self, cpu: usize) {
        let c = self.cpu(cpu);
        c.assert_no_readers("note_quiescent");
        c.qs.fetch_add(1, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// `cpu` enters an extended quiescent state (runs a guest, or idles). IRQs
    /// must be disabled until the matching [`Rcu::eqs_exit`]; an IRQ taken in
    /// between is what [`Rcu::irq_entry_check`] reports.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS` or the CPU has a read-side section open; in debug
    /// builds also if the CPU is already in EQS (unbalanced).
    #[track_caller]
    pub fn eqs_enter(&self, cpu: usize) {
        let c = self.cpu(cpu);
        c.assert_no_readers("eqs_enter");
        let old = c.eqs.fetch_add(1, Ordering::Release);
        debug_assert!(old & 1 == 0, "rcu: eqs_enter on cpu {cpu} while already in EQS");
    }

    /// `cpu` leaves its extended quiescent state; RCU watches it again.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`; in debug builds also if the CPU is not in EQS.
    #[track_caller]
    pub fn eqs_exit(&self, cpu: usize) {
        let old = self.cpu(cpu).eqs.fetch_add(1, Ordering::Relaxed);
        debug_assert!(old & 1 == 1, "rcu: eqs_exit on cpu {cpu} while not in EQS");
        // Pairs with the writer's fence: it saw the CPU in EQS, or this CPU's
        // reads from now on see what the writer published.
        fence(Ordering::SeqCst);
    }

    /// Whether `cpu` is in an extended quiescent state.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn in_eqs(&self, cpu: usize) -> bool {
        self.cpu(cpu).eqs.load(Ordering::Acquire) & 1 == 1
    }

    /// Called by the IRQ entry path of `cpu`. Returns `false`, and counts it,
    /// if the CPU is in EQS: an IRQ handler would run unwatched by RCU, which
    /// the entry discipline (docs/run-loop.md §5) rules out. The caller panics on `false`
    /// in debug builds.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn irq_entry_check(&self, cpu: usize) -> bool {
        let c = self.cpu(cpu);
        if c.eqs.load(Ordering::Relaxed) & 1 == 1 {
            c.irq_in_eqs.fetch_add(1, Relaxed);
            false
        } else {
            true
        }
    }

    /// Opens a read-side section on `cpu`; [`RcuCell::read`] borrows from it.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn read_lock(&self, cpu: usize) -> ReadGuard<'_> {
        let c = self.cpu(cpu);
        c.readers.fetch_add(1, Relaxed);
        ReadGuard { cpu: c, _not_send: PhantomData }
    }

    /// Starts a grace period as seen from `me`; poll it with
    /// [`GracePeriod::poll`].
    ///
    /// # Panics
    /// If `me >= MAX_CPUS` or `me` has a read-side section open (waiting is a
    /// quiescent state of the caller's CPU).
    #[track_caller]
    pub fn start_grace_period(&self, me: usize) -> GracePeriod<'_> {
        self.cpu(me).assert_no_readers("waiting for a grace period");
        // Orders the caller's earlier publication (RcuCell::replace) before the
        // snapshot; pairs with the fences of note_quiescent, eqs_exit, online.
        fence(Ordering::SeqCst);
        let mut waiting = [None; MAX_CPUS];
        for (cpu, (slot, c)) in waiting.iter_mut().zip(&self.cpus).enumerate() {
            if cpu == me || !c.online.load(Ordering::Acquire) {
                continue;
            }
            let eqs = c.eqs.load(Ordering::Acquire);
            if eqs & 1 == 1 {
                continue;
            }
            *slot = Some(Snapshot { eqs, qs: c.qs.load(Ordering::Acquire) });
        }
        GracePeriod { rcu: self, waiting, done: false }
    }

    /// Waits for a grace period: returns once every CPU other than `me` has
    /// passed a quiescent state (or was in EQS) since the call. Calls `relax`
    /// between polls (a `wfe`, a yield, or a spin hint).
    ///
    /// # Panics
    /// If `me >= MAX_CPUS` or `me` has a read-side section open.
    #[track_caller]
    pub fn synchronize(&self, me: usize, mut relax: impl FnMut()) {
        let mut gp = self.start_grace_period(me);
        let mut polls = 0u64;
        while !gp.poll() {
            // A CPU waiting here holds no read-side section, so it is
            // quiescent; saying so lets a grace period that another CPU waits
            // for at the same time end (two synchronizers would otherwise
            // wait for each other forever).
            self.note_quiescent(me);
            polls += 1;
            if polls.is_multiple_of(STALL_POLLS) {
                // Like Linux's RCU stall warning: name who holds it up.
                if let Some(cpu) = gp.holding_up() {
                    log::warn!("rcu: cpu{me}'s grace period still waits for cpu{cpu}");
                }
            }
            relax();
        }
    }

    /// Grace periods completed since boot.
    pub fn grace_periods(&self) -> u64 {
        self.grace_periods.load(Relaxed)
    }

    /// The counters of `cpu`.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub fn stats(&self, cpu: usize) -> CpuRcuStats {
        let c = self.cpu(cpu);
        let eqs = c.eqs.load(Ordering::Relaxed);
        CpuRcuStats {
            online: c.online.load(Ordering::Relaxed),
            in_eqs: eqs & 1 == 1,
            quiescent_states: c.qs.load(Ordering::Relaxed),
            eqs_entries: eqs.div_ceil(2),
            irq_in_eqs: c.irq_in_eqs.load(Relaxed),
        }
    }
}

/// Polls of a grace period between stall warnings.
const STALL_POLLS: u64 = 1 << 24;

#[derive(Clone, Copy, Debug)]
struct Snapshot {
    eqs: u64,
    qs: u64,
}

/// A grace period in progress (from [`Rcu::start_grace_period`]).
#[derive(Debug)]
#[must_use]
pub struct GracePeriod<'r> {
    rcu: &'r Rcu,
    /// CPUs that have not yet passed a quiescent state, with their counters at
    /// the start.
    waiting: [Option<Snapshot>; MAX_CPUS],
    done: bool,
}

impl GracePeriod<'_> {
    /// Whether the grace period has passed. Never blocks.
    /// The first CPU this grace period still waits for.
    pub fn holding_up(&self) -> Option<usize> {
        self.waiting.iter().position(Option::is_some)
    }

    pub fn poll(&mut self) -> bool {
        if self.done {
            return true;
        }
        for (slot, c) in self.waiting.iter_mut().zip(&self.rcu.cpus) {
            let Some(s) = *slot else { continue };
            // Acquire: what the CPU did before its report happens before the
            // caller's next step (typically a free).
            let passed = !c.online.load(Ordering::Acquire)
                || c.eqs.load(Ordering::Acquire) != s.eqs
                || c.qs.load(Ordering::Acquire) != s.qs;
            if !passed {
                return false;
            }
            *slot = None;
        }
        self.done = true;
        self.rcu.grace_periods.fetch_add(1, Relaxed);
        true
    }
}

/// An open read-side section on one CPU (from [`Rcu::read_lock`]). While it
/// lives, that CPU cannot report a quiescent state. It cannot be sent to
/// another thread.
#[derive(Debug)]
#[must_use]
pub struct ReadGuard<'r> {
    cpu: &'r CpuState,
    _not_send: PhantomData<*const ()>,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.cpu.readers.fetch_sub(1, Relaxed);
    }
}

/// A value that readers read without locks and writers replace whole; the old
/// value is dropped after a grace period (see the module documentation).
#[derive(Debug)]
pub struct RcuCell<T> {
    ptr: AtomicPtr<T>,
    _owns: PhantomData<Box<T>>,
}

// SAFETY: readers on any CPU get `&T` (needs `T: Sync`), and values move to
// whichever CPU replaces or frees them (needs `T: Send`).
unsafe impl<T: Send + Sync> Send for RcuCell<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for RcuCell<T> {}

impl<T> RcuCell<T> {
    pub fn new(value: Box<T>) -> Self {
        Self { ptr: AtomicPtr::new(Box::into_raw(value)), _owns: PhantomData }
    }

    /// The current value, for as long as `guard` (a read-side section of the
    /// reader's CPU) lives.
    pub fn read<'a>(&'a self, _guard: &'a ReadGuard<'_>) -> &'a T {
        // Acquire: pairs with the swap in `replace`, so the value is
        // initialised.
        let ptr = self.ptr.load(Ordering::Acquire);
        // SAFETY: the pointer came from `Box::into_raw` and is never null. It
        // is freed only by `Retired::free_after` after a grace period, and a
        // grace period cannot pass while this CPU has `guard` open (every QS
        // report asserts that), so the value outlives the borrow of `guard`;
        // or by `Drop`, which needs `&mut self`.
        unsafe { &*ptr }
    }

    /// Publishes `new`; readers that start afterwards see it. The old value
    /// may still be read until a grace period has passed: drop it with
    /// [`Retired::free_after`]. Concurrent writers must serialise among
    /// themselves only if they care which value wins.
    pub fn replace(&self, new: Box<T>) -> Retired<T> {
        let old = self.ptr.swap(Box::into_raw(new), Ordering::AcqRel);
        Retired { ptr: old }
    }

    /// Exclusive access: no reader can hold a reference.
    pub fn get_mut(&mut self) -> &mut T {
        let ptr = self.ptr.load(Ordering::Relaxed);
        // SAFETY: `&mut self` excludes every reader borrow (they borrow
        // `&self`); the pointer is a live box.
        unsafe { &mut *ptr }
    }
}

impl<T> Drop for RcuCell<T> {
    fn drop(&mut self) {
        let ptr = self.ptr.load(Ordering::Relaxed);
        // SAFETY: the cell owns the box and nothing borrows it any more.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// A value taken out of an [`RcuCell`] that readers may still be reading.
/// Dropping it without [`Retired::free_after`] leaks it (never frees it early).
#[derive(Debug)]
#[must_use = "free it with free_after, or it leaks"]
pub struct Retired<T> {
    ptr: *mut T,
}

// SAFETY: the value is owned here and will be dropped on whichever CPU calls
// `free_after`; no reference to it is created through `Retired`.
unsafe impl<T: Send> Send for Retired<T> {}

impl<T> Retired<T> {
    /// Waits for a grace period (see [`Rcu::synchronize`]), then drops the
    /// value.
    ///
    /// # Panics
    /// If `me >= MAX_CPUS` or `me` has a read-side section open.
    #[track_caller]
    pub fn free_after(self, rcu: &Rcu, me: usize, relax: impl FnMut()) {
        rcu.synchronize(me, relax);
        // SAFETY: the pointer came from `Box::into_raw` in `RcuCell::new` or
        // `replace`, was unpublished by `replace` before the grace period
        // began, and every reader that could have loaded it has since passed a
        // quiescent state.
        drop(unsafe { Box::from_raw(self.ptr) });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn never_relax() {
        panic!("the grace period should not have waited");
    }

    /// Two CPUs waiting for grace periods at the same time (two VMs ending
    /// at once): each one's wait counts as the other's quiescent state.
    #[test]
    fn concurrent_synchronizers_do_not_wait_for_each_other() {
        let rcu = Arc::new(Rcu::new());
        rcu.online(0);
        rcu.online(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|cpu| {
                let (rcu, done) = (Arc::clone(&rcu), Arc::clone(&done));
                std::thread::spawn(move || {
                    rcu.synchronize(cpu, || {
                        assert!(Instant::now() < deadline, "cpu{cpu}: grace period never ended");
                        std::thread::yield_now();
                    });
                    done.fetch_add(1, Ordering::SeqCst);
                    // Back in its scheduler loop, as a real CPU would be.
                    while done.load(Ordering::SeqCst) < 2 {
                        assert!(Instant::now() < deadline, "cpu{cpu}: the other grace period never ended");
                        rcu.note_quiescent(cpu);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("both grace periods end");
        }
        assert!(rcu.grace_periods() >= 2);
    }

    #[test]
    fn a_grace_period_with_no_other_cpu_online_passes_at_once() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.synchronize(0, never_relax);
        assert_eq!(rcu.grace_periods(), 1);
    }

    #[test]
    fn a_cpu_outside_eqs_holds_the_grace_period_until_it_reports() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.online(1);
        let mut gp = rcu.start_grace_period(0);
        for _ in 0..1000 {
            assert!(!gp.poll());
        }
        rcu.note_quiescent(0); // the caller's own reports do not matter
        assert!(!gp.poll());
        rcu.note_quiescent(1);
        assert!(gp.poll());
        assert!(gp.poll(), "stays passed");
        assert_eq!(rcu.grace_periods(), 1);
    }

    #[test]
    fn a_report_from_before_the_grace_period_does_not_count() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.online(1);
        rcu.note_quiescent(1);
        let mut gp = rcu.start_grace_period(0);
        assert!(!gp.poll());
    }

    #[test]
    fn a_cpu_in_eqs_at_the_start_has_passed() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.online(1);
        rcu.eqs_enter(1);
        assert!(rcu.in_eqs(1));
        rcu.synchronize(0, never_relax);
        // It may leave EQS while the writer is still waiting on someone else.
        rcu.online(2);
        let mut gp = rcu.start_grace_period(0);
        rcu.eqs_exit(1);
        assert!(!gp.poll(), "cpu 2 has not reported");
        rcu.note_quiescent(2);
        assert!(gp.poll());
    }

    #[test]
    fn entering_or_leaving_eqs_during_the_grace_period_passes_it() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.online(1);
        let mut gp = rcu.start_grace_period(0);
        assert!(!gp.poll());
        rcu.eqs_enter(1);
        assert!(gp.poll());
    }

    #[test]
    fn going_offline_passes_and_offline_cpus_are_ignored() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.online(3);
        let mut gp = rcu.start_grace_period(0);
        assert!(!gp.poll());
        rcu.offline(3);
        assert!(gp.poll());
        // Coming back during a grace period started while it was away does
        // not hold that grace period up, but it holds the next one.
        let mut gp = rcu.start_grace_period(0);
        rcu.online(3);
        assert!(gp.poll());
        let mut gp = rcu.start_grace_period(0);
        assert!(!gp.poll());
        // Offline and back counts as a quiescent state.
        rcu.offline(3);
        rcu.online(3);
        assert!(gp.poll());
    }

    #[test]
    fn irq_entry_check_counts_irqs_taken_in_eqs() {
        let rcu = Rcu::new();
        rcu.online(2);
        assert!(rcu.irq_entry_check(2));
        rcu.eqs_enter(2);
        assert!(!rcu.irq_entry_check(2));
        assert!(!rcu.irq_entry_check(2));
        rcu.eqs_exit(2);
        assert!(rcu.irq_entry_check(2));
        let s = rcu.stats(2);
        assert_eq!(s.irq_in_eqs, 2);
        assert_eq!(s.eqs_entries, 1);
        assert!(s.online && !s.in_eqs);
        assert_eq!(rcu.stats(1).irq_in_eqs, 0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not in EQS")]
    fn unbalanced_eqs_exit_is_caught() {
        Rcu::new().eqs_exit(0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "already in EQS")]
    fn nested_eqs_enter_is_caught() {
        let rcu = Rcu::new();
        rcu.eqs_enter(0);
        rcu.eqs_enter(0);
    }

    #[test]
    #[should_panic(expected = "read-side section(s) open")]
    fn a_quiescent_state_with_an_open_read_section_panics() {
        let rcu = Rcu::new();
        let _guard = rcu.read_lock(1);
        rcu.note_quiescent(1);
    }

    #[test]
    #[should_panic(expected = "read-side section(s) open")]
    fn entering_eqs_with_an_open_read_section_panics() {
        let rcu = Rcu::new();
        let _guard = rcu.read_lock(1);
        rcu.eqs_enter(1);
    }

    #[test]
    #[should_panic(expected = "read-side section(s) open")]
    fn waiting_with_an_open_read_section_panics() {
        let rcu = Rcu::new();
        let cell = RcuCell::new(Box::new(1u32));
        let guard = rcu.read_lock(0);
        let _ = cell.read(&guard);
        cell.replace(Box::new(2)).free_after(&rcu, 0, || {});
    }

    #[test]
    fn closed_read_sections_allow_reports() {
        let rcu = Rcu::new();
        rcu.online(1);
        {
            let g1 = rcu.read_lock(1);
            let g2 = rcu.read_lock(1); // nested, e.g. an IRQ handler
            drop(g2);
            drop(g1);
        }
        rcu.note_quiescent(1);
        assert_eq!(rcu.stats(1).quiescent_states, 1);
    }

    /// Counts its drops.
    struct Tracked {
        value: u64,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn the_old_value_is_dropped_only_after_the_grace_period() {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu.online(1);
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = RcuCell::new(Box::new(Tracked { value: 1, drops: drops.clone() }));
        let retired = cell.replace(Box::new(Tracked { value: 2, drops: drops.clone() }));
        {
            let g = rcu.read_lock(1);
            assert_eq!(cell.read(&g).value, 2);
        }
        let mut spins = 0;
        retired.free_after(&rcu, 0, || {
            spins += 1;
            assert_eq!(drops.load(Relaxed), 0, "freed before cpu 1 reported");
            if spins == 100 {
                rcu.note_quiescent(1);
            }
        });
        assert_eq!(spins, 100);
        assert_eq!(drops.load(Relaxed), 1);
        drop(cell);
        assert_eq!(drops.load(Relaxed), 2);
    }

    #[test]
    fn a_dropped_retired_value_leaks_rather_than_freeing_early() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut cell = RcuCell::new(Box::new(Tracked { value: 1, drops: drops.clone() }));
        drop(cell.replace(Box::new(Tracked { value: 2, drops: drops.clone() })));
        assert_eq!(drops.load(Relaxed), 0);
        cell.get_mut().value = 3;
        let rcu = Rcu::new();
        let g = rcu.read_lock(0);
        assert_eq!(cell.read(&g).value, 3);
    }

    /// With real threads: the writer's grace period does not end while cpu 1
    /// sits outside EQS without reporting, however long the writer waits.
    #[test]
    fn a_grace_period_waits_for_a_cpu_that_does_not_report() {
        let rcu = Arc::new(Rcu::new());
        rcu.online(0);
        let release = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicUsize::new(0));
        let t = {
            let (rcu, release, ready) = (rcu.clone(), release.clone(), ready.clone());
            std::thread::spawn(move || {
                rcu.online(1);
                ready.store(1, Ordering::SeqCst);
                while release.load(Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
                rcu.note_quiescent(1);
            })
        };
        while ready.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let start = Instant::now();
        let mut released_at = None;
        rcu.synchronize(0, || {
            if released_at.is_none() && start.elapsed() > Duration::from_millis(50) {
                released_at = Some(start.elapsed());
                release.store(1, Ordering::SeqCst);
            }
            std::thread::yield_now();
        });
        let released_at = released_at.expect("the grace period ended without cpu 1's report");
        assert!(start.elapsed() >= released_at);
        t.join().unwrap();
    }

    /// Readers on three CPUs read, enter and leave EQS and report quiescent
    /// states at random while a writer replaces and frees values; every value
    /// a reader sees is alive.
    #[test]
    fn stress_readers_never_see_freed_values() {
        const ALIVE: u64 = 0xa11e_a11e;
        const DEAD: u64 = 0xdead_dead;
        struct Val {
            canary: core::cell::Cell<u64>,
            serial: u64,
        }
        // SAFETY: (test) the canary is written only by Drop, which runs after
        // a grace period, when no reader holds the value; it exists to catch
        // exactly the case where that is wrong.
        unsafe impl Sync for Val {}
        impl Drop for Val {
            fn drop(&mut self) {
                self.canary.set(DEAD);
            }
        }
        let val = |serial| Box::new(Val { canary: core::cell::Cell::new(ALIVE), serial });
        let rcu = Arc::new(Rcu::new());
        let cell = Arc::new(RcuCell::new(val(0)));
        let stop = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        rcu.online(0);
        let readers: Vec<_> = (1..4)
            .map(|cpu| {
                let (rcu, cell, stop, started) = (rcu.clone(), cell.clone(), stop.clone(), started.clone());
                std::thread::spawn(move || {
                    rcu.online(cpu);
                    let mut seed = cpu as u64 * 0x9e37_79b9;
                    let mut last = 0;
                    let mut reads = 0u64;
                    while stop.load(Relaxed) == 0 {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        {
                            let g = rcu.read_lock(cpu);
                            let v = cell.read(&g);
                            for _ in 0..(seed >> 60) {
                                assert_eq!(v.canary.get(), ALIVE, "cpu {cpu} read a freed value");
                                std::hint::spin_loop();
                            }
                            assert!(v.serial >= last, "values go forward");
                            last = v.serial;
                            reads += 1;
                        }
                        if reads == 1 {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                        match (seed >> 56) & 3 {
                            0 => {
                                rcu.eqs_enter(cpu);
                                std::thread::yield_now();
                                rcu.eqs_exit(cpu);
                            }
                            1 => {}
                            _ => rcu.note_quiescent(cpu),
                        }
                    }
                    rcu.offline(cpu);
                    reads
                })
            })
            .collect();
        while started.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        for serial in 1..=2000 {
            cell.replace(val(serial)).free_after(&rcu, 0, std::thread::yield_now);
        }
        stop.store(1, Relaxed);
        for t in readers {
            assert!(t.join().unwrap() > 0, "every reader read while the writer wrote");
        }
        assert_eq!(rcu.grace_periods(), 2000);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::sync::{hint, thread};
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    const DEAD: u64 = 0xdead;

    /// A value whose drop writes to a loom cell: loom reports the drop racing
    /// with a reader's access unless the drop happens after it.
    struct Val(UnsafeCell<u64>);

    impl Drop for Val {
        fn drop(&mut self) {
            self.0.with_mut(|p| {
                // SAFETY (test): loom checks this access against the readers'.
                unsafe { *p = DEAD }
            });
        }
    }

    fn read_value(rcu: &Rcu, cell: &RcuCell<Val>, cpu: usize) -> u64 {
        let g = rcu.read_lock(cpu);
        let v = cell.read(&g);
        // SAFETY (test): loom checks this access against the drop's write.
        v.0.with(|p| unsafe { *p })
    }

    #[test]
    fn loom_rcu_reader_never_uses_a_freed_value() {
        loom::model(|| {
            let rcu = Arc::new(Rcu::new());
            rcu.online(0);
            rcu.online(1);
            let cell = Arc::new(RcuCell::new(Box::new(Val(UnsafeCell::new(1)))));
            let reader = {
                let (rcu, cell) = (rcu.clone(), cell.clone());
                thread::spawn(move || {
                    let first = read_value(&rcu, &cell, 1);
                    rcu.note_quiescent(1);
                    let second = read_value(&rcu, &cell, 1);
                    rcu.offline(1);
                    (first, second)
                })
            };
            cell.replace(Box::new(Val(UnsafeCell::new(2)))).free_after(&rcu, 0, hint::spin_loop);
            let (first, second) = reader.join().unwrap();
            assert!(first == 1 || first == 2, "read {first:#x}");
            assert!(second >= first && second <= 2, "read {second:#x} after {first:#x}");
        });
    }

    #[test]
    fn loom_rcu_a_reader_that_came_online_late_sees_the_new_value() {
        loom::model(|| {
            let rcu = Arc::new(Rcu::new());
            rcu.online(0);
            let cell = Arc::new(RcuCell::new(Box::new(Val(UnsafeCell::new(1)))));
            let reader = {
                let (rcu, cell) = (rcu.clone(), cell.clone());
                thread::spawn(move || {
                    rcu.online(1);
                    let v = read_value(&rcu, &cell, 1);
                    rcu.offline(1);
                    v
                })
            };
            cell.replace(Box::new(Val(UnsafeCell::new(2)))).free_after(&rcu, 0, hint::spin_loop);
            let v = reader.join().unwrap();
            assert!(v == 1 || v == 2);
        });
    }

    #[test]
    fn loom_rcu_a_reader_leaving_eqs_never_uses_a_freed_value() {
        loom::model(|| {
            let rcu = Arc::new(Rcu::new());
            rcu.online(0);
            rcu.online(1);
            rcu.eqs_enter(1);
            let cell = Arc::new(RcuCell::new(Box::new(Val(UnsafeCell::new(1)))));
            let reader = {
                let (rcu, cell) = (rcu.clone(), cell.clone());
                thread::spawn(move || {
                    rcu.eqs_exit(1);
                    let v = read_value(&rcu, &cell, 1);
                    rcu.eqs_enter(1);
                    v
                })
            };
            cell.replace(Box::new(Val(UnsafeCell::new(2)))).free_after(&rcu, 0, hint::spin_loop);
            let v = reader.join().unwrap();
            assert!(v == 1 || v == 2);
        });
    }

    /// cpu 1 is in EQS throughout and never reports; cpu 2 enters EQS while
    /// the writer waits. The grace period ends in every interleaving (a hang
    /// would be reported by loom).
    #[test]
    fn loom_rcu_grace_period_completes_while_a_cpu_stays_in_eqs() {
        loom::model(|| {
            let rcu = Arc::new(Rcu::new());
            rcu.online(0);
            rcu.online(1);
            rcu.online(2);
            rcu.eqs_enter(1);
            let other = {
                let rcu = rcu.clone();
                thread::spawn(move || rcu.eqs_enter(2))
            };
            rcu.synchronize(0, hint::spin_loop);
            assert!(rcu.in_eqs(1));
            assert_eq!(rcu.stats(1).quiescent_states, 0);
            other.join().unwrap();
        });
    }

    /// The grace period does not end before cpu 1, outside EQS, reports (or
    /// enters EQS).
    #[test]
    fn loom_rcu_grace_period_waits_for_a_cpu_outside_eqs() {
        loom::model(|| {
            let rcu = Arc::new(Rcu::new());
            let reported = Arc::new(AtomicBool::new(false));
            rcu.online(0);
            rcu.online(1);
            let other = {
                let (rcu, reported) = (rcu.clone(), reported.clone());
                thread::spawn(move || {
                    reported.store(true, Ordering::Relaxed);
                    rcu.note_quiescent(1);
                    // Then it runs a guest for ever: a report from before the
                    // grace period began must not end it, but this does.
                    rcu.eqs_enter(1);
                })
            };
            rcu.synchronize(0, hint::spin_loop);
            // The report's Release / the poll's Acquire carry the flag.
            assert!(reported.load(Ordering::Relaxed), "grace period ended before cpu 1 reported");
            other.join().unwrap();
        });
    }
}
