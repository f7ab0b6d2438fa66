//! `timer`: the EL1 generic timers' interrupts, on the boot CPU and on one
//! secondary CPU.
//!
//! Sub-tests: `vtimer` (`CNTV_CVAL` 10 ms ahead: its PPI is taken once, with
//! `ISTATUS` set, not before the deadline and within 1 s of it; the
//! handler masks the timer), `ptimer` (the same with `CNTP_*` against
//! `CNTPCT`), `wfi` (`WFI` with the virtual timer 20 ms ahead returns no
//! earlier than the deadline, with the timer's interrupt pending), `wfit`
//! (with FEAT_WFxT: `WFIT` with IRQs masked and no timer armed returns no
//! earlier than its 10 ms timeout and within 1 s of it; with the virtual
//! timer 3 s ahead it still returns at its timeout, not the timer's; a
//! timeout already past returns at once; Arm ARM C6.2 WFIT).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_test_guests::cpus::{ms_to_ticks, ticks_to_us};
    use ferrovisor_test_guests::gic::{self, Gic};
    use ferrovisor_test_guests::timer::{Timer, CTL_IMASK, CTL_ISTATUS};
    use ferrovisor_test_guests::{guest_main, irq, report, report_info, report_skip, rt, smp, time, Env, SubTest};

    guest_main!(
        "timer",
        &[
            SubTest { name: "vtimer", run: vtimer },
            SubTest { name: "ptimer", run: ptimer },
            SubTest { name: "wfi", run: wfi },
            SubTest { name: "wfit", run: wfit },
        ]
    );

    const CPU_TIMEOUT_MS: u64 = 5000;
    const DEADLINE_MS: u64 = 10;
    /// A bound that catches a timer left for some later event (or none), not
    /// a latency target (that is micro-bench's): emulated CPUs on a busy
    /// machine (QEMU's TCG on 2 shared cores; raspi4b's single-threaded TCG
    /// once saw 170 ms) can lose the host CPU for over 100 ms of guest time.
    const LATE_MS: u64 = 1000;
    const WFI_MS: u64 = 20;

    /// What the handler saw, per CPU.
    struct Seen {
        fired: AtomicU32,
        /// The timer's counter at the handler's start.
        at: AtomicU64,
        /// `CNT*_CTL_EL0` in the handler.
        ctl: AtomicU64,
        /// Interrupts other than the timer's.
        other: AtomicU32,
        other_intid: AtomicU32,
    }

    static SEEN: [Seen; MAX_CPUS] = [const {
        Seen {
            fired: AtomicU32::new(0),
            at: AtomicU64::new(0),
            ctl: AtomicU64::new(0),
            other: AtomicU32::new(0),
            other_intid: AtomicU32::new(0),
        }
    }; MAX_CPUS];

    /// The timer under test: false = virtual, true = physical.
    static PHYS: AtomicBool = AtomicBool::new(false);
    static INTID: AtomicU32 = AtomicU32::new(0);

    fn current() -> Timer {
        if PHYS.load(Ordering::SeqCst) {
            Timer::Phys
        } else {
            Timer::Virt
        }
    }

    fn seen() -> &'static Seen {
        &SEEN[rt::cpu_index() % MAX_CPUS]
    }

    fn handler() {
        let timer = current();
        let now = timer.counter();
        let Some(gic) = gic::get() else { return };
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        let s = seen();
        if iar.intid() == INTID.load(Ordering::SeqCst) {
            let ctl = timer.ctl();
            s.ctl.store(ctl, Ordering::SeqCst);
            s.at.store(now, Ordering::SeqCst);
            timer.set_ctl(ctl | CTL_IMASK);
            s.fired.fetch_add(1, Ordering::SeqCst);
        } else {
            s.other_intid.store(iar.intid(), Ordering::SeqCst);
            s.other.fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    fn reset_seen() {
        let s = seen();
        s.fired.store(0, Ordering::SeqCst);
        s.at.store(0, Ordering::SeqCst);
        s.ctl.store(0, Ordering::SeqCst);
        s.other.store(0, Ordering::SeqCst);
    }

    fn check_others(cpu: usize, what: &str) {
        let s = seen();
        let other = s.other.load(Ordering::SeqCst);
        report(
            other == 0,
            format_args!(
                "{what} on cpu{cpu}: no other interrupt was taken ({other}, last INTID {})",
                s.other_intid.load(Ordering::SeqCst)
            ),
        );
    }

    /// Sets up this CPU's GIC and the timer's PPI.
    fn cpu_setup(timer: Timer) -> Option<&'static Gic> {
        let gic = match gic::get() {
            Some(g) => g.cpu_init().map(|()| g),
            None => gic::init(),
        };
        match gic {
            Ok(g) => {
                timer.stop();
                g.enable(INTID.load(Ordering::SeqCst));
                Some(g)
            }
            Err(e) => {
                report(false, format_args!("cpu{}: GIC set-up: {e}", rt::cpu_index()));
                None
            }
        }
    }

    /// One deadline on this CPU's `timer`.
    fn deadline(cpu: usize) {
        let timer = current();
        let name = timer.name();
        let Some(gic) = cpu_setup(timer) else { return };
        reset_seen();
        let freq = time::freq();
        let cval = timer.counter() + ms_to_ticks(DEADLINE_MS, freq);
        timer.arm_at(cval);
        let early = timer.ctl();
        // Only a read known to come before the deadline is checked: an
        // emulated CPU on a loaded machine can lose its host CPU for longer
        // than the 10 ms (seen beside the fuzz VM: ISTATUS set, rightly).
        let read_by = timer.counter();
        report(
            early & CTL_ISTATUS == 0 || read_by >= cval,
            format_args!("{name} on cpu{cpu}: ISTATUS clear before the deadline (CTL {early:#x})"),
        );
        let taken = irq::wfi_until(DEADLINE_MS + 2 * LATE_MS, || seen().fired.load(Ordering::SeqCst) > 0);
        let s = seen();
        let intid = INTID.load(Ordering::SeqCst);
        report(taken.is_some(), format_args!("{name} on cpu{cpu}: INTID {intid} taken"));
        if taken.is_some() {
            let (at, ctl) = (s.at.load(Ordering::SeqCst), s.ctl.load(Ordering::SeqCst));
            report(
                ctl & CTL_ISTATUS != 0,
                format_args!("{name} on cpu{cpu}: ISTATUS set in the handler (CTL {ctl:#x})"),
            );
            report(
                at >= cval,
                format_args!("{name} on cpu{cpu}: not before the deadline (counter {at:#x}, CVAL {cval:#x})"),
            );
            let late = ticks_to_us(at.saturating_sub(cval), freq);
            report(
                late < LATE_MS * 1000,
                format_args!("{name} on cpu{cpu}: {late} us after the deadline (under {LATE_MS} ms)"),
            );
        }
        irq::wait(5, || false);
        let fired = s.fired.load(Ordering::SeqCst);
        report(fired == 1, format_args!("{name} on cpu{cpu}: taken once while masked ({fired})"));
        check_others(cpu, name);
        timer.stop();
        gic.disable(intid);
    }

    /// `WFI` with the virtual timer ahead.
    fn wfi_wait(cpu: usize) {
        let timer = current();
        let Some(gic) = cpu_setup(timer) else { return };
        reset_seen();
        let freq = time::freq();
        let start = timer.counter();
        timer.arm_at(start + ms_to_ticks(WFI_MS, freq));
        irq::mask();
        aarch64_cpu::asm::wfi();
        let woke = timer.counter();
        let pending = gic.is_pending(INTID.load(Ordering::SeqCst));
        irq::window();
        let waited = ticks_to_us(woke - start, freq);
        report(
            waited >= WFI_MS * 1000,
            format_args!("WFI on cpu{cpu}: woken after {waited} us (at least {} us)", WFI_MS * 1000),
        );
        let fired = seen().fired.load(Ordering::SeqCst);
        report(
            pending && fired == 1,
            format_args!("WFI on cpu{cpu}: the timer's interrupt was pending at the wake and then taken ({fired})"),
        );
        check_others(cpu, "WFI");
        timer.stop();
        gic.disable(INTID.load(Ordering::SeqCst));
    }

    /// Runs `test` on the boot CPU, then on the first secondary CPU.
    fn on_two_cpus(env: &Env, timer: Timer, test: fn(usize)) {
        PHYS.store(timer == Timer::Phys, Ordering::SeqCst);
        INTID.store(timer.intid(), Ordering::SeqCst);
        if rt::env().board.timer().is_none() {
            report_info(format_args!("no timer node in the device tree: INTID {}", timer.intid()));
        }
        if gic::init().is_err() {
            report(false, "GIC set-up failed");
            return;
        }
        irq::set_handler(Some(handler));
        test(env.boot_cpu);
        match smp::secondaries().find(|&c| c < MAX_CPUS) {
            Some(cpu) => match smp::start(cpu, test) {
                Ok(()) => {
                    let done = smp::wait_done(cpu, CPU_TIMEOUT_MS);
                    report(done.is_some(), format_args!("cpu{cpu} finished within {CPU_TIMEOUT_MS} ms"));
                    smp::wait_all_off(CPU_TIMEOUT_MS);
                }
                Err(e) => {
                    report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
                }
            },
            None => report_skip("one CPU: no secondary to test on"),
        }
        irq::set_handler(None);
    }

    fn vtimer(env: &Env) {
        on_two_cpus(env, Timer::Virt, deadline);
    }

    fn ptimer(env: &Env) {
        on_two_cpus(env, Timer::Phys, deadline);
    }

    fn wfi(env: &Env) {
        on_two_cpus(env, Timer::Virt, wfi_wait);
    }

    /// `ID_AA64ISAR2_EL1.WFxT` (bits [3:0]) is 0b0010 with FEAT_WFxT.
    fn has_wfxt() -> bool {
        let isar2: u64;
        // SAFETY: reading an ID register has no side effects.
        unsafe { core::arch::asm!("mrs {}, s3_0_c0_c6_2", out(reg) isar2, options(nomem, nostack)) };
        isar2 & 0xf == 0b0010
    }

    /// `WFIT x0` until the virtual count reaches `timeout`; returns the
    /// virtual count after it.
    fn wfit_until(timeout: u64) -> u64 {
        // SAFETY: WFIT only waits; encoded by hand (0xd503_1020 | Rd, Arm ARM
        // C6.2) for assemblers without FEAT_WFxT.
        unsafe { core::arch::asm!(".inst 0xd5031020", in("x0") timeout, options(nomem, nostack)) };
        Timer::Virt.counter()
    }

    fn wfit(_env: &Env) {
        if !has_wfxt() {
            report_skip("no FEAT_WFxT (ID_AA64ISAR2_EL1.WFxT is 0)");
            return;
        }
        let freq = time::freq();
        let timer = Timer::Virt;
        timer.stop();
        irq::mask();
        let start = timer.counter();
        let woke = wfit_until(start + ms_to_ticks(DEADLINE_MS, freq));
        let waited = ticks_to_us(woke - start, freq);
        report(
            (DEADLINE_MS * 1000..LATE_MS * 1000).contains(&waited),
            format_args!(
                "WFIT with no timer: woken after {waited} us (at least {} us, under {LATE_MS} ms)",
                DEADLINE_MS * 1000
            ),
        );

        // The timer's deadline (3 s) is not the WFIT's: the earlier one wakes it.
        let start = timer.counter();
        timer.arm_at(start + ms_to_ticks(3000, freq));
        let woke = wfit_until(start + ms_to_ticks(DEADLINE_MS, freq));
        timer.stop();
        let waited = ticks_to_us(woke - start, freq);
        report(
            (DEADLINE_MS * 1000..LATE_MS * 1000).contains(&waited),
            format_args!("WFIT with the timer 3 s ahead: woken after {waited} us (at its own timeout)"),
        );

        let start = timer.counter();
        let woke = wfit_until(start.saturating_sub(1));
        let waited = ticks_to_us(woke - start, freq);
        report(waited < LATE_MS * 1000, format_args!("WFIT with its timeout past: returned after {waited} us"));
        irq::window();
    }
}
