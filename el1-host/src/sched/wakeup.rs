//! vCPU requests and the block/wake handshake of a vCPU that waits in WFI
//! (docs/run-loop.md §4), generic and hardware-free so loom checks it on the
//! dev host.
//!
//! # API
//!
//! - [`Requests`]: request bits a vCPU looks at before it enters the guest and
//!   before it blocks. [`Requests::make`] sets bits with release, so whatever
//!   the requester wrote before (a vLPI's `pending_last`, the vGIC's pending
//!   state) is visible to the vCPU that sees the bit through the acquire of
//!   [`Requests::test`], [`Requests::take`] or [`Requests::pending`].
//! - [`BlockState`]: a vCPU that has nothing to run calls
//!   [`BlockState::block`] with a `runnable` check (which reads its requests
//!   through [`Requests`]); on [`BlockDecision::Sleep`] it gives its CPU away
//!   and calls [`BlockState::resume`] when it runs again. Anyone who made a
//!   request then calls [`BlockState::wake`]; `true` means the vCPU committed
//!   to sleep and this caller is the one that must make it run again (put it
//!   back on a run queue, or send the wake-up SGI to the CPU idling for it).
//!
//! A requester's sequence is: [`Requests::make`], then `VcpuEntry::kick`
//! (the vCPU may be in guest mode: SGI if it says so), then
//! [`BlockState::wake`] (the vCPU may be blocked: wake it if it says so).
//!
//! # States
//!
//! `Running` → `Blocking` (the vCPU decided to block and re-checks) → either
//! back to `Running` (something runnable, or a waker got in first: `Woken`
//! is seen and the vCPU stays), or `Blocked` (committed to sleep) → `Woken`
//! (by the one waker that gets `true`) → `Running` ([`BlockState::resume`]).
//! Only the vCPU moves the state out of `Running` and `Woken`; wakers only
//! move `Blocking` and `Blocked` to `Woken`.
//!
//! # No lost wake-up
//!
//! vCPU: store `Blocking`; `SeqCst` fence; read the requests (acquire).
//! Waker: set a request (release); `SeqCst` fence; read the state. By the
//! fence-fence rule either the vCPU's re-check sees the request (it stays),
//! or the waker sees `Blocking` or later. A waker that finds `Blocking` moves
//! it to `Woken`, which makes the vCPU's commit (CAS `Blocking` → `Blocked`)
//! fail, so the vCPU stays; that waker returns `false`, because the vCPU never
//! gives its CPU away. A waker that finds `Blocked` moves it to `Woken` and
//! returns `true`; the CAS lets only one of several wakers do so per sleep.
//! Both the failed commit and [`BlockState::resume`] read `Woken` with
//! acquire, pairing with the waker's release, so a vCPU woken either way
//! sees the request that the waker made.
//!
//! What the scheduler must add: a waker's `true` may come before the vCPU has
//! actually left its CPU (between the commit and the switch away); it must not
//! run the vCPU elsewhere before then.
//!
//! The bug this prevents is the unpaired read side: a check of the request bit
//! without the acquire that pairs with the requester's release can see the
//! bit and still read a stale payload. The loom models below show it, and the
//! lost wake-up that either missing fence causes.

use crate::rcu::sync::{const_unless_loom, fence, AtomicBool, AtomicU32, Ordering};

/// Request bits of one vCPU: set by anyone (release), tested and cleared by
/// the vCPU (acquire).
#[derive(Debug)]
pub struct Requests {
    bits: AtomicU32,
}

impl Default for Requests {
    fn default() -> Self {
        Self::new()
    }
}

impl Requests {
    const_unless_loom! {
        /// No request pending.
        pub fn new() -> Self {
            Self { bits: AtomicU32::new(0) }
        }
    }

    /// Sets `bits` with release: what the caller wrote before is visible to
    /// the vCPU once it sees one of them. The caller then kicks and wakes the
    /// vCPU.
    pub fn make(&self, bits: u32) {
        self.bits.fetch_or(bits, Ordering::Release);
    }

    /// Whether any of `bits` is set (acquire: what the requester wrote before
    /// setting it is visible after this returns `true`). Does not clear.
    #[cfg_attr(target_os = "none", allow(dead_code, reason = "kvm_test_request's shape, for the loom models"))]
    pub fn test(&self, bits: u32) -> bool {
        self.load(Ordering::Acquire) & bits != 0
    }

