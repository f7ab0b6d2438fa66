//! `micro-bench`: what kvm-unit-tests' arm/micro-bench measures, timed with
//! `CNTVCT_EL0` (an `isb` before each read) and printed as
//! `BENCH: <op> iterations=<N> ns_per_op=<ns> min=<ns> max=<ns>`.
//!
//! `hvc`, `mmio_read_user`, `mmio_read_vgic` and `eoi` run N = 4096
//! operations in 16 timed batches: `ns_per_op` is the mean over all of
//! them, `min`/`max` the fastest and slowest batch's mean. `ipi` and `timer`
//! time each of 256 operations with the receiver in `WFI`: `ns_per_op` is
//! the median sample. `ipi_busy` and `timer_busy` are the standard
//! definitions (kvm-unit-tests' arm/micro-bench, docs/measuring.md §3), with the
//! receiver busy-waiting, `PSTATE.I` clear: `ipi_busy` times 4096 SGIs from
//! the sender's SGI write to the receiver's handler's first counter read,
//! `timer_busy` 32 virtual timer deadlines 10 ms ahead from the deadline
//! (`CNTV_CVAL_EL0`) to the handler's first counter read; `ns_per_op` is
//! the mean, `min`/`max` the fastest and slowest operation. `lpi`
//! times, 256 times, from the `GITS_CWRITER` write that queues an `INT` to
//! the LPI handler's first counter read on the same CPU (median too), and is
//! a SKIP without an ITS (GICv2, or no `arm,gic-v3-its` node). Each op
//! first runs a few untimed warm-up rounds; each prints a `PASS` once it ran
//! (a hang is the harness's timeout). Under QEMU with
//! `-icount shift=0,sleep=off` a nanosecond is one instruction.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_shared::dt::PsciMethod;
    use ferrovisor_test_guests::bench::{self, BenchLine, Mean, Stats};
    use ferrovisor_test_guests::cpus::ms_to_ticks;
    use ferrovisor_test_guests::gic::{self, read32, read64, write64, Gic, SgiTarget};
    use ferrovisor_test_guests::its::{self, Command, ItsError};
    use ferrovisor_test_guests::timer::Timer;
    use ferrovisor_test_guests::{
        guest_main, irq, println, psci, report, report_info, report_skip, smp, time, Env, SubTest,
    };

    guest_main!(
        "micro-bench",
        &[
            SubTest { name: "hvc", run: hvc },
            SubTest { name: "mmio_read_user", run: mmio_read_user },
            SubTest { name: "mmio_read_vgic", run: mmio_read_vgic },
            SubTest { name: "eoi", run: eoi },
            SubTest { name: "ipi", run: ipi },
            SubTest { name: "ipi_busy", run: ipi_busy },
            SubTest { name: "lpi", run: lpi },
            SubTest { name: "timer", run: timer },
            SubTest { name: "timer_busy", run: timer_busy },
        ]
    );

    const ITERATIONS: u64 = 1 << 12;
    const BATCHES: usize = 16;
    const WARMUP: u64 = 64;
    const SAMPLES: usize = 256;
    const SAMPLE_WARMUP: usize = 8;
    /// kvm-unit-tests' hypercall: no SMCCC service has it.
    const UNKNOWN_FUNCTION: u64 = 0x4b00_0000;
    /// A virtio-mmio transport's `Version` register in QEMU virt's map (ours copies it).
    const MMIO_USER_ADDR: usize = 0x0a00_0008;
    const TIMEOUT_MS: u64 = 1000;

    fn setup() -> Option<&'static Gic> {
        match gic::init() {
            Ok(g) => Some(g),
            Err(e) => {
                report(false, format_args!("GIC set-up: {e}"));
                None
            }
        }
    }

    static FREQ_SHOWN: AtomicBool = AtomicBool::new(false);

    fn print(op: &str, stats: Option<Stats>) {
        if !FREQ_SHOWN.swap(true, Ordering::SeqCst) {
            report_info(format_args!("CNTFRQ_EL0 {} Hz", time::freq()));
        }
        match stats {
            Some(stats) => {
                println!("{}", BenchLine { op, stats });
                report(true, format_args!("{} iterations", stats.iterations));
            }
            None => {
                report(false, "no measurement");
            }
        }
    }

    /// Warm-up, then [`ITERATIONS`] calls of `op` in [`BATCHES`] timed batches.
    fn batched(name: &str, mut op: impl FnMut()) {
        for _ in 0..WARMUP {
            op();
        }
        let per_batch = ITERATIONS / BATCHES as u64;
        let mut ticks = [0u64; BATCHES];
        for t in &mut ticks {
            let start = time::counter();
            for _ in 0..per_batch {
                op();
            }
            *t = time::counter() - start;
        }
        print(name, bench::from_batches(&ticks, per_batch, time::freq()));
    }

    fn smccc_unknown() -> u64 {
        let x0: u64;
        // SAFETY: an SMCCC call through the conduit the device tree names;
        // SMCCC lets it change x0-x17, which are declared clobbered.
        unsafe {
            match psci::method() {
                PsciMethod::Hvc => asm!(
                    "hvc #0",
                    inout("x0") UNKNOWN_FUNCTION => x0,
                    out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _,
                    out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                    out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                    options(nostack),
                ),
                PsciMethod::Smc => asm!(
                    "smc #0",
                    inout("x0") UNKNOWN_FUNCTION => x0,
                    out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _,
                    out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
                    out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                    options(nostack),
                ),
            }
        }
        x0
    }

    fn hvc(_: &Env) {
        let ret = smccc_unknown();
        if psci::w0(ret) != -1 {
            report(false, format_args!("hvc {UNKNOWN_FUNCTION:#x} returned {ret:#x}, not NOT_SUPPORTED"));
        }
        batched("hvc", || {
            smccc_unknown();
        });
    }

    fn mmio_read_user(_: &Env) {
        batched("mmio_read_user", || {
            read32(MMIO_USER_ADDR);
        });
    }

    fn mmio_read_vgic(_: &Env) {
        let Some(gic) = setup() else { return };
        let iidr = gic.gicd() + gic::GICD_IIDR;
        batched("mmio_read_vgic", || {
            read32(iidr);
        });
    }

    fn eoi(_: &Env) {
        let Some(gic) = setup() else { return };
        batched("eoi", || gic.eoi_spurious());
    }

    // ---- ipi ----

    const SGI_BENCH: u32 = 1;
    const SGI_STOP: u32 = 15;
    static RECEIVED: AtomicU64 = AtomicU64::new(0);
    static READY: AtomicBool = AtomicBool::new(false);
    static STOP: AtomicBool = AtomicBool::new(false);

    fn ipi_handler() {
        let Some(gic) = gic::get() else { return };
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        if iar.intid() == SGI_BENCH {
            RECEIVED.fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    fn ipi_receiver(_: usize) {
        let Some(gic) = gic::get() else { return };
        if gic.cpu_init().is_err() {
            return;
        }
        READY.store(true, Ordering::SeqCst);
        irq::wfi_until(600_000, || STOP.load(Ordering::SeqCst));
    }

    /// `yield`: a hint, not a trap. QEMU's round-robin TCG (as under
    /// -icount) moves to the next vCPU on it, so the other CPU runs at once
    /// instead of at the end of this one's time slice (kvm-unit-tests'
    /// `cpu_relax()` is the same instruction).
    #[inline(always)]
    fn relax() {
        // SAFETY: `yield` has no architectural effect.
        unsafe { asm!("yield", options(nomem, nostack)) };
    }

    /// Starts `receiver` on a second CPU with `handler` installed, runs
    /// `send` (given the GIC and the receiver's index) once the receiver
    /// set up its GIC, then stops it. A SKIP without a second CPU, a FAIL
    /// when it does not start.
    fn with_receiver(receiver: fn(usize), handler: irq::Handler, send: impl FnOnce(&Gic, usize)) {
        let Some(target) = smp::secondaries().find(|&c| c < MAX_CPUS) else {
            report_skip("needs a second CPU");
            return;
        };
        let Some(gic) = setup() else { return };
        READY.store(false, Ordering::SeqCst);
        STOP.store(false, Ordering::SeqCst);
        RECEIVED.store(0, Ordering::SeqCst);
        irq::set_handler(Some(handler));
        if let Err(e) = smp::start(target, receiver) {
            report(false, format_args!("cpu{target}: CPU_ON failed: {e:?}"));
            irq::set_handler(None);
            return;
        }
        if time::wait_for(TIMEOUT_MS, || READY.load(Ordering::SeqCst)).is_none() {
            report(false, format_args!("cpu{target} did not set up its GIC"));
        }
        send(gic, target);
        STOP.store(true, Ordering::SeqCst);
        gic.send_sgi(SGI_STOP, SgiTarget::Cpu(target));
        smp::wait_done(target, TIMEOUT_MS);
        smp::wait_all_off(TIMEOUT_MS);
        irq::set_handler(None);
    }

    /// Sends [`SGI_BENCH`] to `target` and waits, yielding, until its
    /// handler counted it: the counter before the SGI write and after the
    /// wait, or `None` when it was not taken within [`TIMEOUT_MS`]. A macro,
    /// not a function: it is inside the timed part, and a call would add its
    /// own instructions to both figures.
    macro_rules! sgi_round_trip {
        ($gic:expr, $target:expr) => {{
            let before = RECEIVED.load(Ordering::SeqCst);
            let start = time::counter();
            $gic.send_sgi(SGI_BENCH, SgiTarget::Cpu($target));
            let arrived = time::wait_for(TIMEOUT_MS, || {
                relax();
                RECEIVED.load(Ordering::SeqCst) != before
            });
            let end = time::counter();
            arrived.map(|_| (start, end))
        }};
    }

    /// From the SGI write to the sender's seeing the receiver's handler
    /// count it, the receiver waking from `WFI`.
    fn ipi(_: &Env) {
        with_receiver(ipi_receiver, ipi_handler, |gic, target| {
            let mut samples = [0u64; SAMPLES];
            for i in 0..SAMPLE_WARMUP + SAMPLES {
                let Some((start, end)) = sgi_round_trip!(gic, target) else {
                    report(false, format_args!("ipi: an SGI to cpu{target} was not taken within {TIMEOUT_MS} ms"));
                    return;
                };
                if let Some(s) = i.checked_sub(SAMPLE_WARMUP).and_then(|i| samples.get_mut(i)) {
                    *s = end - start;
                }
            }
            print("ipi", bench::from_samples(&mut samples, time::freq()));
        });
    }

    // ---- ipi_busy ----

    /// The counter when [`ipi_busy_handler`] last took [`SGI_BENCH`].
    static IPI_AT: AtomicU64 = AtomicU64::new(0);

    fn ipi_busy_handler() {
        let now = time::counter();
        let Some(gic) = gic::get() else { return };
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        if iar.intid() == SGI_BENCH {
            IPI_AT.store(now, Ordering::SeqCst);
            RECEIVED.fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    /// Spins with `PSTATE.I` clear (not in `WFI`) until told to stop, as
    /// kvm-unit-tests' secondary does.
    fn ipi_busy_receiver(_: usize) {
        let Some(gic) = gic::get() else { return };
        if gic.cpu_init().is_err() {
            return;
        }
        READY.store(true, Ordering::SeqCst);
        irq::unmask();
        time::wait_for(600_000, || {
            relax();
            STOP.load(Ordering::SeqCst)
        });
        irq::mask();
    }

    /// From the sender's SGI write to the busy-waiting receiver's handler's
    /// first counter read (one virtual counter for the VM's vCPUs, and one
    /// instruction count for QEMU's CPUs under -icount).
    fn ipi_busy(_: &Env) {
        with_receiver(ipi_busy_receiver, ipi_busy_handler, |gic, target| {
            let mut mean = Mean::new();
            for i in 0..WARMUP + ITERATIONS {
                let Some((start, _)) = sgi_round_trip!(gic, target) else {
                    report(false, format_args!("ipi_busy: an SGI to cpu{target} was not taken within {TIMEOUT_MS} ms"));
                    return;
                };
                if i >= WARMUP {
                    mean.add(IPI_AT.load(Ordering::SeqCst).saturating_sub(start));
                }
            }
            print("ipi_busy", mean.stats(time::freq()));
        });
    }

    // ---- lpi ----

    /// The benchmark's device; its event 0 is LPI [`its::LPI_BASE`].
    const LPI_DEVICE: u32 = 1;
    const LPI_EVENT: u32 = 0;
    const LPI: u32 = its::LPI_BASE;

    static LPI_AT: AtomicU64 = AtomicU64::new(0);
    static LPI_TAKEN: AtomicU64 = AtomicU64::new(0);

    fn lpi_handler() {
        let now = time::counter();
        let Some(gic) = gic::get() else { return };
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        if iar.intid() == LPI {
            LPI_AT.store(now, Ordering::SeqCst);
            LPI_TAKEN.fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    /// The ITS command queue as `GITS_CBASER` and `GITS_CWRITER` describe it,
    /// written directly so that the timed part is the `GITS_CWRITER` write
    /// alone (`Its::send` also waits for `GITS_CREADR`). Each posting ends
    /// where it began ([`Queue::realign`]), so the runtime's own write offset
    /// is right again afterwards.
    struct Queue {
        base: usize,
        addr: usize,
        size: usize,
        start: usize,
        write: usize,
    }

    impl Queue {
        fn new(its: &its::Its) -> Self {
            let base = its.base();
            let cbaser = read64(base + its::GITS_CBASER);
            let write = read64(base + its::GITS_CWRITER) as usize & its::CQ_OFFSET as usize;
            Queue {
                base,
                addr: (cbaser & its::CBASER_PA) as usize,
                size: ((cbaser & its::CBASER_SIZE) as usize + 1) * its::CBASER_PAGE,
                start: write,
                write,
            }
        }

        /// Writes `cmd` at the queue's tail; the next `GITS_CWRITER` value.
        fn put(&mut self, cmd: Command) -> u64 {
            let slot = self.addr + self.write;
            for (i, dw) in cmd.0.iter().enumerate() {
                // SAFETY: a 32-byte command slot inside the queue the ITS was
                // given (identity mapped), past GITS_CREADR: the ITS has
                // consumed every command before it (the caller waits for that).
                unsafe { core::ptr::write_volatile((slot + 8 * i) as *mut u64, *dw) };
            }
            self.write = (self.write + its::COMMAND_BYTES) % self.size;
            // SAFETY: a barrier, so the ITS sees the command before CWRITER moves.
            unsafe { asm!("dsb sy", options(nostack)) };
            self.write as u64
        }

        fn kick(&self, cwriter: u64) {
            write64(self.base + its::GITS_CWRITER, cwriter);
        }

        /// Waits until the ITS consumed everything queued; the `GITS_CREADR` of a stall.
        fn drain(&self) -> Result<(), u64> {
            let mut creadr = 0;
            time::wait_for(TIMEOUT_MS, || {
                creadr = read64(self.base + its::GITS_CREADR);
                creadr & its::CREADR_STALLED != 0 || creadr & its::CQ_OFFSET == self.write as u64
            });
            if creadr & its::CREADR_STALLED != 0 || creadr & its::CQ_OFFSET != self.write as u64 {
                Err(creadr)
            } else {
                Ok(())
            }
        }

        /// Queues `SYNC`s until the tail is back where [`Queue::new`] found it.
        fn realign(&mut self, sync: Command) -> Result<(), u64> {
            while self.write != self.start {
                let cwriter = self.put(sync);
                self.kick(cwriter);
                self.drain()?;
            }
            Ok(())
        }
    }

    /// One event of one device mapped to the boot CPU's collection, enabled.
    fn lpi_map(its: &its::Its, boot: usize) -> Result<u64, ItsError> {
        let rd = its.rdbase(boot).ok_or(ItsError::Redistributor { cpu: boot })?;
        its.set_lpi_property(LPI, gic::DEFAULT_PRIORITY, true);
        its.send_all(&[
            Command::mapd(LPI_DEVICE, its.itt(0), its.itt_event_bits(), true),
            Command::mapc(boot as u16, rd, true),
            Command::mapti(LPI_DEVICE, LPI_EVENT, LPI, boot as u16),
            Command::inv(LPI_DEVICE, LPI_EVENT),
            Command::sync(rd),
        ])?;
        Ok(rd)
    }

    /// From the `GITS_CWRITER` write that queues an `INT` to the LPI
    /// handler's first counter read, on the boot CPU.
    fn lpi(env: &Env) {
        let its = match its::init() {
            Ok(its) => its,
            Err(ItsError::NoIts) => {
                report_skip("no ITS");
                return;
            }
            Err(e) => {
                report(false, format_args!("ITS set-up: {e}"));
                return;
            }
        };
        let rd = match lpi_map(its, env.boot_cpu) {
            Ok(rd) => rd,
            Err(e) => {
                report(false, format_args!("MAPD, MAPC, MAPTI, INV, SYNC: {e}"));
                return;
            }
        };
        LPI_TAKEN.store(0, Ordering::SeqCst);
        irq::set_handler(Some(lpi_handler));
        let mut queue = Queue::new(its);
        let mut samples = [0u64; SAMPLES];
        let mut lost = None;
        for i in 0..SAMPLE_WARMUP + SAMPLES {
            let before = LPI_TAKEN.load(Ordering::SeqCst);
            let cwriter = queue.put(Command::int(LPI_DEVICE, LPI_EVENT));
            let start = time::counter();
            queue.kick(cwriter);
            if irq::wait(TIMEOUT_MS, || LPI_TAKEN.load(Ordering::SeqCst) != before).is_none() {
                lost = Some(read64(its.base() + its::GITS_CREADR));
                break;
            }
            if let Some(s) = i.checked_sub(SAMPLE_WARMUP).and_then(|i| samples.get_mut(i)) {
                *s = LPI_AT.load(Ordering::SeqCst).saturating_sub(start);
            }
        }
        let realigned = queue.drain().and_then(|()| queue.realign(Command::sync(rd)));
        irq::set_handler(None);
        if let Some(creadr) = lost {
            report(
                false,
                format_args!("lpi: LPI {LPI} was not taken within {TIMEOUT_MS} ms of INT (GITS_CREADR {creadr:#x})"),
            );
        } else {
            print("lpi", bench::from_samples(&mut samples, time::freq()));
        }
        if let Err(creadr) = realigned {
            report(false, format_args!("lpi: the command queue did not drain (GITS_CREADR {creadr:#x})"));
        }
    }

    // ---- timer ----

    static TIMER_INTID: AtomicU32 = AtomicU32::new(0);
    static FIRED_AT: AtomicU64 = AtomicU64::new(0);
    static FIRED: AtomicU64 = AtomicU64::new(0);

    fn timer_handler() {
        let now = Timer::Virt.counter();
        let Some(gic) = gic::get() else { return };
        let iar = gic.ack();
        if iar.is_spurious() {
            return;
        }
        if iar.intid() == TIMER_INTID.load(Ordering::SeqCst) {
            Timer::Virt.stop();
            FIRED_AT.store(now, Ordering::SeqCst);
            FIRED.fetch_add(1, Ordering::SeqCst);
        }
        gic.eoi(iar);
    }

    /// From the virtual timer's deadline to its handler's first counter read,
    /// waking from `WFI`.
    fn timer(_: &Env) {
        let Some(gic) = setup() else { return };
        let intid = Timer::Virt.intid();
        TIMER_INTID.store(intid, Ordering::SeqCst);
        FIRED.store(0, Ordering::SeqCst);
        Timer::Virt.stop();
        gic.enable(intid);
        irq::set_handler(Some(timer_handler));
        let ahead = ms_to_ticks(1, time::freq()) / 10;
        let mut samples = [0u64; SAMPLES];
        let mut lost = false;
        for i in 0..SAMPLE_WARMUP + SAMPLES {
            let before = FIRED.load(Ordering::SeqCst);
            let cval = Timer::Virt.counter() + ahead;
            Timer::Virt.arm_at(cval);
            if irq::wfi_until(TIMEOUT_MS, || FIRED.load(Ordering::SeqCst) != before).is_none() {
                lost = true;
                break;
            }
            if let Some(s) = i.checked_sub(SAMPLE_WARMUP).and_then(|i| samples.get_mut(i)) {
                *s = FIRED_AT.load(Ordering::SeqCst).saturating_sub(cval);
            }
        }
        Timer::Virt.stop();
        gic.disable(intid);
        irq::set_handler(None);
        if lost {
            report(false, format_args!("timer: the virtual timer's INTID {intid} was not taken"));
        } else {
            print("timer", bench::from_samples(&mut samples, time::freq()));
        }
    }

    // ---- timer_busy ----

    /// How far ahead `timer_busy` sets each deadline, and how many it times
    /// (after [`TIMER_BUSY_WARMUP`] untimed ones): each costs 10 ms of guest
    /// time, 10 million instructions under -icount shift=0.
    const TIMER_BUSY_AHEAD_MS: u64 = 10;
    const TIMER_BUSY_ROUNDS: u64 = 32;
    const TIMER_BUSY_WARMUP: u64 = 2;

    /// From the virtual timer's deadline, `CNTV_CVAL_EL0` = now + 10 ms, to
    /// its handler's first counter read, busy-waiting with `PSTATE.I` clear
    /// (Arm ARM, `CNTV_CVAL_EL0`: the timer condition is met when `CNTVCT_EL0` -
    /// `CNTV_CVAL_EL0` >= 0, so the difference is the latency).
    fn timer_busy(_: &Env) {
        let Some(gic) = setup() else { return };
        let intid = Timer::Virt.intid();
        TIMER_INTID.store(intid, Ordering::SeqCst);
        FIRED.store(0, Ordering::SeqCst);
        Timer::Virt.stop();
        gic.enable(intid);
        irq::set_handler(Some(timer_handler));
        let ahead = ms_to_ticks(TIMER_BUSY_AHEAD_MS, time::freq());
        let mut mean = Mean::new();
        let mut lost = false;
        irq::unmask();
        for i in 0..TIMER_BUSY_WARMUP + TIMER_BUSY_ROUNDS {
            let before = FIRED.load(Ordering::SeqCst);
            let cval = Timer::Virt.counter() + ahead;
            Timer::Virt.arm_at(cval);
            if time::wait_for(TIMEOUT_MS, || FIRED.load(Ordering::SeqCst) != before).is_none() {
                lost = true;
                break;
            }
            if i >= TIMER_BUSY_WARMUP {
                mean.add(FIRED_AT.load(Ordering::SeqCst).saturating_sub(cval));
            }
        }
        irq::mask();
        Timer::Virt.stop();
        gic.disable(intid);
        irq::set_handler(None);
        if lost {
            report(
                false,
                format_args!("timer_busy: the virtual timer's INTID {intid} was not taken within {TIMEOUT_MS} ms"),
            );
        } else {
            print("timer_busy", mean.stats(time::freq()));
        }
    }
}
