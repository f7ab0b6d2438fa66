//! The GICv4 doorbell of a non-resident vPE (docs/interrupts.md §11),
//! hardware-free so loom checks it on the dev host.
//!
//! When a vCPU is not resident, a vLPI made pending for it raises a doorbell
//! interrupt on the host. The handler ([`VpeDoorbell::ring`]) sets the vPE's
//! `pending_last`, makes the [`WORK_IRQ_PENDING`] request and kicks the vCPU —
//! nothing else. In particular it takes no lock: a handler that asked the vGIC
//! whether anything was pending would take the list lock, and a doorbell taken
//! on a CPU that held that lock (injecting an interrupt) would deadlock. That
//! question is pointless anyway: a doorbell only fires while nothing else was
//! pending (or the vCPU would not be blocked with its doorbell enabled).
//!
//! # The pairing
//!
//! Handler: store `pending_last` (relaxed); [`Requests::make`] (release);
//! kick. vCPU: [`Requests::test`] (acquire) **first**, then `pending_last`
//! ([`VpeDoorbell::runnable`], and [`VpeDoorbell::take_pending_last`] once the
//! vCPU has seen the request). The request's release and the test's acquire
//! make the `pending_last` written before the request visible to a vCPU that
//! sees the request; the flag needs no ordering of its own. A vCPU woken from a
//! real sleep sees it through [`BlockState`]'s own pairing (the waker's
//! release CAS to `Woken`, the vCPU's acquire in the failed commit or in
//! [`BlockState::resume`]).
//!
//! The unpaired read side is a check of the request bit without the acquire
//! (`kvm_test_request` with no barrier after it): the vCPU can see
//! the request and still read a stale `pending_last`. The loom models below
//! show it, and that the real check loses no wake-up against
//! [`BlockState::block`].
//!
//! `pending_last` may be seen `true` before the request is (the flag is
//! stored first, relaxed): that only makes the vCPU runnable a little early,
//! and the request it handles later finds nothing more to do.

use crate::rcu::sync::{const_unless_loom, AtomicBool, Ordering};
#[cfg(doc)]
use crate::sched::wakeup::BlockState;
use crate::sched::wakeup::Requests;
use core::sync::atomic::{AtomicU64 as StatU64, Ordering::Relaxed};

pub use crate::sched::work::WORK_IRQ_PENDING;

/// The doorbell state of one vPE: GICv4's `pending_last`, and how often its
/// doorbell rang.
#[derive(Debug)]
pub struct VpeDoorbell {
    pending_last: AtomicBool,
    /// Statistics only: not part of the protocol (and not model-checked).
    rings: StatU64,
}

impl Default for VpeDoorbell {
    fn default() -> Self {
        Self::new()
    }
}

impl VpeDoorbell {
    const_unless_loom! {
        /// Nothing pending, never rung.
        pub fn new() -> Self {
            Self { pending_last: AtomicBool::new(false), rings: StatU64::new(0) }
        }
    }

    /// The doorbell IRQ handler: sets `pending_last`, counts the ring, makes
    /// [`WORK_IRQ_PENDING`] in `requests` (release: publishes `pending_last`)
    /// and calls `wake`, the caller's kick (the SGI if the vCPU is in guest
    /// mode, then [`BlockState::wake`], acting on its `true`). Takes no lock,
    /// and `wake` must take none either (the deadlock of docs/interrupts.md §11).
    pub fn ring(&self, requests: &Requests, wake: impl FnOnce()) {
        self.ring_with(|| requests.make(WORK_IRQ_PENDING), wake);
    }

    /// The host changed what the GIC may deliver to this non-resident vPE
    /// (an `INV`, `INVALL`, `VMOVI` it forwarded): a vLPI may be pending now
    /// that no doorbell announces, since the GIC rings one only when a vLPI
    /// is made pending. The same as [`VpeDoorbell::ring`], not counted as a
    /// ring: the vCPU runs (its vPE resident) and the GIC looks.
    pub fn may_be_pending(&self, requests: &Requests, wake: impl FnOnce()) {
        self.pending_last.store(true, Ordering::Relaxed);
        requests.make(WORK_IRQ_PENDING);
        wake();
    }