    /// Clears `bits` and returns those of them that were set (acquire).
    pub fn take(&self, bits: u32) -> u32 {
        self.bits.fetch_and(!bits, Ordering::Acquire) & bits
    }

    /// Every pending bit (acquire).
    pub fn pending(&self) -> u32 {
        self.load(Ordering::Acquire)
    }

    /// The loads of [`Requests::test`] and [`Requests::pending`]; the loom
    /// models call it with `Relaxed` to show the unpaired read side.
    fn load(&self, order: Ordering) -> u32 {
        self.bits.load(order)
    }
}

const RUNNING: u32 = 0;
const BLOCKING: u32 = 1;
const BLOCKED: u32 = 2;
const WOKEN: u32 = 3;

/// Where a vCPU is in the block/wake handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", allow(dead_code, reason = "introspection used by the tests"))]
pub enum BlockPhase {
    /// Not blocking (it may still be idle, waiting for its CPU).
    Running,
    /// Decided to block, re-checking whether it is runnable.
    Blocking,
    /// Committed to sleep: it gives (or gave) its CPU away.
    Blocked,
    /// A waker moved it out of `Blocking` or `Blocked`; not resumed yet.
    Woken,
}

/// What [`BlockState::block`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum BlockDecision {
    /// Something is runnable (or a waker got in first): go back to the guest.
    Stay,
    /// Give the CPU away; a [`BlockState::wake`] that returns `true` makes it
    /// run again.
    Sleep,
}

/// The block/wake handshake of one vCPU (KVM's `kvm_vcpu_block` /
/// `kvm_vcpu_kick`). See the module documentation and docs/run-loop.md §4.
#[derive(Debug)]
pub struct BlockState {
    state: AtomicU32,
}

impl Default for BlockState {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockState {
    const_unless_loom! {
        /// Running.
        pub fn new() -> Self {
            Self { state: AtomicU32::new(RUNNING) }
        }
    }

    /// vCPU side: announces "about to block", then calls `runnable` (which
    /// reads the requests with acquire, and whatever else makes the vCPU
    /// runnable). [`BlockDecision::Stay`] if it says `true` or a waker got in
    /// meanwhile (the state is `Running` again); otherwise commits to sleep
    /// and returns [`BlockDecision::Sleep`] (the state is `Blocked`). Must be
    /// called in the `Running` state: after a `Sleep`, call
    /// [`BlockState::resume`] first (debug assertion).
    pub fn block(&self, runnable: impl FnOnce() -> bool) -> BlockDecision {
        self.block_with::<true>(runnable)
    }

    /// [`BlockState::block`], with the fence only if `FENCED` (the loom
    /// models show what goes wrong without it).
    fn block_with<const FENCED: bool>(&self, runnable: impl FnOnce() -> bool) -> BlockDecision {
        let prev = self.state.swap(BLOCKING, Ordering::Relaxed);
        debug_assert_eq!(prev, RUNNING, "block called while not running (a Sleep without resume?)");
        if FENCED {
            // Pairs with the fence in `wake`.
            fence(Ordering::SeqCst);
        }
        if runnable() {
            self.stay();
            return BlockDecision::Stay;
        }
        // Acquire on failure: the waker's request is visible to the vCPU that
        // stays because of it.
        match self.state.compare_exchange(BLOCKING, BLOCKED, Ordering::Release, Ordering::Acquire) {
            Ok(_) => BlockDecision::Sleep,
            Err(_) => {
                self.stay();
                BlockDecision::Stay
            }
        }
    }

    /// Back to `Running` from `Blocking`, or from `Woken` if a waker got in
    /// (it returned `false`, so overwriting its `Woken` loses nothing). A swap
    /// rather than a store: a plain store would do on hardware, but loom 0.7
    /// lets a plain store slip between the read and the write of a concurrent
    /// RMW (tokio-rs/loom#254) and then reports a `Woken` left behind.
    fn stay(&self) {
        self.state.swap(RUNNING, Ordering::Relaxed);
    }

