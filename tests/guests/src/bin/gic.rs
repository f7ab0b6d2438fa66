//! `gic`: the interrupt controller as a guest sees it, GICv2 or GICv3.
//!
//! Sub-tests: `ipi` (SGIs to one CPU, to all but the sender and to the
//! sender, each taken exactly once where it was sent), `active` (an SGI's
//! pending and active states through acknowledge, EOI and, in EOImode 1,
//! deactivation), `dist` (distributor register semantics), `redist`
//! (GICv3 redistributors; SKIP on GICv2).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::fmt;
    use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_test_guests::gic::{self, Gic, Iar, SgiTarget, Version};
    use ferrovisor_test_guests::gic::{read32, read64, read8, write32, write64, write8};
    use ferrovisor_test_guests::{guest_main, irq, report, report_skip, rt, smp, time, Env, SubTest};

    guest_main!(
        "gic",
        &[
            SubTest { name: "ipi", run: ipi },
            SubTest { name: "active", run: active },
            SubTest { name: "dist", run: dist },
            SubTest { name: "redist", run: redist },
        ]
    );

    const CPU_TIMEOUT_MS: u64 = 2000;
    /// How long an SGI may take to arrive.
    const SGI_TIMEOUT_MS: u64 = 1000;
    /// How long to keep watching for copies of an SGI after it arrived.
    const SETTLE_MS: u64 = 20;

    fn setup() -> Option<&'static Gic> {
        match gic::init() {
            Ok(g) => Some(g),
            Err(e) => {
                report(false, format_args!("GIC set-up: {e}"));
                None
            }
        }
    }

    // ---- ipi ----

    const SGI_ONE: u32 = 1;
    const SGI_OTHERS: u32 = 2;
    const SGI_SELF: u32 = 3;
    /// Ends the receivers' wait (not counted by the checks).
    const SGI_STOP: u32 = 15;

    /// Per CPU, how often each SGI was taken.
    static TAKEN: [[AtomicU32; 16]; MAX_CPUS] = [const { [const { AtomicU32::new(0) }; 16] }; MAX_CPUS];
    /// Per CPU, the GICv2 source CPU of the last SGI.
    static SOURCE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
    /// Interrupts other than SGIs, by CPU.
    static OTHER: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
    static READY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
    static STOP: AtomicBool = AtomicBool::new(false);

    fn count_sgi() {
        let Some(gic) = gic::get() else { return };
        let cpu = rt::cpu_index() % MAX_CPUS;
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        match TAKEN[cpu].get(iar.intid() as usize) {
            Some(n) => {
                SOURCE[cpu].store(iar.source_cpu(), Ordering::SeqCst);
                n.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                OTHER[cpu].fetch_add(1, Ordering::SeqCst);
            }
        }
        gic.eoi(iar);
    }

    fn clear_counts() {
        for cpu in 0..MAX_CPUS {
            for n in &TAKEN[cpu] {
                n.store(0, Ordering::SeqCst);
            }
            SOURCE[cpu].store(u32::MAX, Ordering::SeqCst);
        }
    }

    fn taken(cpu: usize, sgi: u32) -> u32 {
        TAKEN[cpu][sgi as usize].load(Ordering::SeqCst)
    }

    /// `cpu0=1 cpu1=0 ...` for one SGI.
    struct Counts(u32);

    impl fmt::Display for Counts {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for cpu in 0..smp::count().min(MAX_CPUS) {
                write!(f, "{}cpu{cpu}={}", if cpu > 0 { " " } else { "" }, taken(cpu, self.0))?;
            }
            Ok(())
        }
    }

    fn receiver(cpu: usize) {
        let Some(gic) = gic::get() else { return };
        if let Err(e) = gic.cpu_init() {
            report(false, format_args!("cpu{cpu}: GIC set-up: {e}"));
            return;
        }
        READY[cpu].store(true, Ordering::SeqCst);
        irq::wfi_until(60_000, || STOP.load(Ordering::SeqCst));
    }

    /// Waits for `sgi` to reach every CPU of `expect` (the boot CPU taking
    /// IRQs in windows meanwhile), then for stray copies; checks each CPU's
    /// count: 1 on `expect`, 0 elsewhere.
    fn check_arrivals(what: fmt::Arguments, sgi: u32, expect: &[bool; MAX_CPUS]) -> bool {
        let n = smp::count().min(MAX_CPUS);
        let arrived = irq::wait(SGI_TIMEOUT_MS, || (0..n).all(|c| !expect[c] || taken(c, sgi) > 0));
        irq::wait(SETTLE_MS, || false);
        let exact = (0..n).all(|c| taken(c, sgi) == u32::from(expect[c]));
        report(
            arrived.is_some() && exact,
            format_args!("{what}: SGI {sgi} taken once by each target, by no other CPU ({})", Counts(sgi)),
        )
    }

    fn ipi(env: &Env) {
        let Some(gic) = setup() else { return };
        let boot = env.boot_cpu;
        let n = smp::count().min(MAX_CPUS);
        clear_counts();
        STOP.store(false, Ordering::SeqCst);
        for r in &READY {
            r.store(false, Ordering::SeqCst);
        }
        irq::set_handler(Some(count_sgi));
        let mut started = [false; MAX_CPUS];
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            match smp::start(cpu, receiver) {
                Ok(()) => started[cpu] = true,
                Err(e) => {
                    report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
                }
            }
        }
        let ready = |c: usize| READY[c].load(Ordering::SeqCst);
        if n > 1 {
            let all = time::wait_for(CPU_TIMEOUT_MS, || smp::secondaries().all(ready));
            report(all.is_some(), format_args!("every secondary CPU set up its GIC within {CPU_TIMEOUT_MS} ms"));
        }
        let receivers: [bool; MAX_CPUS] = core::array::from_fn(|c| c != boot && c < n && ready(c));
        let boot_id = gic.cpu_mask(boot).trailing_zeros();

        for target in (0..n).filter(|&c| receivers[c]) {
            clear_counts();
            gic.send_sgi(SGI_ONE, SgiTarget::Cpu(target));
            let mut expect = [false; MAX_CPUS];
            expect[target] = true;
            check_arrivals(format_args!("to cpu{target}"), SGI_ONE, &expect);
            if gic.version() == Version::V2 {
                let source = SOURCE[target].load(Ordering::SeqCst);
                report(
                    source == boot_id,
                    format_args!("to cpu{target}: GICC_IAR.CPUID {source} is the sender's interface {boot_id}"),
                );
            }
        }
        if receivers.iter().any(|&r| r) {
            clear_counts();
            gic.send_sgi(SGI_OTHERS, SgiTarget::Others);
            let how = match gic.version() {
                Version::V2 => "TargetListFilter 1",
                Version::V3 => "IRM 1",
            };
            check_arrivals(format_args!("to all but self ({how})"), SGI_OTHERS, &receivers);
        } else {
            report_skip("one CPU: no SGI to another CPU");
        }

        clear_counts();
        gic.send_sgi(SGI_SELF, SgiTarget::Myself);
        let mut expect = [false; MAX_CPUS];
        expect[boot] = true;
        check_arrivals(format_args!("to self"), SGI_SELF, &expect);
        if gic.version() == Version::V2 {
            let source = SOURCE[boot].load(Ordering::SeqCst);
            report(source == boot_id, format_args!("to self: GICC_IAR.CPUID {source} is the sender's {boot_id}"));
        }
        let other: u32 = OTHER.iter().map(|o| o.load(Ordering::SeqCst)).sum();
        report(other == 0, format_args!("no interrupt but the SGIs was taken ({other})"));

        STOP.store(true, Ordering::SeqCst);
        if receivers.iter().any(|&r| r) {
            gic.send_sgi(SGI_STOP, SgiTarget::Others);
        }
        for cpu in (0..n).filter(|&c| started[c]) {
            if smp::wait_done(cpu, CPU_TIMEOUT_MS).is_none() {
                report(false, format_args!("cpu{cpu} did not end its wait after the stop SGI"));
            }
        }
        smp::wait_all_off(CPU_TIMEOUT_MS);
        irq::set_handler(None);
    }

    // ---- active ----

    const SGI_ACTIVE: u32 = 5;
    const ACK_TIMEOUT_MS: u64 = 100;

    /// Reads `IAR` until it gives something other than a spurious INTID.
    fn ack_within(gic: &Gic, ms: u64) -> Option<Iar> {
        let mut got = None;
        time::wait_for(ms, || {
            let iar = gic.ack();
            got = (!iar.is_spurious()).then_some(iar);
            got.is_some()
        });
        got
    }

    fn send_and_wait_pending(gic: &Gic, sgi: u32) -> bool {
        gic.send_sgi(sgi, SgiTarget::Myself);
        time::wait_for(ACK_TIMEOUT_MS, || gic.is_pending(sgi)).is_some()
    }

    /// A second `IAR` read while `sgi` is active must not return it again.
    fn check_not_acked_again(gic: &Gic, what: &str) {
        let again = gic.ack();
        report(again.is_spurious(), format_args!("{what}: IAR reads {} (spurious), not the SGI again", again.intid()));
        if !again.is_spurious() {
            gic.eoi(again);
            if gic.eoi_mode_split() {
                gic.dir(again);
            }
        }
    }

    fn states(gic: &Gic, sgi: u32) -> (bool, bool) {
        (gic.is_pending(sgi), gic.is_active(sgi))
    }

    fn active(_: &Env) {
        let Some(gic) = setup() else { return };
        let sgi = SGI_ACTIVE;
        // Everything below runs with PSTATE.I set: the CPU interface signals
        // the SGI, and the test acknowledges it by reading IAR itself.
        report(send_and_wait_pending(gic, sgi), format_args!("a self-SGI {sgi} becomes pending"));
        let Some(first) = ack_within(gic, ACK_TIMEOUT_MS) else {
            report(false, format_args!("SGI {sgi} could not be acknowledged within {ACK_TIMEOUT_MS} ms"));
            return;
        };
        report(first.intid() == sgi, format_args!("IAR returns INTID {} (want {sgi})", first.intid()));
        let (p, a) = states(gic, sgi);
        report(a && !p, format_args!("acknowledged: active and not pending (pending {p}, active {a})"));
        report(
            gic.running_priority() == u32::from(gic::DEFAULT_PRIORITY),
            format_args!("running priority {:#x} is the SGI's", gic.running_priority()),
        );
        let again = send_and_wait_pending(gic, sgi);
        let (p, a) = states(gic, sgi);
        report(again && p && a, format_args!("sent again while active: pending and active (pending {p}, active {a})"));
        check_not_acked_again(gic, "active and pending");
        gic.eoi(first);
        let (p, a) = states(gic, sgi);
        report(!a && p, format_args!("EOImode 0: EOIR deactivates it, still pending (pending {p}, active {a})"));
        match ack_within(gic, ACK_TIMEOUT_MS) {
            Some(second) => {
                report(
                    second.intid() == sgi,
                    format_args!("after the EOI it is taken again (INTID {})", second.intid()),
                );
                gic.eoi(second);
            }
            None => {
                report(false, "after the EOI it is not taken again");
            }
        }
        let (p, a) = states(gic, sgi);
        report(!a && !p, format_args!("after the second EOI: idle (pending {p}, active {a})"));

        gic.set_eoi_mode(true);
        let reg = match gic.version() {
            Version::V2 => "GICC_CTLR.EOImodeNS",
            Version::V3 => "ICC_CTLR_EL1.EOImode",
        };
        report(gic.eoi_mode_split(), format_args!("{reg} reads back 1"));
        send_and_wait_pending(gic, sgi);
        let Some(first) = ack_within(gic, ACK_TIMEOUT_MS) else {
            report(false, format_args!("EOImode 1: SGI {sgi} could not be acknowledged"));
            gic.set_eoi_mode(false);
            return;
        };
        report(first.intid() == sgi, format_args!("EOImode 1: IAR returns INTID {}", first.intid()));
        gic.eoi(first);
        let (p, a) = states(gic, sgi);
        report(a && !p, format_args!("EOImode 1: after EOIR still active (pending {p}, active {a})"));
        report(
            gic.running_priority() == 0xff,
            format_args!("EOImode 1: EOIR dropped the running priority to idle ({:#x})", gic.running_priority()),
        );
        let again = send_and_wait_pending(gic, sgi);
        let (p, a) = states(gic, sgi);
        report(again && p && a, format_args!("EOImode 1: sent again: pending and active (pending {p}, active {a})"));
        check_not_acked_again(gic, "EOImode 1, active and pending");
        gic.dir(first);
        let (p, a) = states(gic, sgi);
        report(!a && p, format_args!("EOImode 1: DIR deactivates it, still pending (pending {p}, active {a})"));
        match ack_within(gic, ACK_TIMEOUT_MS) {
            Some(second) => {
                report(
                    second.intid() == sgi,
                    format_args!("EOImode 1: after DIR it is taken again (INTID {})", second.intid()),
                );
                gic.eoi(second);
                report(gic.is_active(sgi), "EOImode 1: the second one is active until its DIR");
                gic.dir(second);
            }
            None => {
                report(false, "EOImode 1: after DIR it is not taken again");
            }
        }
        let (p, a) = states(gic, sgi);
        report(!a && !p, format_args!("EOImode 1: after the second DIR: idle (pending {p}, active {a})"));
        gic.set_eoi_mode(false);
        report(!gic.eoi_mode_split(), format_args!("{reg} reads back 0 again"));
    }

    // ---- dist ----

    /// Per CPU, what [`itargets_private`] read there.
    static PRIVATE_TARGETS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

    /// The byte every `ITARGETSR0-7` field reads as on this CPU, or `u32::MAX` when they differ.
    fn itargets_private(gic: &Gic) -> u32 {
        let first = read8(gic.gicd() + gic::GICD_ITARGETSR);
        let same = (0..8).all(|w| read32(gic.gicd() + gic::GICD_ITARGETSR + 4 * w) == u32::from(first) * 0x0101_0101);
        if same {
            u32::from(first)
        } else {
            u32::MAX
        }
    }

    fn record_private_targets(cpu: usize) {
        if let Some(gic) = gic::get() {
            PRIVATE_TARGETS[cpu].store(itargets_private(gic), Ordering::SeqCst);
        }
    }

    fn bit_round_trip(gic: &Gic, set: usize, clear: usize, intid: u32, name: &str) {
        let (s, bit) = gic::bit_reg(gic.gicd() + set, intid);
        let (c, _) = gic::bit_reg(gic.gicd() + clear, intid);
        write32(s, bit);
        gic.wait_dist().ok();
        let on = (read32(s) & bit != 0, read32(c) & bit != 0);
        write32(s, 0);
        let kept = read32(s) & bit != 0;
        write32(c, bit);
        gic.wait_dist().ok();
        let off = (read32(s) & bit != 0, read32(c) & bit != 0);
        report(
            on == (true, true) && kept && off == (false, false),
            format_args!(
                "{name} INTID {intid}: set reads 1 in both (set {}, clear {}), a 0 write changes nothing, clear reads 0 in both (set {}, clear {})",
                on.0, on.1, off.0, off.1
            ),
        );
    }

    fn dist(env: &Env) {
        let Some(gic) = setup() else { return };
        let d = gic.gicd();
        let cpus = smp::count();
        let v3 = gic.version() == Version::V3;

        let ctlr = read32(d + gic::GICD_CTLR);
        if v3 {
            report(ctlr & gic::GICD_CTLR_ARE != 0, format_args!("GICD_CTLR.ARE is set ({ctlr:#x})"));
            report(ctlr & gic::GICD_CTLR_RWP == 0, format_args!("GICD_CTLR.RWP is clear ({ctlr:#x})"));
            report(ctlr & gic::GICD_CTLR_ENABLE_GRP1 != 0, format_args!("GICD_CTLR Group 1 is enabled ({ctlr:#x})"));
        } else {
            report(ctlr & gic::GICD_CTLR_ENABLE_GRP0 != 0, format_args!("GICD_CTLR.Enable reads back 1 ({ctlr:#x})"));
        }

        let typer = read32(d + gic::GICD_TYPER);
        let lines = typer & 0x1f;
        let max = gic.max_intid();
        report(lines >= 1, format_args!("GICD_TYPER.ITLinesNumber {lines}: SPIs 32-{max}"));
        let cpu_number = (typer >> 5) & 7;
        let want = cpus.clamp(1, 8) as u32 - 1;
        if v3 {
            // It counts the PEs usable without affinity routing: 0 (QEMU) or
            // the count (KVM) are both right with ARE set.
            report(
                cpu_number == 0 || cpu_number == want,
                format_args!("GICD_TYPER.CPUNumber {cpu_number} for {cpus} CPUs in the device tree (want 0 or {want})"),
            );
        } else {
            report(
                cpu_number == want,
                format_args!("GICD_TYPER.CPUNumber {cpu_number} for {cpus} CPUs in the device tree (want {want})"),
            );
        }
        if v3 {
            let id_bits = ((typer >> 19) & 0x1f) + 1;
            report(id_bits >= 10, format_args!("GICD_TYPER.IDbits: {id_bits} INTID bits (at least 10)"));
        }
        write32(d + gic::GICD_TYPER, !typer);
        let after = read32(d + gic::GICD_TYPER);
        report(after == typer, format_args!("GICD_TYPER is read-only ({typer:#x}, after a write {after:#x})"));

        let iidr = read32(d + gic::GICD_IIDR);
        report(iidr != 0, format_args!("GICD_IIDR {iidr:#x} is not zero"));
        let (pidr2_at, arch) = if v3 { (gic::GICD_PIDR2_V3, 3) } else { (gic::GICD_PIDR2_V2, 2) };
        let pidr2 = read32(d + pidr2_at);
        report((pidr2 >> 4) & 0xf == arch, format_args!("GICD_PIDR2.ArchRev {} (want {arch})", (pidr2 >> 4) & 0xf));
        let reserved = read32(d + gic::GICD_RESERVED);
        write32(d + gic::GICD_RESERVED, u32::MAX);
        let reserved_after = read32(d + gic::GICD_RESERVED);
        report(
            reserved == 0 && reserved_after == 0,
            format_args!("reserved GICD+{:#x} is RAZ/WI ({reserved:#x}, {reserved_after:#x})", gic::GICD_RESERVED),
        );

        // The last SPI: no device of QEMU virt's map (nor of ours) uses it.
        let spi = max;
        if v3 {
            let (g, bit) = gic::bit_reg(d + gic::GICD_IGROUPR, spi);
            let before = read32(g);
            write32(g, before & !bit);
            let zero = read32(g);
            write32(g, before | bit);
            let one = read32(g);
            report(
                zero & bit == 0 && one & bit != 0 && (zero ^ one) == bit,
                format_args!("GICD_IGROUPR INTID {spi}: 0 and 1 read back, other bits kept ({zero:#x}, {one:#x})"),
            );
        }
        bit_round_trip(gic, gic::GICD_ISENABLER, gic::GICD_ICENABLER, spi, "GICD_ISENABLER/ICENABLER");
        bit_round_trip(gic, gic::GICD_ISPENDR, gic::GICD_ICPENDR, spi, "GICD_ISPENDR/ICPENDR");

        let prio = d + gic::GICD_IPRIORITYR + spi as usize;
        let neighbour = prio - 1;
        let neighbour_before = read8(neighbour);
        write8(prio, 0xff);
        let mask = read8(prio);
        write8(prio, 0);
        let zero = read8(prio);
        let neighbour_after = read8(neighbour);
        write8(prio, gic::DEFAULT_PRIORITY);
        let restored = read8(prio);
        match gic::priority_bits(mask) {
            Some(bits) => report(true, format_args!("GICD_IPRIORITYR INTID {spi}: 0xff reads {mask:#x} ({bits} bits)")),
            None => report(false, format_args!("GICD_IPRIORITYR INTID {spi}: 0xff reads {mask:#x}: not 4-8 top bits")),
        };
        report(
            zero == 0 && restored == gic::DEFAULT_PRIORITY & mask && neighbour_after == neighbour_before,
            format_args!(
                "GICD_IPRIORITYR byte writes: 0 reads {zero:#x}, {:#x} reads {restored:#x}, the next byte stays {neighbour_before:#x} ({neighbour_after:#x})",
                gic::DEFAULT_PRIORITY
            ),
        );

        // SGIs are edge-triggered and their configuration is read-only.
        let icfgr0 = if v3 { gic.private_base() + gic::GICR_ICFGR0 } else { d + gic::GICD_ICFGR };
        let name = if v3 { "GICR_ICFGR0" } else { "GICD_ICFGR0" };
        let before = read32(icfgr0);
        write32(icfgr0, 0);
        let after = read32(icfgr0);
        report(
            before == 0xaaaa_aaaa && after == before,
            format_args!("{name} (SGIs) reads {before:#x} (edge), and {after:#x} after a write of 0"),
        );

        if v3 {
            let irouter = d + gic::GICD_IROUTER + 8 * spi as usize;
            let boot_mpidr = rt::mpidr();
            let other = smp::mpidr_of(cpus.saturating_sub(1)).unwrap_or(boot_mpidr);
            write64(irouter, other);
            let got_other = read64(irouter);
            write64(irouter, gic::GICD_IROUTER_IRM);
            let got_irm = read64(irouter);
            write64(irouter, boot_mpidr);
            let got_boot = read64(irouter);
            report(
                got_other == other && got_irm == gic::GICD_IROUTER_IRM && got_boot == boot_mpidr,
                format_args!(
                    "GICD_IROUTER INTID {spi}: {other:#x}, IRM and {boot_mpidr:#x} read back ({got_other:#x}, {got_irm:#x}, {got_boot:#x})"
                ),
            );
        } else {
            dist_v2_targets(env, gic, spi);
        }
    }

    fn dist_v2_targets(env: &Env, gic: &Gic, spi: u32) {
        let cpus = smp::count().min(MAX_CPUS);
        for p in &PRIVATE_TARGETS {
            p.store(u32::MAX, Ordering::SeqCst);
        }
        record_private_targets(env.boot_cpu);
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            if let Err(e) = smp::start(cpu, record_private_targets) {
                report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
            }
        }
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            smp::wait_done(cpu, CPU_TIMEOUT_MS);
        }
        smp::wait_all_off(CPU_TIMEOUT_MS);
        let mut seen = 0u32;
        for (cpu, slot) in PRIVATE_TARGETS.iter().enumerate().take(cpus) {
            let t = slot.load(Ordering::SeqCst);
            if cpus == 1 {
                report(t == 0, format_args!("uniprocessor: GICD_ITARGETSR0-7 are RAZ ({t:#x})"));
                continue;
            }
            let one_bit = t != u32::MAX && t.count_ones() == 1 && seen & t == 0;
            seen |= if t == u32::MAX { 0 } else { t };
            report(
                one_bit,
                format_args!("cpu{cpu}: every GICD_ITARGETSR0-7 field reads its own CPU interface bit ({t:#x})"),
            );
        }
        let target = gic.gicd() + gic::GICD_ITARGETSR + spi as usize;
        let boot = read8(target);
        let other = if cpus > 1 { 1u8 << (cpus - 1) } else { 0 };
        write8(target, other);
        let got = read8(target);
        write8(target, boot);
        let back = read8(target);
        report(
            got == other && back == boot,
            format_args!("GICD_ITARGETSR INTID {spi}: {other:#x} and {boot:#x} read back ({got:#x}, {back:#x})"),
        );
    }

    // ---- redist ----

    fn redist(_: &Env) {
        let Some(gic) = setup() else { return };
        if gic.version() != Version::V3 {
            report_skip("GICv2 has no redistributors");
            return;
        }
        let cpus = smp::count();
        let mut frames = [(0usize, gic::RedistTyper(0)); 2 * MAX_CPUS];
        let mut found = 0;
        for f in gic.redistributors() {
            if found == frames.len() {
                break;
            }
            frames[found] = f;
            found += 1;
        }
        let frames = &frames[..found];
        let ends_with_last = frames.last().is_some_and(|f| f.1.last());
        report(
            ends_with_last && frames.len() == cpus,
            format_args!(
                "GICR_TYPER.Last is set on redistributor {} only, after {} frames, one per CPU ({cpus})",
                found.saturating_sub(1),
                frames.len()
            ),
        );
        for (cpu, c) in rt::env().board.cpus().iter().enumerate() {
            let matching =
                frames.iter().filter(|f| f.1.mpidr() == c.mpidr & ferrovisor_test_guests::cpus::MPIDR_AFFINITY_MASK);
            let n = matching.clone().count();
            report(n == 1, format_args!("cpu{cpu}: {n} redistributor(s) with affinity {:#x}", c.mpidr));
        }
        let mut numbers = 0u64;
        let mut unique = true;
        for f in frames {
            let p = f.1.processor_number();
            unique &= (p as usize) < cpus && p < 64 && numbers & (1 << p) == 0;
            numbers |= 1u64.checked_shl(p).unwrap_or(0);
        }
        report(unique, format_args!("GICR_TYPER.Processor_Number: distinct and below {cpus} ({numbers:#b})"));

        let rd = gic.redist();
        let pidr2 = read32(rd + gic::GICR_PIDR2);
        report((pidr2 >> 4) & 0xf == 3, format_args!("GICR_PIDR2.ArchRev {} (want 3)", (pidr2 >> 4) & 0xf));

        let waker = rd + gic::GICR_WAKER;
        let awake = read32(waker);
        let asleep_bits = gic::GICR_WAKER_PROCESSOR_SLEEP | gic::GICR_WAKER_CHILDREN_ASLEEP;
        report(
            awake & asleep_bits == 0,
            format_args!("GICR_WAKER after set-up: ProcessorSleep and ChildrenAsleep clear ({awake:#x})"),
        );
        write32(waker, awake | gic::GICR_WAKER_PROCESSOR_SLEEP);
        let slept = time::wait_for(100, || read32(waker) & gic::GICR_WAKER_CHILDREN_ASLEEP != 0).is_some();
        let asleep = read32(waker);
        write32(waker, awake & !gic::GICR_WAKER_PROCESSOR_SLEEP);
        let woke = time::wait_for(100, || read32(waker) & gic::GICR_WAKER_CHILDREN_ASLEEP == 0).is_some();
        report(
            slept && woke,
            format_args!(
                "GICR_WAKER: ProcessorSleep sets ChildrenAsleep ({asleep:#x}), clearing it clears it ({:#x})",
                read32(waker)
            ),
        );

        sgi_enable(gic);
    }

    /// The SGI frame's `ISENABLER0`/`ICENABLER0` for SGIs: enabled by set-up;
    /// a disabled SGI stays pending and is not acknowledged until enabled
    /// (unless this GIC keeps SGIs always enabled, which it may).
    fn sgi_enable(gic: &Gic) {
        let sgi_base = gic.private_base();
        let isenabler = sgi_base + gic::GICR_ISENABLER0;
        let icenabler = sgi_base + gic::GICR_ICENABLER0;
        let on = read32(isenabler);
        report(
            on & 0xffff == 0xffff && read32(icenabler) == on,
            format_args!("GICR_ISENABLER0: SGIs 0-15 enabled, ICENABLER0 reads the same ({on:#x})"),
        );
        let sgi = 6;
        gic.disable(sgi);
        let off = read32(isenabler);
        if off & (1 << sgi) != 0 {
            report(
                read32(icenabler) == off,
                format_args!("SGI {sgi} stays enabled (SGIs always enabled here): ICENABLER0 agrees ({off:#x})"),
            );
            return;
        }
        report(
            read32(icenabler) == off && off == on & !(1 << sgi),
            format_args!("GICR_ICENABLER0 disables SGI {sgi} alone ({off:#x})"),
        );
        gic.send_sgi(sgi, SgiTarget::Myself);
        let pending = time::wait_for(ACK_TIMEOUT_MS, || gic.is_pending(sgi)).is_some();
        let iar = gic.ack();
        report(
            pending && iar.is_spurious(),
            format_args!("disabled SGI {sgi}: pending, not acknowledged (IAR {})", iar.intid()),
        );
        if !iar.is_spurious() {
            gic.eoi(iar);
        }
        gic.enable(sgi);
        match ack_within(gic, ACK_TIMEOUT_MS) {
            Some(iar) => {
                report(iar.intid() == sgi, format_args!("enabled again: SGI {sgi} is acknowledged ({})", iar.intid()));
                gic.eoi(iar);
            }
            None => {
                report(false, format_args!("enabled again: SGI {sgi} is not acknowledged"));
            }
        }
        report(!gic.is_pending(sgi) && !gic.is_active(sgi), format_args!("SGI {sgi} idle at the end"));
    }
}
