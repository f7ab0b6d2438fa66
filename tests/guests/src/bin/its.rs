//! `its`: the GICv3 Interrupt Translation Service as a guest sees it.
//!
//! Sub-tests: `introspection` (the ITS's registers and tables as the
//! architecture describes them, LPI support in the distributor and the
//! redistributors), `trigger` (collections on every CPU, `INT` delivers each
//! LPI to its collection's CPU only, `INV` after a priority and after an
//! enable change, `CLEAR`, `MOVI`, `DISCARD`), `doorbell` (4 CPUs: an `INT`
//! for an event mapped to a secondary's collection wakes that CPU from `WFI`,
//! once, within 1 s: under a hypervisor with GICv4 the vCPU in `WFI` is not
//! resident, so its vPE's doorbell is what wakes it), `flood` (one CPU:
//! 140 devices with 512 translations each, 71,680 in all, more than the
//! host's whole interrupt-state budget; the ITS reads every command and the
//! first translation still delivers), `steady` (one CPU: for 6 s, rounds
//! of MAPD, MAPTI and INT of 8 events, every LPI taken once: run beside a
//! VM doing `flood`, its LPIs must keep arriving). `flood` and `steady` run
//! only when named in the bootargs. Without an ITS in the device tree
//! (GICv2, or a GICv3 without one) every sub-test is a SKIP.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::fmt;
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_test_guests::cpus::ticks_to_us;
    use ferrovisor_test_guests::gic::{self, read32, read64, write32, write64, Version};
    use ferrovisor_test_guests::its::{self, BaserType, Command, ItsError};
    use ferrovisor_test_guests::{guest_main, irq, report, report_info, report_skip, rt, smp, time, Env, SubTest};

    guest_main!(
        "its",
        &[
            SubTest { name: "introspection", run: introspection },
            SubTest { name: "trigger", run: trigger },
            SubTest { name: "doorbell", run: wake },
            SubTest { name: "flood", run: flood },
            SubTest { name: "steady", run: steady },
        ]
    );

    const CPU_TIMEOUT_MS: u64 = 2000;
    /// How long an LPI may take to arrive.
    const LPI_TIMEOUT_MS: u64 = 1000;
    /// How long to watch for an LPI that must not come, or for extra copies.
    const SETTLE_MS: u64 = 50;

    /// The GIC, or a SKIP when there is no ITS to test.
    fn its_base() -> Option<usize> {
        let gic = match gic::init() {
            Ok(g) => g,
            Err(e) => {
                report(false, format_args!("GIC set-up: {e}"));
                return None;
            }
        };
        match (gic.version(), its::base()) {
            (Version::V3, Some(b)) => Some(b),
            (Version::V3, None) => {
                report_skip("no ITS (arm,gic-v3-its) under the GICv3 node");
                None
            }
            (Version::V2, _) => {
                report_skip("GICv2: no ITS");
                None
            }
        }
    }

    // ---- introspection ----

    fn introspection(_: &Env) {
        let Some(base) = its_base() else { return };
        let Some(gic) = gic::get() else { return };

        let gicd_typer = read32(gic.gicd() + gic::GICD_TYPER);
        let id_bits = its::gicd_id_bits(gicd_typer);
        report(
            gicd_typer & its::GICD_TYPER_LPIS != 0 && id_bits >= its::LPI_ID_BITS,
            format_args!("GICD_TYPER.LPIS set, IDbits {id_bits} (at least 14) ({gicd_typer:#x})"),
        );
        let mut plpis = 0;
        let mut frames = 0;
        for (_, t) in gic.redistributors() {
            frames += 1;
            plpis += usize::from(t.0 & its::GICR_TYPER_PLPIS != 0);
        }
        report(
            frames == smp::count() && plpis == frames,
            format_args!("GICR_TYPER.PLPIS set on {plpis} of {frames} redistributors ({} CPUs)", smp::count()),
        );

        let typer = its::ItsTyper::from_bits(read64(base + its::GITS_TYPER));
        report(typer.physical, format_args!("GITS_TYPER.Physical is set ({:#x})", typer.raw));
        let ite = typer.itt_entry_size;
        report((2..=16).contains(&ite), format_args!("GITS_TYPER.ITT_entry_size: {ite} bytes per ITE"));
        let events = typer.id_bits;
        report(events >= 2, format_args!("GITS_TYPER.ID_bits: {events} EventID bits"));
        let devices = typer.dev_bits;
        report(devices >= 2, format_args!("GITS_TYPER.Devbits: {devices} DeviceID bits"));
        report_info(format_args!(
            "GITS_TYPER.PTA {} (collections name redistributors by {}), HCC {}, {} collection ID bits",
            u8::from(typer.pta),
            if typer.pta { "address" } else { "processor number" },
            typer.hcc,
            typer.cid_bits
        ));
        write64(base + its::GITS_TYPER, !typer.raw);
        let after = read64(base + its::GITS_TYPER);
        report(
            after == typer.raw,
            format_args!("GITS_TYPER is read-only ({:#x}, after a write {after:#x})", typer.raw),
        );

        let iidr = read32(base + its::GITS_IIDR);
        write32(base + its::GITS_IIDR, !iidr);
        let iidr_after = read32(base + its::GITS_IIDR);
        report(
            iidr != 0 && iidr_after == iidr,
            format_args!("GITS_IIDR {iidr:#x}: not zero, read-only ({iidr_after:#x} after a write)"),
        );
        let arch = (read32(base + its::GITS_PIDR2) >> 4) & 0xf;
        report(arch == 3 || arch == 4, format_args!("GITS_PIDR2.ArchRev {arch} (want 3 or 4)"));

        let mut device = 0;
        let mut collection = 0;
        let mut sizes_ok = true;
        for n in 0..8 {
            let b = read64(base + its::gits_baser(n));
            let ty = BaserType::from_baser(b);
            match ty {
                BaserType::Devices => device += 1,
                BaserType::Collections => collection += 1,
                _ => {}
            }
            if ty != BaserType::Unimplemented {
                let entry_size = its::baser_entry_size(b);
                sizes_ok &= entry_size >= 2;
                report_info(format_args!("GITS_BASER{n}: {ty:?}, {entry_size} bytes per entry ({b:#x})"));
            }
        }
        report(
            device == 1 && collection == 1 && sizes_ok,
            format_args!(
                "GITS_BASER<n>: one Device table ({device}), one Collection table ({collection}), entries of 2 bytes or more"
            ),
        );
        let ctlr = read32(base + its::GITS_CTLR);
        if ctlr & its::CTLR_ENABLED == 0 {
            report(ctlr & its::CTLR_QUIESCENT != 0, format_args!("GITS_CTLR: disabled and quiescent ({ctlr:#x})"));
            baser_page_sizes(base);
        } else {
            report_info(format_args!("GITS_CTLR {ctlr:#x}: already enabled"));
            report_skip("GITS_BASER<n>.Page_Size: the ITS is enabled, its tables are not ours to rewrite");
        }
    }

    /// The device and collection tables' `GITS_BASER<n>.Page_Size` reads
    /// 64 KiB at reset (as on KVM and QEMU, and as third-party guests
    /// expect), and each of 4, 16 and 64 KiB written (Valid clear, on a
    /// disabled ITS) reads back, unless the field is read-only. The register
    /// is restored afterwards.
    fn baser_page_sizes(base: usize) {
        const PAGE_SIZE: u64 = 3 << its::BASER_PAGE_SIZE_SHIFT;
        for n in 0..its::GITS_BASER_COUNT {
            let reg = base + its::gits_baser(n);
            let reset = read64(reg);
            let ty = BaserType::from_baser(reset);
            if !matches!(ty, BaserType::Devices | BaserType::Collections) {
                continue;
            }
            let page = its::PageSize::from_baser(reset);
            report(
                page == Some(its::PageSize::Size64K),
                format_args!("GITS_BASER{n} ({}) Page_Size at reset: {page:?}, want 64 KiB ({reset:#x})", ty.name()),
            );
            let mut kept = [None; 3];
            for (i, enc) in [0u64, 1, 2].into_iter().enumerate() {
                let value = (reset & !(PAGE_SIZE | its::BASER_VALID)) | enc << its::BASER_PAGE_SIZE_SHIFT;
                write64(reg, value);
                kept[i] = its::PageSize::from_baser(read64(reg));
            }
            write64(reg, reset);
            let restored = read64(reg);
            // An ITS that supports one page size only may make the field
            // read-only (IHI 0069, GITS_BASER<n>.Page_Size): KVM's is, at
            // 64 KiB; QEMU's and Ferrovisor's take all three.
            let all = [Some(its::PageSize::Size4K), Some(its::PageSize::Size16K), Some(its::PageSize::Size64K)];
            report(
                kept == all || kept == [page; 3],
                format_args!(
                    "GITS_BASER{n} ({}) Page_Size 4K/16K/64K written: read back as written, or read-only ({kept:?})",
                    ty.name()
                ),
            );
            report(
                restored == reset,
                format_args!("GITS_BASER{n} restored to its reset value ({restored:#x}, was {reset:#x})"),
            );
        }
    }

    // ---- flood and steady: a VM past its share beside one within it ----

    /// Devices `FLOOD_FIRST..FLOOD_FIRST + FLOOD_DEVICES`, each with every
    /// event its ITT slot has room for (512 on QEMU's and Ferrovisor's ITS:
    /// 71,680 translations, more than the 65,536 entries of state a
    /// hypervisor with 1 GiB would keep for all VMs together).
    const FLOOD_FIRST: u32 = 16;
    const FLOOD_DEVICES: u32 = 140;
    const STEADY_DEVICE: u32 = 3;
    const STEADY_EVENTS: u32 = 8;
    const STEADY_MS: u64 = 6000;

    /// Whether `name` is the sub-test the bootargs ask for: `flood` and
    /// `steady` are for the two-VM test only.
    fn named(env: &Env, name: &str) -> bool {
        let asked = env.args.subtest() == Some(name);
        if !asked {
            report_info(format_args!("`{name}` runs only when named in the bootargs"));
        }
        asked
    }

    /// The GIC on this CPU, the ITS, LPI counting, and collection 0 on this
    /// CPU; its redistributor's RDbase.
    fn one_cpu_its(env: &Env) -> Option<(&'static its::Its, u64)> {
        its_base()?;
        let gic = gic::get()?;
        if let Err(e) = gic.cpu_init() {
            report(false, format_args!("GIC set-up: {e}"));
            return None;
        }
        let its = match its::init() {
            Ok(i) => i,
            Err(e) => {
                report(false, format_args!("ITS set-up: {e}"));
                return None;
            }
        };
        let rd = its.rdbase(env.boot_cpu)?;
        clear_counts();
        irq::set_handler(Some(count_lpi));
        sent("MAPC of collection 0", its.send(Command::mapc(0, rd, true))).then_some((its, rd))
    }

    fn flood(env: &Env) {
        if !named(env, "flood") {
            return;
        }
        let Some((its, rd)) = one_cpu_its(env) else { return };
        let bits = its.itt_event_bits();
        let events = 1u32 << bits;
        // Event 0 of the first device is LPI_BASE, enabled; the rest name
        // disabled LPIs, over and over (they are never sent).
        its.set_lpi_property(its::LPI_BASE, gic::DEFAULT_PRIORITY, true);
        let spare = its::LPI_COUNT - 64;
        let start = time::counter();
        let mut batch = [Command::sync(0); its::Its::BATCH];
        let mut k = 0;
        let mut mapped = 0u64;
        for d in 0..FLOOD_DEVICES {
            let device = FLOOD_FIRST + d;
            // The ITS keeps ITEs in the ITT's memory (QEMU's does): the
            // first device has an ITT slot of its own, the others share the
            // rest, overwriting each other's entries.
            let slot = if d == 0 { 0 } else { 1 + d as usize % (its::ITT_SLOTS - 1) };
            let mut cmds =
                core::iter::once(Command::mapd(device, its.itt(slot), bits, true)).chain((0..events).map(|e| {
                    let n = d * events + e;
                    let intid = if n == 0 { its::LPI_BASE } else { its::LPI_BASE + 64 + n % spare };
                    Command::mapti(device, e, intid, 0)
                }));
            for cmd in cmds.by_ref() {
                batch[k] = cmd;
                k += 1;
                if k == batch.len() {
                    if !sent("a batch of MAPD and MAPTI", its.send_batch(&batch)) {
                        return;
                    }
                    k = 0;
                }
            }
            mapped += u64::from(events);
        }
        if !sent("the last MAPTIs and SYNC", its.send_batch(&batch[..k]).and_then(|()| its.send(Command::sync(rd)))) {
            return;
        }
        report(
            true,
            format_args!(
                "MAPD of {FLOOD_DEVICES} devices and MAPTI of {mapped} events: the ITS read every command ({} ms)",
                time::us_since(start) / 1000
            ),
        );
        // The first translation made is within any share: it still delivers.
        if !sent("INV, INT", its.send_all(&[Command::inv(FLOOD_FIRST, 0), Command::int(FLOOD_FIRST, 0)])) {
            return;
        }
        report(
            arrives(0, Some(env.boot_cpu)),
            format_args!("after the flood, INT of the first event: LPI {} taken once ({})", its::LPI_BASE, Counts(0)),
        );
        irq::set_handler(None);
    }

    fn steady(env: &Env) {
        if !named(env, "steady") {
            return;
        }
        let Some((its, rd)) = one_cpu_its(env) else { return };
        let bits = its.itt_event_bits();
        let boot = env.boot_cpu;
        let start = time::counter();
        let mut rounds = 0;
        while time::us_since(start) < STEADY_MS * 1000 {
            // MAPD again each round: the device's translations are made anew.
            let mut cmds = [Command::sync(rd); STEADY_EVENTS as usize + 3];
            cmds[0] = Command::mapd(STEADY_DEVICE, its.itt(0), bits, true);
            for e in 0..STEADY_EVENTS {
                its.set_lpi_property(its::LPI_BASE + e, gic::DEFAULT_PRIORITY, true);
                cmds[1 + e as usize] = Command::mapti(STEADY_DEVICE, e, its::LPI_BASE + e, 0);
            }
            cmds[STEADY_EVENTS as usize + 1] = Command::invall(0);
            if !sent("MAPD, MAPTI, INVALL, SYNC", its.send_all(&cmds)) {
                return;
            }
            for e in 0..STEADY_EVENTS {
                clear_counts();
                if !sent("INT", its.send(Command::int(STEADY_DEVICE, e))) {
                    return;
                }
                if !arrives(e, Some(boot)) {
                    report(
                        false,
                        format_args!(
                            "round {rounds}: INT event {e}: LPI {} not taken once by cpu{boot} ({})",
                            its::LPI_BASE + e,
                            Counts(e)
                        ),
                    );
                    return;
                }
            }
            rounds += 1;
        }
        report(
            rounds > 0,
            format_args!(
                "{rounds} rounds over {STEADY_MS} ms: MAPD, MAPTI and INT of {STEADY_EVENTS} events, each LPI taken once"
            ),
        );
        irq::set_handler(None);
    }

    // ---- trigger ----

    const DEVICE: u32 = 2;
    /// LPI `LPI_BASE + e` is `DEVICE`'s event `e` (one per CPU).
    const LPIS: usize = MAX_CPUS;

    /// Per CPU, how often each of our LPIs was taken.
    static TAKEN: [[AtomicU32; LPIS]; MAX_CPUS] = [const { [const { AtomicU32::new(0) }; LPIS] }; MAX_CPUS];
    /// Per CPU, the running priority right after the last acknowledge.
    static PRIORITY: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
    /// Interrupts other than our LPIs, by CPU.
    static OTHER: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
    static READY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
    static STOP: AtomicBool = AtomicBool::new(false);

    fn count_lpi() {
        let Some(gic) = gic::get() else { return };
        let cpu = rt::cpu_index() % MAX_CPUS;
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        PRIORITY[cpu].store(gic.running_priority(), Ordering::SeqCst);
        match iar.intid().checked_sub(its::LPI_BASE).and_then(|i| TAKEN[cpu].get(i as usize)) {
            Some(n) => {
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
            PRIORITY[cpu].store(u32::MAX, Ordering::SeqCst);
        }
    }

    fn taken(cpu: usize, event: u32) -> u32 {
        TAKEN[cpu % MAX_CPUS].get(event as usize).map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// `cpu0=1 cpu1=0 ...` for one LPI.
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

    /// Waits for `event`'s LPI on `to` (or, with `None`, for it not to come
    /// in [`SETTLE_MS`]), the boot CPU taking IRQs in windows meanwhile;
    /// true when it arrived exactly once on `to` and nowhere else.
    fn arrives(event: u32, to: Option<usize>) -> bool {
        let n = smp::count().min(MAX_CPUS);
        let arrived = match to {
            Some(cpu) => irq::wait(LPI_TIMEOUT_MS, || taken(cpu, event) > 0).is_some(),
            None => true,
        };
        irq::wait(SETTLE_MS, || false);
        arrived && (0..n).all(|c| taken(c, event) == u32::from(Some(c) == to))
    }

    fn sent(what: &str, r: Result<(), ItsError>) -> bool {
        if let Err(e) = &r {
            report(false, format_args!("{what}: {e}"));
        }
        r.is_ok()
    }

    fn trigger(env: &Env) {
        if its_base().is_none() {
            return;
        }
        let Some(gic) = gic::get() else { return };
        let boot = env.boot_cpu;
        let n = smp::count().min(MAX_CPUS);
        clear_counts();
        STOP.store(false, Ordering::SeqCst);
        for r in &READY {
            r.store(false, Ordering::SeqCst);
        }
        READY[boot].store(true, Ordering::SeqCst);
        irq::set_handler(Some(count_lpi));
        start_secondaries(|_| receiver);
        let ready = |c: usize| READY[c].load(Ordering::SeqCst);
        let all = time::wait_for(CPU_TIMEOUT_MS, || (0..n).all(ready)).is_some();
        report(all, format_args!("every CPU set up its GIC within {CPU_TIMEOUT_MS} ms ({n} CPUs)"));

        match its::init() {
            Ok(its) => {
                report(true, "LPIs enabled on every redistributor, ITS tables and command queue set up");
                deliveries(its, n, &ready);
            }
            Err(e) => {
                report(false, format_args!("ITS set-up: {e}"));
            }
        }

        stop_secondaries(gic, "our LPIs");
    }

    /// Starts every secondary CPU on the job `job(cpu)` names.
    fn start_secondaries(job: impl Fn(usize) -> smp::Job) {
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            if let Err(e) = smp::start(cpu, job(cpu)) {
                report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
            }
        }
    }

    /// Checks that nothing but `what` was taken, then stops the secondaries
    /// (an SGI each ends their WFI) and waits until they are off.
    fn stop_secondaries(gic: &gic::Gic, what: &str) {
        let other: u32 = OTHER.iter().map(|o| o.load(Ordering::SeqCst)).sum();
        report(other == 0, format_args!("no interrupt but {what} was taken ({other})"));
        STOP.store(true, Ordering::SeqCst);
        for cpu in smp::secondaries() {
            gic.send_sgi(15, gic::SgiTarget::Cpu(cpu));
        }
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            smp::wait_done(cpu, CPU_TIMEOUT_MS);
        }
        smp::wait_all_off(CPU_TIMEOUT_MS);
        irq::set_handler(None);
    }

    fn deliveries(its: &its::Its, n: usize, ready: &dyn Fn(usize) -> bool) {
        let lpi = |event: u32| its::LPI_BASE + event;
        let cpus = (0..n).filter(|&c| ready(c));
        let mut setup: [Command; 2 * MAX_CPUS + 2] = [Command::sync(0); 2 * MAX_CPUS + 2];
        let mut k = 0;
        setup[k] = Command::mapd(DEVICE, its.itt(0), its.itt_event_bits(), true);
        k += 1;
        for cpu in cpus.clone() {
            let Some(rd) = its.rdbase(cpu) else { continue };
            its.set_lpi_property(lpi(cpu as u32), gic::DEFAULT_PRIORITY, true);
            setup[k] = Command::mapc(cpu as u16, rd, true);
            setup[k + 1] = Command::mapti(DEVICE, cpu as u32, lpi(cpu as u32), cpu as u16);
            k += 2;
        }
        if !sent("MAPD, MAPC and MAPTI for each CPU", its.send_all(&setup[..k])) {
            return;
        }
        for cpu in cpus.clone() {
            let Some(rd) = its.rdbase(cpu) else { continue };
            if !sent("INVALL and SYNC", its.send_all(&[Command::invall(cpu as u16), Command::sync(rd)])) {
                return;
            }
        }
        report(
            true,
            format_args!("device {DEVICE} mapped with {} EventID bits; a collection per CPU", its.itt_event_bits()),
        );

        // INT: each CPU's LPI reaches that CPU alone, at its priority.
        for cpu in cpus.clone() {
            clear_counts();
            let event = cpu as u32;
            if !sent("INT", its.send(Command::int(DEVICE, event))) {
                return;
            }
            let once = arrives(event, Some(cpu));
            let prio = PRIORITY[cpu].load(Ordering::SeqCst);
            report(
                once && prio == u32::from(gic::DEFAULT_PRIORITY),
                format_args!(
                    "INT event {event}: LPI {} taken once by cpu{cpu} (ICC_IAR1_EL1), by no other, priority {prio:#x} ({})",
                    lpi(event),
                    Counts(event)
                ),
            );
        }

        let last = (0..n).filter(|&c| ready(c)).last().unwrap_or(0);
        let event = last as u32;

        // INV after a priority change.
        let new_prio = 0x40;
        its.set_lpi_property(lpi(event), new_prio, true);
        clear_counts();
        if !sent("INV, INT", its.send_all(&[Command::inv(DEVICE, event), Command::int(DEVICE, event)])) {
            return;
        }
        let once = arrives(event, Some(last));
        let prio = PRIORITY[last].load(Ordering::SeqCst);
        report(
            once && prio == u32::from(new_prio),
            format_args!(
                "priority {new_prio:#x} + INV: LPI {} taken by cpu{last} at running priority {prio:#x}",
                lpi(event)
            ),
        );

        // INV after disabling: INT leaves it pending, not delivered; enabling + INV delivers it.
        its.set_lpi_property(lpi(event), gic::DEFAULT_PRIORITY, false);
        clear_counts();
        if !sent("INV, INT", its.send_all(&[Command::inv(DEVICE, event), Command::int(DEVICE, event)])) {
            return;
        }
        report(
            arrives(event, None),
            format_args!("disabled + INV: INT does not deliver LPI {} ({})", lpi(event), Counts(event)),
        );
        its.set_lpi_property(lpi(event), gic::DEFAULT_PRIORITY, true);
        if !sent("INV", its.send(Command::inv(DEVICE, event))) {
            return;
        }
        report(
            arrives(event, Some(last)),
            format_args!("enabled + INV: the pending LPI {} reaches cpu{last} ({})", lpi(event), Counts(event)),
        );

        // CLEAR removes the pending state of a disabled LPI.
        its.set_lpi_property(lpi(event), gic::DEFAULT_PRIORITY, false);
        clear_counts();
        let cmds = [Command::inv(DEVICE, event), Command::int(DEVICE, event), Command::clear(DEVICE, event)];
        if !sent("INV, INT, CLEAR", its.send_all(&cmds)) {
            return;
        }
        its.set_lpi_property(lpi(event), gic::DEFAULT_PRIORITY, true);
        if !sent("INV", its.send(Command::inv(DEVICE, event))) {
            return;
        }
        report(
            arrives(event, None),
            format_args!("INT then CLEAR while disabled: enabled + INV delivers nothing ({})", Counts(event)),
        );

        // MOVI: event 0 moves to the last CPU's collection.
        let moved = 0u32;
        let from = 0usize;
        if last != from && ready(from) {
            clear_counts();
            let Some(rd) = its.rdbase(last) else { return };
            let cmds = [Command::movi(DEVICE, moved, last as u16), Command::sync(rd), Command::int(DEVICE, moved)];
            if !sent("MOVI, SYNC, INT", its.send_all(&cmds)) {
                return;
            }
            report(
                arrives(moved, Some(last)),
                format_args!(
                    "MOVI to collection {last}: LPI {} taken by cpu{last} alone ({})",
                    lpi(moved),
                    Counts(moved)
                ),
            );
        } else {
            report_skip("MOVI: one CPU");
        }

        // DISCARD: the event's mapping is gone; INT on it is a command error (which may stall the queue).
        clear_counts();
        if !sent("DISCARD", its.send(Command::discard(DEVICE, moved))) {
            return;
        }
        let r = its.send(Command::int(DEVICE, moved));
        let none = arrives(moved, None);
        report(none, format_args!("DISCARD: INT on the discarded event delivers nothing ({})", Counts(moved)));
        match r {
            Ok(()) => report_info("INT after DISCARD: consumed without a stall"),
            Err(ItsError::Stalled { creadr }) => {
                report_info(format_args!("INT after DISCARD: the queue stalled (GITS_CREADR {creadr:#x})"))
            }
            Err(e) => {
                report(false, format_args!("INT after DISCARD: {e}"));
            }
        }
    }

    // ---- doorbell ----

    /// The `doorbell` sub-test's device, apart from `trigger`'s so both can run in one boot.
    const WAKE_DEVICE: u32 = 3;
    const WAKE_EVENT: u32 = 0;
    /// Past `trigger`'s LPIs.
    const WAKE_LPI: u32 = its::LPI_BASE + LPIS as u32;
    const WAKE_CPUS: usize = 4;
    /// How long the target CPU sits in `WFI` before the `INT`.
    const WFI_SETTLE_MS: u64 = 20;

    /// Per CPU, how often `WAKE_LPI` was taken, and when (counter) the last time.
    static WAKE_TAKEN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
    static WAKE_AT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    /// The target's `ICC_IAR1_EL1` for the LPI that woke it.
    static WAKE_IAR: AtomicU32 = AtomicU32::new(0);
    /// The target left its first `WFI` wait because the LPI came.
    static WOKEN: AtomicBool = AtomicBool::new(false);

    fn wake_handler() {
        let now = time::counter();
        let Some(gic) = gic::get() else { return };
        let cpu = rt::cpu_index() % MAX_CPUS;
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        if iar.intid() == WAKE_LPI {
            if WAKE_TAKEN[cpu].fetch_add(1, Ordering::SeqCst) == 0 {
                WAKE_IAR.store(iar.raw, Ordering::SeqCst);
            }
            WAKE_AT[cpu].store(now, Ordering::SeqCst);
        } else {
            OTHER[cpu].fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    /// The target: in `WFI` (IRQs let in only after each wake) until its LPI comes.
    fn wake_target(cpu: usize) {
        let Some(gic) = gic::get() else { return };
        if let Err(e) = gic.cpu_init() {
            report(false, format_args!("cpu{cpu}: GIC set-up: {e}"));
            return;
        }
        READY[cpu].store(true, Ordering::SeqCst);
        let mine = || WAKE_TAKEN[cpu % MAX_CPUS].load(Ordering::SeqCst) > 0;
        irq::wfi_until(60_000, || mine() || STOP.load(Ordering::SeqCst));
        WOKEN.store(mine(), Ordering::SeqCst);
        // Stay to take any extra copy until the boot CPU is done.
        irq::wfi_until(60_000, || STOP.load(Ordering::SeqCst));
    }

    fn wake(env: &Env) {
        let n = smp::count().min(MAX_CPUS);
        if n < WAKE_CPUS {
            report_skip(format_args!("needs {WAKE_CPUS} CPUs ({n})"));
            return;
        }
        if its_base().is_none() {
            return;
        }
        let Some(gic) = gic::get() else { return };
        let its = match its::init() {
            Ok(its) => its,
            Err(e) => {
                report(false, format_args!("ITS set-up: {e}"));
                return;
            }
        };
        let Some(target) = smp::secondaries().filter(|&c| c < MAX_CPUS).last() else { return };
        STOP.store(false, Ordering::SeqCst);
        WOKEN.store(false, Ordering::SeqCst);
        WAKE_IAR.store(0, Ordering::SeqCst);
        for cpu in 0..MAX_CPUS {
            READY[cpu].store(false, Ordering::SeqCst);
            WAKE_TAKEN[cpu].store(0, Ordering::SeqCst);
            OTHER[cpu].store(0, Ordering::SeqCst);
        }
        READY[env.boot_cpu].store(true, Ordering::SeqCst);
        irq::set_handler(Some(wake_handler));
        start_secondaries(|cpu| if cpu == target { wake_target } else { receiver });
        let ready = |c: usize| READY[c].load(Ordering::SeqCst);
        if time::wait_for(CPU_TIMEOUT_MS, || (0..n).all(ready)).is_none() {
            report(false, format_args!("not every CPU set up its GIC within {CPU_TIMEOUT_MS} ms"));
        } else {
            wake_deliver(its, target, n);
        }

        stop_secondaries(gic, "the LPI");
    }

    fn wake_deliver(its: &its::Its, target: usize, n: usize) {
        let Some(rd) = its.rdbase(target) else {
            report(false, format_args!("cpu{target}: no RDbase"));
            return;
        };
        its.set_lpi_property(WAKE_LPI, gic::DEFAULT_PRIORITY, true);
        let setup = [
            Command::mapd(WAKE_DEVICE, its.itt(1), its.itt_event_bits(), true),
            Command::mapc(target as u16, rd, true),
            Command::mapti(WAKE_DEVICE, WAKE_EVENT, WAKE_LPI, target as u16),
            Command::inv(WAKE_DEVICE, WAKE_EVENT),
            Command::sync(rd),
        ];
        if !sent("MAPD, MAPC, MAPTI, INV, SYNC", its.send_all(&setup)) {
            return;
        }
        // Let the target reach its WFI, and check nothing woke it yet.
        time::wait_for(WFI_SETTLE_MS, || false);
        let early = WAKE_TAKEN[target].load(Ordering::SeqCst);
        let start = time::counter();
        if !sent("INT", its.send(Command::int(WAKE_DEVICE, WAKE_EVENT))) {
            return;
        }
        let arrived = time::wait_for(LPI_TIMEOUT_MS, || WOKEN.load(Ordering::SeqCst)).is_some();
        time::wait_for(SETTLE_MS, || false);
        let took = ticks_to_us(WAKE_AT[target].load(Ordering::SeqCst).saturating_sub(start), time::freq());
        let counts = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            for (cpu, taken) in WAKE_TAKEN.iter().enumerate().take(n) {
                write!(f, "{}cpu{cpu}={}", if cpu > 0 { " " } else { "" }, taken.load(Ordering::SeqCst))?;
            }
            Ok(())
        };
        let once = (0..n).all(|c| WAKE_TAKEN[c].load(Ordering::SeqCst) == u32::from(c == target));
        let iar = WAKE_IAR.load(Ordering::SeqCst);
        report(
            early == 0 && arrived && once && iar & 0xff_ffff == WAKE_LPI,
            format_args!(
                "INT woke cpu{target} from WFI: LPI {WAKE_LPI} taken once (ICC_IAR1_EL1 {iar:#x}), by no other CPU, within {LPI_TIMEOUT_MS} ms ({})",
                Fmt(counts)
            ),
        );
        if arrived {
            report_info(format_args!("cpu{target} took the LPI {took} us after the INT was queued"));
        }
    }

    /// Displays through a closure.
    struct Fmt<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

    impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Fmt<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            (self.0)(f)
        }
    }
}
