//! `pmu`: the PMUv3 a guest finds (Arm ARM D13, "The Performance Monitors
//! Extension"; registers in D24.5), as KVM gives it one and QEMU's model
//! (`target/arm/cpregs-pmu.c`) has it.
//!
//! Sub-tests: `introspection` (`ID_AA64DFR0_EL1.PMUVer` is a PMUv3, the
//! device tree's `arm,armv8-pmuv3` node names PPI 7, `PMCR_EL0.E` is 0 at
//! reset and N counters exist, `PMCEID0_EL0` lists SW_INCR and CPU_CYCLES),
//! `cycles` (`PMCCNTR_EL0` counts up while enabled, stands still while
//! disabled, `PMCR_EL0.C` resets it), `config` (`PMEVTYPER<n>`,
//! `PMCCFILTR`, `PMSELR` + `PMXEVTYPER`, the enable, interrupt-enable and
//! overflow sets read back what was written and their CLR registers clear
//! it), `swinc` (`PMSWINC_EL0` increments an enabled SW_INCR counter
//! exactly and a disabled one not at all), `wide` (a 32-bit counter wraps
//! into `PMOVSSET`; with PMUv3p5's `PMCR_EL0.LP` a 64-bit one carries past
//! bit 31; a CHAIN pair carries when the PMU counts CHAIN), `overflow` (an
//! overflow with its interrupt enabled raises PPI 23, once), `el0`
//! (`PMUSERENR_EL0` gates EL0's access: a trap to EL1 with EC 0x18 when
//! clear, the counter's value when set) and `percpu` (every CPU counts its
//! own SW_INCR events exactly, across exits and, when CPUs are shared,
//! time-slicing and moves between CPUs).
//!
//! The lines say nothing that differs between one PMU and another or one
//! run and the next (counts of cycles, N): they are compared with a run on
//! QEMU itself.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_test_guests::exception::{catch, run_at_el0};
    use ferrovisor_test_guests::gic::{self, Gic};
    use ferrovisor_test_guests::{guest_main, irq, report, report_info, report_skip, smp, Env, SubTest};

    guest_main!(
        "pmu",
        &[
            SubTest { name: "introspection", run: introspection },
            SubTest { name: "cycles", run: cycles },
            SubTest { name: "config", run: config },
            SubTest { name: "swinc", run: swinc },
            SubTest { name: "wide", run: wide },
            SubTest { name: "overflow", run: overflow },
            SubTest { name: "el0", run: el0 },
            SubTest { name: "percpu", run: percpu },
        ]
    );

    /// The PMU's overflow interrupt on QEMU virt (and in KVM's guests).
    const PMU_INTID: u32 = 23;
    const CPU_TIMEOUT_MS: u64 = 5000;

    const PMCR_E: u64 = 1 << 0;
    const PMCR_P: u64 = 1 << 1;
    const PMCR_C: u64 = 1 << 2;
    const PMCR_LC: u64 = 1 << 6;
    const PMCR_LP: u64 = 1 << 7;
    const CYCLE: u64 = 1 << 31;

    const EV_SW_INCR: u64 = 0x00;
    const EV_CPU_CYCLES: u64 = 0x11;
    const EV_CHAIN: u64 = 0x1e;
    /// PMEVTYPER's `P` and `U` filter bits: don't count at EL1 / EL0.
    const FILTER_P: u64 = 1 << 31;
    const FILTER_U: u64 = 1 << 30;
    const EC_SYSREG: u8 = 0x18;

    macro_rules! mrs {
        ($reg:literal) => {{
            let v: u64;
            // SAFETY: a PMU register read; UNDEFINED only where the test
            // expects it (then inside `catch`).
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }};
    }

    macro_rules! msr {
        ($reg:literal, $v:expr) => {{
            let v: u64 = $v;
            // SAFETY: PMU registers change only what the PMU counts and
            // signals.
            unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nomem, nostack, preserves_flags)) };
        }};
    }

    fn pmuver() -> u64 {
        (mrs!("id_aa64dfr0_el1") >> 8) & 0xf
    }

    fn has_pmu() -> bool {
        let v = pmuver();
        v != 0 && v != 0xf
    }

    /// PMUv3p5: 64-bit event counters (`PMCR_EL0.LP`).
    fn has_pmuv3p5() -> bool {
        pmuver() >= 6 && pmuver() != 0xf
    }

    fn counters() -> usize {
        ((mrs!("pmcr_el0") >> 11) & 0x1f) as usize
    }

    fn set_type(n: usize, v: u64) {
        msr!("pmselr_el0", n as u64);
        msr!("pmxevtyper_el0", v);
    }

    fn get_type(n: usize) -> u64 {
        msr!("pmselr_el0", n as u64);
        mrs!("pmxevtyper_el0")
    }

    fn set_count(n: usize, v: u64) {
        msr!("pmselr_el0", n as u64);
        msr!("pmxevcntr_el0", v);
    }

    fn get_count(n: usize) -> u64 {
        msr!("pmselr_el0", n as u64);
        mrs!("pmxevcntr_el0")
    }

    /// Everything off and zeroed, as a test starts.
    fn quiesce() {
        msr!("pmcntenclr_el0", u64::from(u32::MAX));
        msr!("pmintenclr_el1", u64::from(u32::MAX));
        msr!("pmovsclr_el0", u64::from(u32::MAX));
        msr!("pmuserenr_el0", 0);
        msr!("pmcr_el0", PMCR_P | PMCR_C);
    }

    /// Skips the sub-test (and says why) when there is no PMUv3.
    fn need_pmu() -> bool {
        if has_pmu() {
            quiesce();
            return true;
        }
        report_skip(format_args!("no PMUv3 (ID_AA64DFR0_EL1.PMUVer {:#x})", pmuver()));
        false
    }

    fn introspection(env: &Env) {
        let v = pmuver();
        report(v != 0 && v != 0xf, "ID_AA64DFR0_EL1.PMUVer reports a PMUv3");
        if !has_pmu() {
            return;
        }
        report_info(format_args!("PMUVer {v:#x}, PMCR_EL0 {:#x}", mrs!("pmcr_el0")));
        let node = env.board.pmu_intid();
        report(
            node == Some(PMU_INTID),
            format_args!("the device tree's arm,armv8-pmuv3 node names INTID 23 ({node:?})"),
        );
        let pmcr = mrs!("pmcr_el0");
        report(pmcr & PMCR_E == 0, "PMCR_EL0.E is 0 at reset (Arm ARM D24.5.7)");
        let n = counters();
        report(n >= 1, "PMCR_EL0.N: at least one event counter");
        let id0 = mrs!("pmceid0_el0");
        report_info(format_args!("{n} event counters, PMCEID0_EL0 {id0:#x}, PMCEID1_EL0 {:#x}", mrs!("pmceid1_el0")));
        report(id0 & 1 != 0, "PMCEID0_EL0 lists SW_INCR (0x00)");
        report(id0 & (1 << EV_CPU_CYCLES) != 0, "PMCEID0_EL0 lists CPU_CYCLES (0x11)");
    }

    fn cycles(_: &Env) {
        if !need_pmu() {
            return;
        }
        msr!("pmccfiltr_el0", 0);
        msr!("pmcr_el0", PMCR_E | PMCR_LC | PMCR_C);
        msr!("pmcntenset_el0", CYCLE);
        let a = mrs!("pmccntr_el0");
        spin(20_000);
        let b = mrs!("pmccntr_el0");
        report(b > a, "PMCCNTR_EL0 counts up while enabled");
        msr!("pmcntenclr_el0", CYCLE);
        let c = mrs!("pmccntr_el0");
        spin(20_000);
        let d = mrs!("pmccntr_el0");
        report(c >= b && d == c, "PMCCNTR_EL0 stands still while PMCNTENSET_EL0 bit 31 is clear");
        msr!("pmcntenset_el0", CYCLE);
        msr!("pmcr_el0", 0);
        let e = mrs!("pmccntr_el0");
        spin(20_000);
        report(mrs!("pmccntr_el0") == e, "PMCCNTR_EL0 stands still while PMCR_EL0.E is 0");
        msr!("pmcr_el0", PMCR_LC | PMCR_C);
        let f = mrs!("pmccntr_el0");
        report(f < e || e == 0, "PMCR_EL0.C resets PMCCNTR_EL0");
        report_info(format_args!("cycle counter: {a} -> {b} enabled, {c} -> {d} disabled"));
        quiesce();
    }

    fn spin(n: u64) {
        for i in 0..n {
            core::hint::black_box(i);
        }
    }

    fn config(_: &Env) {
        if !need_pmu() {
            return;
        }
        let n = counters();
        let mut types_ok = true;
        let mut counts_ok = true;
        for i in 0..n {
            let t = if i % 2 == 0 { EV_CPU_CYCLES | FILTER_U } else { EV_SW_INCR | FILTER_P };
            set_type(i, t);
            types_ok &= get_type(i) == t;
            set_count(i, 0x1234_0000 + i as u64);
            counts_ok &= get_count(i) & 0xffff_ffff == 0x1234_0000 + i as u64;
        }
        report(types_ok, "PMXEVTYPER_EL0 of every counter reads back the event and filter written");
        report(counts_ok, "PMXEVCNTR_EL0 of every counter reads back the count written");
        msr!("pmselr_el0", 0);
        report(mrs!("pmevtyper0_el0") == EV_CPU_CYCLES | FILTER_U, "PMEVTYPER0_EL0 is what PMXEVTYPER_EL0 wrote");
        msr!("pmevtyper0_el0", EV_SW_INCR);
        report(get_type(0) == EV_SW_INCR, "PMXEVTYPER_EL0 reads what PMEVTYPER0_EL0 wrote");
        msr!("pmccfiltr_el0", FILTER_U);
        report(mrs!("pmccfiltr_el0") == FILTER_U, "PMCCFILTR_EL0 reads back U");
        msr!("pmccfiltr_el0", 0);
        let mask = CYCLE | ((1u64 << n) - 1);
        msr!("pmcntenset_el0", mask);
        let set = mrs!("pmcntenset_el0");
        msr!("pmcntenclr_el0", 1);
        let cleared = mrs!("pmcntenclr_el0");
        report(set == mask && cleared == mask & !1, "PMCNTENSET/CLR_EL0 set and clear the implemented counters' bits");
        msr!("pmintenset_el1", CYCLE | 1);
        report(mrs!("pmintenclr_el1") == CYCLE | 1, "PMINTENSET/CLR_EL1 read back");
        msr!("pmintenclr_el1", u64::from(u32::MAX));
        msr!("pmovsset_el0", 1 << 0);
        let ovs = mrs!("pmovsclr_el0");
        msr!("pmovsclr_el0", 1 << 0);
        report(ovs == 1 && mrs!("pmovsset_el0") == 0, "PMOVSSET_EL0 sets an overflow flag and PMOVSCLR_EL0 clears it");
        msr!("pmuserenr_el0", 0b1101);
        report(mrs!("pmuserenr_el0") & 0xf == 0b1101, "PMUSERENR_EL0 reads back EN, CR and ER");
        quiesce();
    }

    fn swinc(_: &Env) {
        if !need_pmu() {
            return;
        }
        set_type(0, EV_SW_INCR);
        set_count(0, 0);
        msr!("pmcntenset_el0", 1);
        msr!("pmcr_el0", PMCR_E);
        for _ in 0..100 {
            msr!("pmswinc_el0", 1);
        }
        let c = get_count(0);
        report(c == 100, format_args!("100 writes of PMSWINC_EL0 bit 0 count 100 ({c})"));
        msr!("pmcntenclr_el0", 1);
        for _ in 0..5 {
            msr!("pmswinc_el0", 1);
        }
        report(get_count(0) == 100, "a disabled counter ignores PMSWINC_EL0");
        msr!("pmcntenset_el0", 1);
        msr!("pmcr_el0", 0);
        msr!("pmswinc_el0", 1);
        report(get_count(0) == 100, "PMSWINC_EL0 counts nothing while PMCR_EL0.E is 0");
        quiesce();
    }

    fn wide(_: &Env) {
        if !need_pmu() {
            return;
        }
        set_type(0, EV_SW_INCR);
        set_count(0, 0xffff_ffff);
        msr!("pmcntenset_el0", 1);
        msr!("pmcr_el0", PMCR_E);
        msr!("pmswinc_el0", 1);
        let (c, ovs) = (get_count(0), mrs!("pmovsset_el0"));
        // With PMUv3p5 the counter is 64 bits wide even with LP = 0 (bit 32
        // counts on); the overflow is the carry out of bit 31 (Arm ARM
        // D13.2.1, "Event counter overflow").
        report(
            c & 0xffff_ffff == 0 && ovs & 1 != 0,
            "PMCR_EL0.LP = 0: bits 31:0 wrap to 0 and the overflow flag is set",
        );
        msr!("pmovsclr_el0", 1);
        if has_pmuv3p5() {
            msr!("pmcr_el0", PMCR_E | PMCR_LP);
            set_count(0, 0xffff_ffff);
            msr!("pmswinc_el0", 1);
            let (c, ovs) = (get_count(0), mrs!("pmovsset_el0"));
            report(
                c == 0x1_0000_0000 && ovs & 1 == 0,
                format_args!("PMCR_EL0.LP: a 64-bit counter carries past bit 31 without overflow ({c:#x})"),
            );
            msr!("pmcr_el0", PMCR_E);
        } else {
            report_skip("64-bit event counters: no PMUv3p5");
        }
        if mrs!("pmceid0_el0") & (1 << EV_CHAIN) != 0 && counters() >= 2 {
            set_type(1, EV_CHAIN);
            set_count(1, 0);
            set_count(0, 0xffff_ffff);
            msr!("pmcntenset_el0", 0b11);
            msr!("pmswinc_el0", 1);
            let (lo, hi) = (get_count(0), get_count(1));
            report(lo == 0 && hi == 1, format_args!("a CHAIN pair carries into the odd counter ({hi:#x}:{lo:#x})"));
        } else {
            report_skip("CHAIN pair: this PMU does not count CHAIN (PMCEID0_EL0 bit 30 clear)");
        }
        quiesce();
    }

    static IRQS: AtomicU32 = AtomicU32::new(0);
    static IRQ_INTID: AtomicU32 = AtomicU32::new(0);
    static IRQ_OVS: AtomicU64 = AtomicU64::new(0);
    static OTHER: AtomicU32 = AtomicU32::new(0);

    fn handler() {
        let Some(gic) = gic::get() else { return };
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        if iar.intid() == PMU_INTID {
            IRQ_OVS.store(mrs!("pmovsset_el0"), Ordering::SeqCst);
            // The request stays high until the flag is cleared.
            msr!("pmovsclr_el0", u64::from(u32::MAX));
            IRQ_INTID.store(iar.intid(), Ordering::SeqCst);
            IRQS.fetch_add(1, Ordering::SeqCst);
        } else {
            IRQ_INTID.store(iar.intid(), Ordering::SeqCst);
            OTHER.fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    fn gic_setup() -> Option<&'static Gic> {
        match gic::init() {
            Ok(g) => Some(g),
            Err(e) => {
                report(false, format_args!("GIC set-up: {e}"));
                None
            }
        }
    }

    fn overflow(_: &Env) {
        if !need_pmu() {
            return;
        }
        let Some(gic) = gic_setup() else { return };
        IRQS.store(0, Ordering::SeqCst);
        OTHER.store(0, Ordering::SeqCst);
        irq::set_handler(Some(handler));
        gic.enable(PMU_INTID);
        set_type(0, EV_SW_INCR);
        set_count(0, 0xffff_fffe);
        msr!("pmintenset_el1", 1);
        msr!("pmcntenset_el0", 1);
        msr!("pmcr_el0", PMCR_E);
        msr!("pmswinc_el0", 1);
        irq::wait(20, || false);
        report(IRQS.load(Ordering::SeqCst) == 0, "no interrupt before the counter overflows");
        msr!("pmswinc_el0", 1);
        let taken = irq::wait(1000, || IRQS.load(Ordering::SeqCst) > 0);
        report(taken.is_some(), "the overflow raised an interrupt");
        if taken.is_some() {
            let (intid, ovs) = (IRQ_INTID.load(Ordering::SeqCst), IRQ_OVS.load(Ordering::SeqCst));
            report(intid == PMU_INTID, format_args!("it is PPI 23 (INTID {intid})"));
            report(ovs & 1 != 0, "PMOVSSET_EL0 bit 0 was set in the handler");
        }
        irq::wait(50, || false);
        let n = IRQS.load(Ordering::SeqCst);
        report(n == 1, format_args!("taken once after the handler cleared the flag ({n})"));
        report(OTHER.load(Ordering::SeqCst) == 0, "no other interrupt was taken");
        msr!("pmcntenclr_el0", 1);
        msr!("pmswinc_el0", 1);
        gic.disable(PMU_INTID);
        irq::set_handler(None);
        quiesce();
    }

    global_asm!(
        r#"
.section .text.pmu_el0_read_pmccntr
.global pmu_el0_read_pmccntr
pmu_el0_read_pmccntr:
    mrs     x0, pmccntr_el0
    svc     #0
"#
    );

    unsafe extern "C" {
        fn pmu_el0_read_pmccntr();
    }

    fn el0(_: &Env) {
        if !need_pmu() {
            return;
        }
        let entry = pmu_el0_read_pmccntr as *const () as usize;
        const MARK: u64 = 0x5eed;
        msr!("pmuserenr_el0", 0);
        // SAFETY: the code reads one register into x0 and makes its svc.
        let (exit, e) = catch(|| unsafe { run_at_el0(entry, MARK) });
        report(
            e.is_some_and(|e| e.from_el0 && e.ec() == EC_SYSREG) && exit.x0 == MARK,
            format_args!("PMUSERENR_EL0 = 0: EL0's PMCCNTR_EL0 read traps to EL1 (EC {:#x})", e.map_or(0, |e| e.ec())),
        );
        msr!("pmccfiltr_el0", 0);
        msr!("pmcr_el0", PMCR_E | PMCR_LC | PMCR_C);
        msr!("pmcntenset_el0", CYCLE);
        spin(1000);
        msr!("pmuserenr_el0", 1 << 2);
        // SAFETY: as above.
        let (exit, e) = catch(|| unsafe { run_at_el0(entry, MARK) });
        report(e.is_none() && exit.x0 != MARK && exit.x0 != 0, "PMUSERENR_EL0.CR = 1: EL0 reads PMCCNTR_EL0");
        quiesce();
    }

    const PER_CPU_BASE: u64 = 1000;
    static PER_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

    /// This CPU counts `(cpu + 1) * 1000` SW_INCR events, waiting in WFI
    /// for a short timer now and then so that it leaves the CPU (an exit
    /// under a hypervisor, and a chance to be descheduled or moved).
    fn count_own(cpu: usize) {
        quiesce();
        set_type(0, EV_SW_INCR);
        set_count(0, 0);
        msr!("pmcntenset_el0", 1);
        msr!("pmcr_el0", PMCR_E);
        let want = (cpu as u64 + 1) * PER_CPU_BASE;
        for i in 0..want {
            msr!("pmswinc_el0", 1);
            if i % 50 == 0 {
                leave_cpu();
            }
        }
        PER_CPU[cpu % MAX_CPUS].store(get_count(0), Ordering::SeqCst);
        quiesce();
    }

    /// A read of `GICD_IIDR`: under a hypervisor an exit to its host.
    fn leave_cpu() {
        if let Some(g) = gic::get() {
            // SAFETY: GICD_IIDR of the distributor the device tree names, a
            // read-only register.
            core::hint::black_box(unsafe { ((g.gicd() + gic::GICD_IIDR) as *const u32).read_volatile() });
        }
    }

    fn percpu(env: &Env) {
        if !need_pmu() || gic_setup().is_none() {
            return;
        }
        let mut started = [false; MAX_CPUS];
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            PER_CPU[cpu].store(u64::MAX, Ordering::SeqCst);
            match smp::start(cpu, count_own) {
                Ok(()) => started[cpu] = true,
                Err(e) => {
                    report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
                }
            }
        }
        count_own(env.boot_cpu);
        for (cpu, _) in started.iter().enumerate().filter(|(_, s)| **s) {
            report(smp::wait_done(cpu, CPU_TIMEOUT_MS).is_some(), format_args!("cpu{cpu} finished"));
        }
        smp::wait_all_off(CPU_TIMEOUT_MS);
        let mut all = true;
        for cpu in 0..smp::count().min(MAX_CPUS) {
            if cpu != env.boot_cpu && !started[cpu] {
                continue;
            }
            let (got, want) = (PER_CPU[cpu].load(Ordering::SeqCst), (cpu as u64 + 1) * PER_CPU_BASE);
            if got != want {
                all = false;
                report(false, format_args!("cpu{cpu} counted {got} of its {want} SW_INCR events"));
            }
        }
        report(all, "every CPU counted exactly its own SW_INCR events");
    }
}