    /// Waker side, after making its request: `true` if the vCPU committed to
    /// sleep and this call moved it to `Woken`, so the caller must make it run
    /// again. At most one of several concurrent wakers gets `true` per sleep.
    /// A vCPU that is still re-checking is made to stay (`false`: it never
    /// gives its CPU away).
    #[must_use = "true: the caller must make the vCPU run again"]
    pub fn wake(&self) -> bool {
        self.wake_with::<true>()
    }

    /// [`BlockState::wake`], with the fence only if `FENCED`.
    fn wake_with<const FENCED: bool>(&self) -> bool {
        if FENCED {
            // Pairs with the fence in `block`.
            fence(Ordering::SeqCst);
        }
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (from, woke_sleeper) = match cur {
                BLOCKING => (BLOCKING, false),
                BLOCKED => (BLOCKED, true),
                _ => return false,
            };
            // Release: the vCPU that reads Woken (failed commit or resume)
            // sees the request made before this call (the fence above orders
            // it already; the release keeps the CAS right on its own).
            // Acquire: pairs with the release of the commit.
            match self.state.compare_exchange(from, WOKEN, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return woke_sleeper,
                Err(now) => cur = now,
            }
        }
    }

    /// vCPU side, once it runs again after [`BlockDecision::Sleep`]: back to
    /// `Running`. Returns whether a [`BlockState::wake`] returned `true` for
    /// this sleep (`false`: the vCPU runs again for another reason, and a
    /// later waker finds it running). Harmless in the `Running` state.
    pub fn resume(&self) -> bool {
        self.state.swap(RUNNING, Ordering::Acquire) == WOKEN
    }

    /// Whether the vCPU committed to sleep and no waker has woken it yet.
    pub fn is_blocked(&self) -> bool {
        self.state.load(Ordering::Acquire) == BLOCKED
    }

    #[cfg_attr(target_os = "none", allow(dead_code, reason = "introspection used by the tests"))]
    pub fn phase(&self) -> BlockPhase {
        match self.state.load(Ordering::Acquire) {
            BLOCKING => BlockPhase::Blocking,
            BLOCKED => BlockPhase::Blocked,
            WOKEN => BlockPhase::Woken,
            _ => BlockPhase::Running,
        }
    }
}