    /// [`VpeDoorbell::ring`] with the request made by `make` (the loom models
    /// pass a request word they can also read without acquire).
    fn ring_with(&self, make: impl FnOnce(), wake: impl FnOnce()) {
        // Relaxed: the release of the request publishes it.
        self.pending_last.store(true, Ordering::Relaxed);
        self.rings.fetch_add(1, Relaxed);
        make();
        wake();
    }

    /// vCPU side, for [`BlockState::block`]'s `runnable`: whether a doorbell
    /// rang. Tests the request bit first, with acquire (pairs with the release
    /// in [`VpeDoorbell::ring`]'s [`Requests::make`]), then `pending_last`
    /// (set by the vCPU itself on put, or by a doorbell whose request this
    /// check has not seen yet).
    #[cfg_attr(
        target_os = "none",
        allow(
            dead_code,
            reason = "the run loop tests every request bit at once (`wake_from_wfi`); the models use this"
        )
    )]
    pub fn runnable(&self, requests: &Requests) -> bool {
        self.runnable_with(|| requests.test(WORK_IRQ_PENDING))
    }

    /// [`VpeDoorbell::runnable`] with the request bit read by `request_seen`.
    fn runnable_with(&self, request_seen: impl FnOnce() -> bool) -> bool {
        request_seen() || self.pending_last()
    }

    /// vCPU side, after it has seen [`WORK_IRQ_PENDING`] with acquire: clears
    /// `pending_last` and returns what it was.
    pub fn take_pending_last(&self) -> bool {
        self.pending_last.swap(false, Ordering::Relaxed)
    }

    /// vCPU side: records `GICR_VPENDBASER.PendingLast` as read when the vPE
    /// was made non-resident (put).
    pub fn note_pending_last(&self, pending: bool) {
        self.pending_last.store(pending, Ordering::Relaxed);
    }

    /// Whether vLPIs are pending as far as this vPE knows (relaxed: meaningful
    /// to the vCPU after it has seen the request, or for statistics).
    pub fn pending_last(&self) -> bool {
        self.pending_last.load(Ordering::Relaxed)
    }

    /// How often the doorbell rang.
    pub fn rings(&self) -> u64 {
        self.rings.load(Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sched::wakeup::{BlockDecision, BlockState};
    use core::cell::Cell;

    #[test]
    fn a_change_the_gic_announces_with_no_doorbell_wakes_like_one_uncounted() {
        let d = VpeDoorbell::new();
        let r = Requests::new();
        let woken = Cell::new(0);
        d.may_be_pending(&r, || woken.set(woken.get() + 1));
        assert!(d.runnable(&r));
        assert!(d.pending_last());
        assert_eq!((woken.get(), d.rings()), (1, 0));
    }

    #[test]
    fn ring_sets_pending_last_counts_makes_the_request_and_wakes_once() {
        let d = VpeDoorbell::new();
        let r = Requests::new();
        assert!(!d.pending_last());
        assert_eq!(d.rings(), 0);
        assert!(!d.runnable(&r));
        let wakes = Cell::new(0);
        d.ring(&r, || {
            // The kick comes last: the request and the flag are already there.
            assert!(r.test(WORK_IRQ_PENDING));
            assert!(d.pending_last());
            wakes.set(wakes.get() + 1);
        });
        assert_eq!(wakes.get(), 1);
        assert_eq!(d.rings(), 1);
        assert_eq!(r.pending(), WORK_IRQ_PENDING, "only the IRQ-pending request");
        assert!(d.runnable(&r));
        d.ring(&r, || wakes.set(wakes.get() + 1));
        assert_eq!(wakes.get(), 2);
        assert_eq!(d.rings(), 2);
    }

    #[test]
    fn take_pending_last_clears_it() {
        let d = VpeDoorbell::new();
        let r = Requests::new();
        d.ring(&r, || {});
        assert_eq!(r.take(WORK_IRQ_PENDING), WORK_IRQ_PENDING);
        assert!(d.runnable(&r), "pending_last alone is runnable");
        assert!(d.take_pending_last());
        assert!(!d.pending_last());
        assert!(!d.take_pending_last());
        assert!(!d.runnable(&r));
        assert_eq!(d.rings(), 1, "taking the flag does not touch the count");
    }

    #[test]
    fn note_pending_last_from_the_put_makes_it_runnable() {
        let d = VpeDoorbell::new();
        let r = Requests::new();
        d.note_pending_last(true);
        assert!(d.pending_last());
        assert!(d.runnable(&r));
        assert_eq!(r.pending(), 0, "the vCPU's own note makes no request");
        assert_eq!(d.rings(), 0);
        d.note_pending_last(false);
        assert!(!d.runnable(&r));
    }

    #[test]
    fn runnable_tests_the_request_first() {
        let d = VpeDoorbell::new();
        let r = Requests::new();
        r.make(WORK_IRQ_PENDING);
        assert!(d.runnable(&r), "the request alone is runnable");
        assert!(!d.pending_last());
        let mut order = Vec::new();
        assert!(
            d.runnable_with(|| {
                order.push("request");
                false
            }) == d.pending_last()
        );
        assert_eq!(order, ["request"]);
    }

    #[test]
    fn a_ring_wakes_a_blocked_vcpu_and_stops_a_blocking_one() {
        let d = VpeDoorbell::new();
        let r = Requests::new();
        let b = BlockState::new();
        assert_eq!(b.block(|| d.runnable(&r)), BlockDecision::Sleep);
        let woken = Cell::new(None);
        d.ring(&r, || woken.set(Some(b.wake())));
        assert_eq!(woken.get(), Some(true));
        assert!(b.resume());
        assert!(d.runnable(&r));
        assert_eq!(b.block(|| d.runnable(&r)), BlockDecision::Stay, "the request is still pending");
        assert_eq!(r.take(WORK_IRQ_PENDING), WORK_IRQ_PENDING);
        assert!(d.take_pending_last());
        assert_eq!(b.block(|| d.runnable(&r)), BlockDecision::Sleep);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::rcu::sync::{thread, AtomicU32};
    use crate::sched::wakeup::{BlockDecision, BlockState};
    use loom::sync::Arc;

    /// The request word as the vCPU reads it: [`Requests`] (acquire), or the
    /// unpaired read (docs/interrupts.md §11).
    trait RequestWord: Send + Sync + 'static {
        fn new() -> Self;
        fn ring(&self, d: &VpeDoorbell, wake: impl FnOnce());
        fn runnable(&self, d: &VpeDoorbell) -> bool;
        /// Whether the vCPU sees the request.
        fn seen(&self) -> bool;
    }

    impl RequestWord for Requests {
        fn new() -> Self {
            Requests::new()
        }
        fn ring(&self, d: &VpeDoorbell, wake: impl FnOnce()) {
            d.ring(self, wake);
        }
        fn runnable(&self, d: &VpeDoorbell) -> bool {
            d.runnable(self)
        }
        fn seen(&self) -> bool {
            self.test(WORK_IRQ_PENDING)
        }
    }

    /// The unpaired vCPU side: the request bit made with release like
    /// [`Requests::make`], but tested without acquire (no `smp_rmb` after
    /// `kvm_test_request`).
    struct UnpairedRequests(AtomicU32);

    impl RequestWord for UnpairedRequests {
        fn new() -> Self {
            Self(AtomicU32::new(0))
        }
        fn ring(&self, d: &VpeDoorbell, wake: impl FnOnce()) {
            d.ring_with(
                || {
                    self.0.fetch_or(WORK_IRQ_PENDING, Ordering::Release);
                },
                wake,
            );
        }
        fn runnable(&self, d: &VpeDoorbell) -> bool {
            d.runnable_with(|| self.seen())
        }
        fn seen(&self) -> bool {
            self.0.load(Ordering::Relaxed) & WORK_IRQ_PENDING != 0
        }
    }

    struct Vpe<R> {
        req: R,
        door: VpeDoorbell,
        block: BlockState,
        /// Counted up (release) by every handler once its kick returned.
        rung: AtomicU32,
    }

    /// The vCPU: blocks on its doorbell; if it sleeps, waits until a wake that
    /// returned `true` lets it run again (it fails if every handler is done
    /// and it is still blocked). Once it sees the request, `pending_last` must
    /// be `true`. Returns its decision.
    fn vcpu<R: RequestWord>(v: &Vpe<R>, handlers: u32) -> BlockDecision {
        let d = v.block.block(|| v.req.runnable(&v.door));
        match d {
            BlockDecision::Stay => {
                assert!(v.req.runnable(&v.door), "stayed without anything runnable");
                if v.req.seen() {
                    check_pending_last(v);
                }
            }
            BlockDecision::Sleep => {
                while v.block.is_blocked() {
                    assert!(
                        v.rung.load(Ordering::Acquire) < handlers || !v.block.is_blocked(),
                        "lost wake-up: asleep after every doorbell rang"
                    );
                    thread::yield_now();
                }
                assert!(v.block.resume(), "only a wake ends this sleep");
                assert!(v.req.seen(), "woken without seeing the request");
                check_pending_last(v);
            }
        }
        d
    }

    /// After the vCPU saw the request: a load, as the vGIC's pending check
    /// does (loom lets an RMW such as `take_pending_last` read only the latest
    /// value, so it would hide a stale read), then the vCPU consumes the flag.
    fn check_pending_last<R: RequestWord>(v: &Vpe<R>) {
        assert!(v.door.pending_last(), "stale pending_last behind a seen request");
        assert!(v.door.take_pending_last());
    }

    /// A doorbell handler: rings with `BlockState::wake` as the kick; returns
    /// what the wake returned.
    fn handler<R: RequestWord>(v: &Vpe<R>) -> bool {
        let mut woken = false;
        v.req.ring(&v.door, || woken = v.block.wake());
        v.rung.fetch_add(1, Ordering::Release);
        woken
    }

    fn doorbell_vs_block<R: RequestWord>() {
        loom::model(|| {
            let v = Arc::new(Vpe {
                req: R::new(),
                door: VpeDoorbell::new(),
                block: BlockState::new(),
                rung: AtomicU32::new(0),
            });
            let cpu = {
                let v = v.clone();
                thread::spawn(move || vcpu(&v, 1))
            };
            let h = {
                let v = v.clone();
                thread::spawn(move || handler(&v))
            };
            let d = cpu.join().unwrap();
            let woken = h.join().unwrap();
            assert_eq!(woken, d == BlockDecision::Sleep, "one wake per sleep, none for a vCPU that stayed");
            assert_eq!(v.door.rings(), 1);
            assert!(v.req.seen());
        });
    }

    /// Model 1: a doorbell against a blocking vCPU. No lost wake-up, and the
    /// vCPU that sees the request (stays, or is woken) sees `pending_last`.
    #[test]
    fn loom_doorbell_vs_block_no_lost_wakeup_and_pending_last_visible() {
        doorbell_vs_block::<Requests>();
    }

    /// Model 2: the unpaired check (docs/interrupts.md §11). The vCPU's re-check sees the
    /// request without acquire and stays; nothing orders its read of
    /// `pending_last` after the handler's store (the fence in `block` comes
    /// before the re-check, not after it), so loom finds it stale.
    #[test]
    #[should_panic(expected = "stale pending_last behind a seen request")]
    fn loom_doorbell_unpaired_check_sees_a_stale_pending_last() {
        doorbell_vs_block::<UnpairedRequests>();
    }

    /// Model 3: two doorbells for the same vPE race one blocking vCPU. Exactly
    /// one wake returns `true` if it slept (none if it stayed), it sees
    /// `pending_last`, and both rings count.
    #[test]
    fn loom_two_doorbells_wake_one_sleep_once() {
        let mut builder = loom::model::Builder::new();
        // 3 takes tens of seconds (the sleeping vCPU's wait loop); 2 still
        // finds two wakers both returning `true` for one sleep.
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let v = Arc::new(Vpe {
                req: Requests::new(),
                door: VpeDoorbell::new(),
                block: BlockState::new(),
                rung: AtomicU32::new(0),
            });
            let cpu = {
                let v = v.clone();
                thread::spawn(move || vcpu(&v, 2))
            };
            let hs: [_; 2] = core::array::from_fn(|_| {
                let v = v.clone();
                thread::spawn(move || handler(&v))
            });
            let d = cpu.join().unwrap();
            let trues = hs.into_iter().map(|h| u32::from(h.join().unwrap())).sum::<u32>();
            match d {
                BlockDecision::Sleep => assert_eq!(trues, 1, "one wake per sleep"),
                BlockDecision::Stay => assert_eq!(trues, 0, "a vCPU that stayed was woken"),
            }
            assert_eq!(v.door.rings(), 2);
            assert!(v.req.seen());
            assert_eq!(v.block.phase(), crate::sched::wakeup::BlockPhase::Running);
        });
    }
}
