//! A vCPU's scheduling state, owned in one place: which CPU claimed it, the
//! CPU it is pinned to, whether it sleeps (the block/wake handshake of
//! [`super::wakeup`]) and until when, and whether it has stopped for good.
//! The schedulers (`sched::cpu_loop`) and the run loop (`vcpu::run`) change
//! it only through these operations.

use super::wakeup::{BlockDecision, BlockState};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// [`VcpuSlot::running_on`] of a vCPU no CPU runs.
const NOT_RUNNING: usize = usize::MAX;
/// [`VcpuSlot`]'s deadline when there is none.
const NO_DEADLINE: u64 = u64::MAX;

pub struct VcpuSlot {
    /// The CPU the vCPU is pinned to, if it is.
    affinity: Option<usize>,
    /// The CPU whose scheduler claimed it ([`NOT_RUNNING`]: none).
    running_on: AtomicUsize,
    /// Blocked (in WFI or powered off) with its CPU given away: the
    /// schedulers skip it until a wake-up.
    block: BlockState,
    /// Physical count by which a blocked vCPU must run again (its timers).
    wake_at: AtomicU64,
    stopped: AtomicBool,
}

/// What a scheduler's scan of a sleeping vCPU found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Not sleeping, or sleeping with no deadline.
    No,
    /// Its deadline passed: it was woken (or a waker got there first).
    Woken,
    /// It sleeps until this count.
    At(u64),
}

impl VcpuSlot {
    pub fn new(affinity: Option<usize>) -> Self {
        Self {
            affinity,
            running_on: AtomicUsize::new(NOT_RUNNING),
            block: BlockState::new(),
            wake_at: AtomicU64::new(NO_DEADLINE),
            stopped: AtomicBool::new(false),
        }
    }

    pub fn affinity(&self) -> Option<usize> {
        self.affinity
    }

    /// The CPU running it now, if any.
    pub fn running_on(&self) -> Option<usize> {
        Some(self.running_on.load(Ordering::Acquire)).filter(|&c| c != NOT_RUNNING)
    }

    /// Scheduler on `cpu`: takes the vCPU if it may run there (not stopped,
    /// not asleep, pinned there or nowhere) and no other CPU has it. One
    /// claim wins (a CAS); the winner alone touches the vCPU's context.
    pub fn try_claim(&self, cpu: usize) -> bool {
        !self.stopped.load(Ordering::Acquire)
            && self.affinity.is_none_or(|c| c == cpu)
            && !self.block.is_blocked()
            && self.running_on.compare_exchange(NOT_RUNNING, cpu, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// The claimer's turn is over (the release pairs with the next claim's
    /// acquire, so the next CPU sees the context as this one left it).
    pub fn release(&self) {
        self.running_on.store(NOT_RUNNING, Ordering::Release);
    }

    /// Run loop: the vCPU will never run again (it keeps its claim).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Run loop: gives the CPU away until a wake-up or `deadline`, unless
    /// `runnable` (checked after the block is announced, so a concurrent
    /// wake-up is never lost). `announce` runs once the deadline is
    /// recorded and before the block (the schedulers' earliest deadline is
    /// lowered there, so a scan that finds the vCPU asleep finds its
    /// deadline too). True if the vCPU is to sleep.
    pub fn sleep(&self, deadline: Option<u64>, announce: impl FnOnce(u64), runnable: impl FnOnce() -> bool) -> bool {
        self.wake_at.store(deadline.unwrap_or(NO_DEADLINE), Ordering::Relaxed);
        if let Some(d) = deadline {
            announce(d);
        }
        matches!(self.block.block(runnable), BlockDecision::Sleep)
    }

    /// Scheduler, after claiming it: the sleep (if any) is over.
    pub fn resume(&self) {
        self.block.resume();
    }

    /// Waker: ends a committed sleep; true if this call did (the caller
    /// then finds it a CPU).
    pub fn wake(&self) -> bool {
        self.block.wake()
    }

    /// Whether a scheduler could claim it now (affinity aside): not stopped,
    /// not asleep, not claimed.
    pub fn claimable(&self) -> bool {
        !self.stopped.load(Ordering::Acquire) && !self.block.is_blocked() && self.running_on().is_none()
    }

    #[cfg(test)]
    pub fn is_asleep(&self) -> bool {
        self.block.is_blocked()
    }

    /// Scheduler's scan at physical count `now`: wakes a sleeper whose
    /// deadline has passed.
    pub fn wake_if_due(&self, now: u64) -> Due {
        if !self.block.is_blocked() {
            return Due::No;
        }
        match self.wake_at.load(Ordering::Acquire) {
            NO_DEADLINE => Due::No,
            at if at <= now => {
                // Runnable again (unless a waker got there first).
                let _ = self.block.wake();
                Due::Woken
            }
            at => Due::At(at),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_claim_wins_and_release_frees_it() {
        let s = VcpuSlot::new(None);
        assert!(s.try_claim(1));
        assert!(!s.try_claim(2), "claimed by cpu1");
        assert_eq!(s.running_on(), Some(1));
        s.release();
        assert_eq!(s.running_on(), None);
        assert!(s.try_claim(2));
    }

    #[test]
    fn pinned_stopped_and_sleeping_vcpus_are_not_claimed() {
        let pinned = VcpuSlot::new(Some(3));
        assert!(!pinned.try_claim(0));
        assert!(pinned.try_claim(3));
        let s = VcpuSlot::new(None);
        s.stop();
        assert!(s.is_stopped() && !s.try_claim(0));
        let s = VcpuSlot::new(None);
        assert!(s.try_claim(0));
        assert!(s.sleep(None, |_| {}, || false));
        s.release();
        assert!(s.is_asleep() && !s.try_claim(1), "asleep: skipped until woken");
        assert!(!s.claimable());
        assert!(s.wake(), "the wake ends a committed sleep");
        assert!(!s.wake(), "once");
        assert!(s.claimable(), "woken and released");
        assert!(s.try_claim(1));
        assert!(!s.claimable(), "claimed");
        s.resume();
        assert!(!s.is_asleep());
    }

    #[test]
    fn a_runnable_vcpu_does_not_sleep() {
        let s = VcpuSlot::new(None);
        assert!(s.try_claim(0));
        assert!(!s.sleep(Some(10), |_| {}, || true));
        assert!(!s.is_asleep());
    }

    #[test]
    fn deadlines_wake_a_sleeper_once_due() {
        let s = VcpuSlot::new(None);
        assert_eq!(s.wake_if_due(0), Due::No, "running");
        assert!(s.try_claim(0));
        assert!(s.sleep(Some(100), |d| assert_eq!(d, 100), || false));
        s.release();
        assert_eq!(s.wake_if_due(99), Due::At(100));
        assert_eq!(s.wake_if_due(100), Due::Woken);
        assert!(!s.is_asleep() && s.try_claim(2));
        s.resume();
        assert!(s.sleep(None, |_| {}, || false));
        assert_eq!(s.wake_if_due(u64::MAX - 1), Due::No, "no deadline: only a wake-up");
    }
}