/// A waker that must find a CPU for a vCPU it woke takes one idle CPU of
/// `idle` (a CPU's flag, set while it waits in idle with nothing to run) for
/// itself, clearing its flag, and returns its index for the SGI. Taking it
/// (a CAS, not a look) is what lets several vCPUs woken at once each reach a
/// CPU of its own: with a plain load they would all tell the first idle CPU,
/// which runs one of them, and the others would wait for a scan no tick
/// brings. `None`: no CPU idles; the vCPU waits for a CPU that finishes its
/// turn (and scans), or for time-slicing's tick.
pub fn take_idle_cpu<'a>(idle: impl IntoIterator<Item = (usize, &'a AtomicBool)>) -> Option<usize> {
    idle.into_iter()
        .find(|(_, flag)| flag.compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed).is_ok())
        .map(|(c, _)| c)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    #[test]
    fn each_waker_takes_an_idle_cpu_of_its_own() {
        let idle = [AtomicBool::new(false), AtomicBool::new(true), AtomicBool::new(true)];
        let all = || idle.iter().enumerate();
        assert_eq!(take_idle_cpu(all()), Some(1));
        assert_eq!(take_idle_cpu(all()), Some(2), "cpu1 was told already");
        assert_eq!(take_idle_cpu(all()), None, "no idle CPU left");
        assert!(idle.iter().all(|f| !f.load(Ordering::Relaxed)));
    }

    const REQ: u32 = 1 << 3;
    const OTHER: u32 = 1 << 0;

    #[test]
    fn requests_make_test_take_pending() {
        let r = Requests::new();
        assert_eq!(r.pending(), 0);
        assert!(!r.test(REQ));
        r.make(REQ);
        r.make(OTHER);
        assert!(r.test(REQ));
        assert!(r.test(REQ | 1 << 7), "any of the bits");
        assert!(!r.test(1 << 7));
        assert_eq!(r.pending(), REQ | OTHER);
        assert_eq!(r.take(REQ | 1 << 7), REQ, "only the bits that were set");
        assert_eq!(r.pending(), OTHER, "other bits stay");
        assert_eq!(r.take(REQ), 0);
        assert_eq!(r.take(OTHER), OTHER);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn block_stays_when_runnable_and_is_running_again() {
        let b = BlockState::new();
        let mut checked = false;
        assert_eq!(
            b.block(|| {
                assert_eq!(b.phase(), BlockPhase::Blocking, "runnable is called after the announcement");
                checked = true;
                true
            }),
            BlockDecision::Stay
        );
        assert!(checked);
        assert_eq!(b.phase(), BlockPhase::Running);
        assert!(!b.wake(), "nobody to wake");
        assert!(!b.resume());
    }

    #[test]
    fn block_sleeps_then_one_wake_wins_and_resume_reports_it() {
        let b = BlockState::new();
        assert_eq!(b.block(|| false), BlockDecision::Sleep);
        assert!(b.is_blocked());
        assert_eq!(b.phase(), BlockPhase::Blocked);
        assert!(b.wake());
        assert!(!b.is_blocked());
        assert_eq!(b.phase(), BlockPhase::Woken);
        assert!(!b.wake(), "a second waker for the same sleep");
        assert!(b.resume());
        assert_eq!(b.phase(), BlockPhase::Running);
        assert!(!b.wake());
        assert!(!b.resume());
        // The next cycle works the same.
        assert_eq!(b.block(|| false), BlockDecision::Sleep);
        assert!(b.wake());
        assert!(b.resume());
    }

    #[test]
    fn a_waker_during_the_recheck_makes_the_vcpu_stay_without_a_wakeup() {
        let b = BlockState::new();
        let mut woke = None;
        // The waker comes while the vCPU re-checks and finds nothing.
        assert_eq!(
            b.block(|| {
                woke = Some(b.wake());
                assert_eq!(b.phase(), BlockPhase::Woken);
                false
            }),
            BlockDecision::Stay
        );
        assert_eq!(woke, Some(false), "the vCPU stays: nobody must re-queue it");
        assert_eq!(b.phase(), BlockPhase::Running);
        assert!(!b.resume());
        // Same when the re-check finds the request too.
        assert_eq!(
            b.block(|| {
                woke = Some(b.wake());
                true
            }),
            BlockDecision::Stay
        );
        assert_eq!(woke, Some(false));
        assert_eq!(b.phase(), BlockPhase::Running);
    }

    #[test]
    fn resume_without_a_wake_makes_later_wakers_find_it_running() {
        let b = BlockState::new();
        assert_eq!(b.block(|| false), BlockDecision::Sleep);
        assert!(!b.resume(), "run again for another reason");
        assert_eq!(b.phase(), BlockPhase::Running);
        assert!(!b.wake());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "block called while not running")]
    fn block_again_without_resume_panics_in_debug_builds() {
        let b = BlockState::new();
        assert_eq!(b.block(|| false), BlockDecision::Sleep);
        let _ = b.block(|| false);
    }

    /// Real threads: a vCPU blocks over and over on its request bit; wakers
    /// make the request and wake. Every sleep is ended by exactly one wake
    /// (or the vCPU would wait forever: a deadline turns that into a failure),
    /// every request is consumed, and a vCPU that stays or is woken sees the
    /// payload written before the request.
    #[test]
    fn stress_no_lost_wakeup_with_std_threads() {
        const ROUNDS: u32 = 20_000;
        const WAKERS: u32 = 2;
        struct Shared {
            req: Requests,
            block: BlockState,
            payload: std::sync::atomic::AtomicU32,
            sleeps: std::sync::atomic::AtomicU32,
            wakeups: std::sync::atomic::AtomicU32,
            done: AtomicBool,
        }
        use std::sync::atomic::Ordering::Relaxed;
        let s = Arc::new(Shared {
            req: Requests::new(),
            block: BlockState::new(),
            payload: std::sync::atomic::AtomicU32::new(0),
            sleeps: std::sync::atomic::AtomicU32::new(0),
            wakeups: std::sync::atomic::AtomicU32::new(0),
            done: AtomicBool::new(false),
        });
        let wakers: Vec<_> = (0..WAKERS)
            .map(|w| {
                let s = s.clone();
                thread::spawn(move || {
                    let mut i = 0u32;
                    while !s.done.load(Relaxed) {
                        i = i.wrapping_add(1);
                        s.payload.store(w + 1, Relaxed);
                        s.req.make(REQ);
                        if s.block.wake() {
                            s.wakeups.fetch_add(1, Relaxed);
                        }
                        if i.is_multiple_of(64) {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..ROUNDS {
            match s.block.block(|| s.req.test(REQ)) {
                BlockDecision::Stay => {}
                BlockDecision::Sleep => {
                    s.sleeps.fetch_add(1, Relaxed);
                    while s.block.is_blocked() {
                        assert!(Instant::now() < deadline, "lost wake-up: blocked with a request pending");
                        std::hint::spin_loop();
                    }
                    assert!(s.block.resume(), "only a wake ends a sleep here");
                }
            }
            if s.req.take(REQ) != 0 {
                assert_ne!(s.payload.load(Relaxed), 0, "the payload is visible with the request");
            }
        }
        s.done.store(true, Relaxed);
        for w in wakers {
            w.join().unwrap();
        }
        assert_eq!(s.wakeups.load(Relaxed), s.sleeps.load(Relaxed), "exactly one wake-up per sleep");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::rcu::sync::thread;
    use loom::sync::Arc;

    const REQ: u32 = 1 << 3;

    /// A payload written before the request: the vGIC's pending state, or
    /// GICv4's `pending_last` written by the doorbell handler.
    struct Doorbell {
        req: Requests,
        pending_last: AtomicU32,
    }

    fn doorbell_model(reader: fn(&Requests) -> bool) {
        loom::model(move || {
            let d = Arc::new(Doorbell { req: Requests::new(), pending_last: AtomicU32::new(0) });
            let handler = {
                let d = d.clone();
                thread::spawn(move || {
                    d.pending_last.store(1, Ordering::Relaxed);
                    d.req.make(REQ);
                })
            };
            let vcpu = {
                let d = d.clone();
                thread::spawn(move || {
                    if reader(&d.req) {
                        assert_eq!(d.pending_last.load(Ordering::Relaxed), 1, "stale payload behind a seen request");
                    }
                })
            };
            handler.join().unwrap();
            vcpu.join().unwrap();
        });
    }

    /// The doorbell handler's payload is visible to the vCPU that sees the
    /// request, through `test` and through `take`.
    #[test]
    fn loom_request_payload_is_visible_with_test() {
        doorbell_model(|r| r.test(REQ));
    }

    #[test]
    fn loom_request_payload_is_visible_with_take() {
        doorbell_model(|r| r.take(REQ) == REQ);
    }

    /// The unpaired barrier: the request bit read without acquire
    /// (`kvm_test_request` with no `smp_rmb` after it). loom finds the stale
    /// payload.
    #[test]
    #[should_panic(expected = "stale payload behind a seen request")]
    fn loom_unpaired_request_check_sees_a_stale_payload() {
        doorbell_model(|r| r.load(Ordering::Relaxed) & REQ != 0);
    }

    struct Vcpu {
        req: Requests,
        block: BlockState,
    }

    /// One vCPU blocks on its request while one waker makes it and wakes;
    /// either side may leave out its fence.
    fn one_waker(vcpu_fenced: bool, waker_fenced: bool) {
        loom::model(move || {
            let v = Arc::new(Vcpu { req: Requests::new(), block: BlockState::new() });
            let vcpu = {
                let v = v.clone();
                thread::spawn(move || {
                    let runnable = || v.req.test(REQ);
                    let d = if vcpu_fenced { v.block.block(runnable) } else { v.block.block_with::<false>(runnable) };
                    if d == BlockDecision::Stay {
                        // The request first: `phase` is an acquire of its own.
                        assert!(v.req.test(REQ), "stayed without seeing the request");
                        assert_eq!(v.block.phase(), BlockPhase::Running);
                    }
                    d
                })
            };
            let waker = {
                let v = v.clone();
                thread::spawn(move || {
                    v.req.make(REQ);
                    if waker_fenced {
                        v.block.wake()
                    } else {
                        v.block.wake_with::<false>()
                    }
                })
            };
            let d = vcpu.join().unwrap();
            let woken = waker.join().unwrap();
            assert!(d == BlockDecision::Stay || woken, "lost wake-up: the vCPU sleeps and no wake returned true");
            assert!(!(d == BlockDecision::Stay && woken), "a vCPU that stayed was woken");
            assert_eq!(v.block.resume(), woken, "resume reports the wake");
            assert!(v.req.test(REQ));
        });
    }

    /// No lost wake-up: the vCPU stays, or it sleeps and the waker gets
    /// `true`; never both.
    #[test]
    fn loom_block_and_wake_never_lose_a_wakeup() {
        one_waker(true, true);
    }

    /// The vCPU announces `Blocking` without its fence: its re-check can miss
    /// the request while the waker, fenced, still finds it `Running`.
    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_block_without_the_fence_loses_a_wakeup() {
        one_waker(false, true);
    }

    /// The waker reads the state without its fence: same lost wake-up.
    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_wake_without_the_fence_loses_a_wakeup() {
        one_waker(true, false);
    }

    /// A vCPU woken from a real sleep sees the waker's request once it runs
    /// again (the waker's release, the acquire of `is_blocked` / `resume`).
    #[test]
    fn loom_a_woken_vcpu_sees_the_request_after_resume() {
        loom::model(|| {
            let v = Arc::new(Vcpu { req: Requests::new(), block: BlockState::new() });
            let vcpu = {
                let v = v.clone();
                thread::spawn(move || {
                    assert_eq!(v.block.block(|| false), BlockDecision::Sleep);
                    while v.block.is_blocked() {
                        thread::yield_now();
                    }
                    assert!(v.block.resume());
                    assert!(v.req.test(REQ), "woken without seeing the request");
                })
            };
            let waker = {
                let v = v.clone();
                thread::spawn(move || {
                    v.req.make(REQ);
                    // Nothing else wakes it: the vCPU always commits to sleep.
                    while !v.block.is_blocked() {
                        thread::yield_now();
                    }
                    assert!(v.block.wake());
                })
            };
            vcpu.join().unwrap();
            waker.join().unwrap();
            assert_eq!(v.block.phase(), BlockPhase::Running);
        });
    }

    /// Two wakers race one block: if the vCPU slept exactly one of them gets
    /// `true`, and none if it stayed.
    #[test]
    fn loom_two_wakers_wake_one_sleep_once() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let v = Arc::new(Vcpu { req: Requests::new(), block: BlockState::new() });
            let vcpu = {
                let v = v.clone();
                thread::spawn(move || v.block.block(|| v.req.test(REQ)))
            };
            let wakers: [_; 2] = core::array::from_fn(|_| {
                let v = v.clone();
                thread::spawn(move || {
                    v.req.make(REQ);
                    v.block.wake()
                })
            });
            let d = vcpu.join().unwrap();
            let trues = wakers.into_iter().map(|w| u32::from(w.join().unwrap())).sum::<u32>();
            match d {
                BlockDecision::Sleep => assert_eq!(trues, 1, "one wake per sleep"),
                BlockDecision::Stay => assert_eq!(trues, 0, "a vCPU that stayed was woken"),
            }
            assert_eq!(v.block.resume(), trues == 1);
        });
    }

    /// Two vCPUs woken at once while two CPUs idle: each waker reaches a CPU
    /// of its own (`take_idle_cpu`'s CAS), so both vCPUs run.
    fn two_wakers(take: fn(&[AtomicBool; 2]) -> Option<usize>) {
        loom::model(move || {
            let idle = Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
            let other = {
                let idle = idle.clone();
                thread::spawn(move || take(&idle))
            };
            let mine = take(&idle);
            let theirs = other.join().unwrap();
            assert!(
                mine.is_some() && theirs.is_some() && mine != theirs,
                "one idle CPU told twice: {mine:?} {theirs:?}"
            );
        });
    }

    #[test]
    fn loom_wake_two_wakers_reach_two_idle_cpus() {
        two_wakers(|idle| take_idle_cpu(idle.iter().enumerate()));
    }

    /// A waker that only looks for an idle CPU (the first version): both tell
    /// cpu0.
    #[test]
    #[should_panic(expected = "told twice")]
    fn loom_wake_looking_without_taking_tells_one_cpu_twice() {
        two_wakers(|idle| idle.iter().position(|f| f.load(Ordering::Acquire)));
    }
}
