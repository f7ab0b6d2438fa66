//! When a CPU's host timer fires (docs/run-loop.md §9): a periodic tick only
//! while the CPU runs a vCPU and vCPUs outnumber CPUs (time-slicing), and
//! otherwise only for real deadlines. The deadlines of the vCPU's own timers
//! and of its `WFI`/`WFIT` wait are armed by the run loop before each entry
//! and wait (`vcpu::timers::arm_ptimer`, `block_in_wfi`); what this module
//! adds is the tick and the earliest deadline of a sleeping vCPU, which are
//! global state.
//!
//! # The kick pairing
//!
//! A CPU that takes no tick reads the global state only when its timer fires,
//! when it starts a turn, or at an SGI, so a change that needs it (vCPUs come
//! to outnumber CPUs, a sleeper's deadline is earlier than any noted before)
//! must send it an SGI. [`CpuTick::settle`] marks the CPU tickless, `SeqCst`
//! fence, then reads the state again; the changer updates the state (an RMW),
//! `SeqCst` fence, then reads [`CpuTick::tickless`] and kicks the CPUs that
//! are. By the fence-fence rule either the CPU's second read sees the change,
//! or the changer sees the flag and the SGI makes the CPU settle again. The
//! loom models below check it, and that it fails without the CPU's fence.

use crate::rcu::sync::{fence, AtomicBool, Ordering};

/// What the decision depends on, read at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The physical count now.
    pub now: u64,
    /// The tick's period in counter ticks.
    pub period: u64,
    /// vCPUs outnumber CPUs (`sched::oversubscribed`).
    pub oversubscribed: bool,
    /// This CPU runs a vCPU (in its turn, guest or host side).
    pub running: bool,
    /// The vCPU it runs needs exits to be seen at all: its PMU counts and
    /// the board's overflow interrupt reaches the host as nothing it can
    /// link to the guest's (the Pi 4's SPIs), so an overflow shows only at
    /// an exit (`vcpu::pmu`).
    pub poll: bool,
    /// The earliest deadline of a sleeping vCPU ([`u64::MAX`]: none).
    pub sleeper: u64,
    /// The tick this CPU armed and has not taken yet, if any: a deadline
    /// that fires before it must not push it back (a guest whose timer
    /// fires more often than the tick would never be preempted).
    pub armed_tick: Option<u64>,
}

/// When the CPU's timer must fire next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The next time-slice tick, if the CPU needs one.
    pub tick: Option<u64>,
    /// The earliest of the tick and a sleeper's deadline still ahead: the
    /// timer is armed for it, or left off when there is none.
    pub at: Option<u64>,
}

/// The decision. A CPU needs the tick only to time-slice (it runs a vCPU and
/// others wait for CPUs) or to make a vCPU that needs polling exit. A sleeper's deadline already passed is not armed
/// (the timer would fire at once, over and over): the caller makes the
/// schedulers' scan run instead (`WORK_RESCHED`, or the idle loop's scan).
pub fn plan(i: Inputs) -> Plan {
    let tick = ((i.oversubscribed || i.poll) && i.running).then(|| match i.armed_tick {
        Some(t) if t > i.now => t,
        _ => i.now.saturating_add(i.period.max(1)),
    });
    let sleeper = (i.sleeper != u64::MAX && i.sleeper > i.now).then_some(i.sleeper);
    let at = match (tick, sleeper) {
        (Some(t), Some(s)) => Some(t.min(s)),
        (t, s) => t.or(s),
    };
    Plan { tick, at }
}

/// Whether a timer interrupt at `now` is the tick (armed for `tick_at`) and
/// not an earlier deadline that shared the timer.
pub fn is_tick(tick_at: Option<u64>, now: u64) -> bool {
    tick_at.is_some_and(|t| t <= now)
}

/// One CPU's side of the kick pairing.
#[derive(Debug)]
pub struct CpuTick {
    /// The CPU takes no tick and relies on an SGI when the global state
    /// changes.
    tickless: AtomicBool,
}

impl Default for CpuTick {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuTick {
    crate::rcu::sync::const_unless_loom! {
        /// A CPU starts with the boot tick armed.
        pub fn new() -> Self {
            Self { tickless: AtomicBool::new(false) }
        }
    }

    /// The CPU's plan, from `read` (the global state now). A plan without a
    /// tick marks the CPU tickless first and reads again after the fence, so
    /// a change made meanwhile is either seen here or kicks the CPU.
    pub fn settle(&self, read: impl Fn() -> Inputs) -> Plan {
        let p = plan(read());
        if p.tick.is_some() {
            self.tickless.store(false, Ordering::Relaxed);
            return p;
        }
        self.tickless.store(true, Ordering::Relaxed);
        // Pairs with the fence in `changed`.
        fence(Ordering::SeqCst);
        let again = plan(read());
        if again.tick.is_some() {
            self.tickless.store(false, Ordering::Relaxed);
        }
        again
    }

    /// For a changer, after [`changed`]: whether this CPU must be kicked.
    pub fn tickless(&self) -> bool {
        self.tickless.load(Ordering::Relaxed)
    }
}

/// A changer has updated the global state (an RMW): orders it before its
/// reads of [`CpuTick::tickless`].
pub fn changed() {
    fence(Ordering::SeqCst);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const PERIOD: u64 = 625_000; // 10 ms at 62.5 MHz

    fn inputs(oversubscribed: bool, running: bool, sleeper: u64) -> Inputs {
        Inputs { now: 1_000, period: PERIOD, oversubscribed, running, poll: false, sleeper, armed_tick: None }
    }

    #[test]
    fn a_dedicated_cpu_takes_no_tick() {
        assert_eq!(plan(inputs(false, true, u64::MAX)), Plan { tick: None, at: None });
        assert_eq!(plan(inputs(false, false, u64::MAX)), Plan { tick: None, at: None }, "idle");
    }

    #[test]
    fn time_slicing_needs_the_tick_only_on_a_cpu_that_runs_a_vcpu() {
        let t = Some(1_000 + PERIOD);
        assert_eq!(plan(inputs(true, true, u64::MAX)), Plan { tick: t, at: t });
        // An idle CPU has nobody to preempt; a wake-up's SGI brings it back.
        assert_eq!(plan(inputs(true, false, u64::MAX)), Plan { tick: None, at: None });
    }

    #[test]
    fn a_vcpu_that_needs_polling_ticks_on_a_cpu_of_its_own() {
        let t = Some(1_000 + PERIOD);
        assert_eq!(plan(Inputs { poll: true, ..inputs(false, true, u64::MAX) }), Plan { tick: t, at: t });
        assert_eq!(plan(Inputs { poll: true, ..inputs(false, false, u64::MAX) }).tick, None, "idle");
    }

    #[test]
    fn a_sleepers_deadline_is_armed_when_it_comes_first() {
        assert_eq!(plan(inputs(false, true, 5_000)), Plan { tick: None, at: Some(5_000) });
        assert_eq!(plan(inputs(true, true, 5_000)), Plan { tick: Some(1_000 + PERIOD), at: Some(5_000) });
        let late = 1_000 + 2 * PERIOD;
        assert_eq!(plan(inputs(true, true, late)).at, Some(1_000 + PERIOD), "the tick first");
        assert_eq!(plan(inputs(false, false, late)).at, Some(late), "an idle CPU wakes for it");
    }

    #[test]
    fn an_earlier_deadline_does_not_push_the_tick_back() {
        let i = Inputs { armed_tick: Some(5_000), ..inputs(true, true, u64::MAX) };
        assert_eq!(plan(i).tick, Some(5_000), "still ahead: kept");
        let i = Inputs { armed_tick: Some(1_000), ..inputs(true, true, u64::MAX) };
        assert_eq!(plan(i).tick, Some(1_000 + PERIOD), "taken now: the next one");
        let i = Inputs { armed_tick: Some(5_000), ..inputs(false, true, u64::MAX) };
        assert_eq!(plan(i), Plan { tick: None, at: None }, "no longer needed: dropped");
    }

    #[test]
    fn a_deadline_already_passed_is_not_armed() {
        assert_eq!(plan(inputs(false, true, 1_000)).at, None);
        assert_eq!(plan(inputs(false, true, 3)).at, None);
        assert_eq!(plan(inputs(true, true, 3)).at, Some(1_000 + PERIOD));
    }

    #[test]
    fn the_tick_saturates_and_never_has_a_zero_period() {
        let i = Inputs { now: u64::MAX - 1, ..inputs(true, true, u64::MAX) };
        assert_eq!(plan(i).tick, Some(u64::MAX));
        let i = Inputs { period: 0, ..inputs(true, true, u64::MAX) };
        assert_eq!(plan(i).tick, Some(1_001));
    }

    #[test]
    fn only_the_armed_tick_is_a_tick() {
        assert!(is_tick(Some(100), 100));
        assert!(is_tick(Some(100), 150));
        assert!(!is_tick(Some(100), 99), "an earlier deadline (the guest's timer) fired");
        assert!(!is_tick(None, 1_000), "no tick armed");
    }

    #[test]
    fn settle_marks_a_cpu_tickless_and_back() {
        let c = CpuTick::new();
        assert!(!c.tickless());
        assert_eq!(c.settle(|| inputs(false, true, u64::MAX)).tick, None);
        assert!(c.tickless());
        assert!(c.settle(|| inputs(true, true, u64::MAX)).tick.is_some());
        assert!(!c.tickless());
    }

    #[test]
    fn settle_takes_a_change_seen_on_the_second_read() {
        let c = CpuTick::new();
        let reads = core::cell::Cell::new(0);
        let p = c.settle(|| {
            reads.set(reads.get() + 1);
            inputs(reads.get() > 1, true, u64::MAX)
        });
        assert_eq!(reads.get(), 2);
        assert!(p.tick.is_some() && !c.tickless());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::rcu::sync::{thread, AtomicU64, AtomicUsize};
    use loom::sync::Arc;

    const CPUS: usize = 2;

    struct Global {
        live: AtomicUsize,
        next_wake: AtomicU64,
        cpu: CpuTick,
    }

    fn read(g: &Global) -> Inputs {
        Inputs {
            now: 0,
            period: 10,
            oversubscribed: g.live.load(Ordering::Relaxed) > CPUS,
            running: true,
            poll: false,
            sleeper: g.next_wake.load(Ordering::Relaxed),
            armed_tick: None,
        }
    }

    /// `CpuTick::settle` without its fence (the store and the second read
    /// may then pass each other).
    fn settle_unfenced(c: &CpuTick, read: impl Fn() -> Inputs) -> Plan {
        let p = plan(read());
        if p.tick.is_some() {
            return p;
        }
        c.tickless.store(true, Ordering::Relaxed);
        plan(read())
    }

    fn oversubscription_start(fenced: bool) {
        loom::model(move || {
            let g = Arc::new(Global {
                live: AtomicUsize::new(CPUS),
                next_wake: AtomicU64::new(u64::MAX),
                cpu: CpuTick::new(),
            });
            let changer = {
                let g = g.clone();
                thread::spawn(move || {
                    // A VM's vCPU joins: now 3 on 2 CPUs.
                    g.live.fetch_add(1, Ordering::AcqRel);
                    changed();
                    g.cpu.tickless()
                })
            };
            let p = if fenced { g.cpu.settle(|| read(&g)) } else { settle_unfenced(&g.cpu, || read(&g)) };
            let kicked = changer.join().unwrap();
            assert!(p.tick.is_some() || kicked, "the CPU went tickless and was never kicked");
        });
    }

    /// A CPU going tickless while vCPUs come to outnumber CPUs: it ticks, or
    /// it is kicked (and settles again at the SGI).
    #[test]
    fn loom_tick_oversubscription_start_never_misses_a_tickless_cpu() {
        oversubscription_start(true);
    }

    /// Without the CPU's fence, loom finds the interleaving that loses it.
    #[test]
    #[should_panic(expected = "never kicked")]
    fn loom_tick_without_the_fence_a_tickless_cpu_is_missed() {
        oversubscription_start(false);
    }

    /// The same with a sleeper's deadline noted while the CPU settles: the
    /// CPU arms for it, or is kicked.
    #[test]
    fn loom_tick_a_new_sleeper_deadline_reaches_a_tickless_cpu() {
        loom::model(|| {
            let g = Arc::new(Global {
                live: AtomicUsize::new(1),
                next_wake: AtomicU64::new(u64::MAX),
                cpu: CpuTick::new(),
            });
            let changer = {
                let g = g.clone();
                thread::spawn(move || {
                    let before = g.next_wake.fetch_min(50, Ordering::AcqRel);
                    changed();
                    before > 50 && g.cpu.tickless()
                })
            };
            let p = g.cpu.settle(|| read(&g));
            let kicked = changer.join().unwrap();
            assert!(p.at == Some(50) || kicked, "the deadline is armed nowhere: {p:?}");
        });
    }
}
