//! `selftest`: the runtime checks itself and what the VM gives it.
//!
//! Sub-tests: `setup` (`smp=N mem=MiB`: the device tree's CPU count and
//! total memory), `vectors-kernel` (exceptions at EL1), `vectors-user` (a
//! round trip through EL0), `smp` (every CPU comes up with the MPIDR its
//! device-tree node gives), `fpu` (FP/SIMD state survives exits),
//! `progress` (every CPU spins for 200 ms of virtual time at once, and each
//! gets a fair share of it: more vCPUs than physical CPUs all run).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use aarch64_cpu::registers::{CurrentEL, Readable};
    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_test_guests::exception::{catch, run_at_el0, Exception};
    use ferrovisor_test_guests::pattern::data_word;
    use ferrovisor_test_guests::{guest_main, psci, report, report_info, report_skip, rt, smp, time, Env, SubTest};

    guest_main!(
        "selftest",
        &[
            SubTest { name: "setup", run: setup },
            SubTest { name: "vectors-kernel", run: vectors_kernel },
            SubTest { name: "vectors-user", run: vectors_user },
            SubTest { name: "smp", run: smp_up },
            SubTest { name: "fpu", run: fpu },
            SubTest { name: "progress", run: progress },
        ]
    );

    const CPU_TIMEOUT_MS: u64 = 2000;
    const EC_UNKNOWN: u8 = 0x00;
    const EC_SVC64: u8 = 0x15;
    const EC_BRK64: u8 = 0x3c;

    fn current_el() -> u64 {
        CurrentEL.read(CurrentEL::EL)
    }

    fn setup(env: &Env) {
        report(current_el() == 1, format_args!("running at EL1 (CurrentEL.EL = {})", current_el()));
        let cpus = env.board.cpus().len() + env.board.cpus_ignored();
        match env.args.number("smp") {
            Ok(Some(n)) => {
                report(cpus as u64 == n, format_args!("smp={n}: the device tree lists {cpus} CPUs"));
            }
            Ok(None) => report_info("no smp= argument: the CPU count is not checked"),
            Err(e) => {
                report(false, e);
            }
        }
        let bytes: u64 = env.board.memory().iter().map(|r| r.size).sum();
        if env.board.memory_ignored() > 0 {
            report_info(format_args!(
                "{} memory ranges beyond the first 8 are not counted",
                env.board.memory_ignored()
            ));
        }
        match env.args.number("mem") {
            Ok(Some(m)) => {
                report(
                    bytes == m << 20,
                    format_args!("mem={m}: /memory totals {} MiB ({bytes:#x} bytes)", bytes >> 20),
                );
            }
            Ok(None) => report_info("no mem= argument: the memory size is not checked"),
            Err(e) => {
                report(false, e);
            }
        }
    }

    /// Checks a caught exception's class, level and return address.
    fn check(what: &str, e: Option<Exception>, ec: u8, elr: u64) {
        let Some(e) = e else {
            report(false, format_args!("{what}: no exception was taken"));
            return;
        };
        report(
            e.ec() == ec && !e.from_el0,
            format_args!("{what}: taken at EL1 with EC {:#04x} (want {ec:#04x})", e.ec()),
        );
        report(e.elr == elr, format_args!("{what}: ELR {:#x} (want {elr:#x})", e.elr));
    }

    fn vectors_kernel(_: &Env) {
        let (at, e) = catch(|| {
            let at: u64;
            // SAFETY: the instruction traps to our vectors, which record it
            // and resume after it; nothing else is touched (so for the two
            // below).
            unsafe { asm!("adr {at}, 2f", "2: udf #0", at = out(reg) at) };
            at
        });
        check("udf #0", e, EC_UNKNOWN, at);

        let (at, e) = catch(|| {
            let at: u64;
            // SAFETY: as for the udf.
            unsafe { asm!("adr {at}, 2f", "2: brk #0x1", at = out(reg) at) };
            at
        });
        check("brk #0x1", e, EC_BRK64, at);
        if let Some(e) = e {
            report(e.esr.imm16() == 1, format_args!("brk #0x1: ESR comment {:#x}", e.esr.imm16()));
        }

        let (at, e) = catch(|| {
            let at: u64;
            // SAFETY: as for the udf.
            unsafe { asm!("adr {at}, 2f", "2: svc #0", at = out(reg) at) };
            at
        });
        check("svc #0 at EL1", e, EC_SVC64, at + 4);
    }

    // EL0 code for `vectors-user`: an undefined instruction (EL1 handles it
    // and resumes here), a round trip through its own stack, then `svc #0`
    // back to EL1 with x0 = the argument + 1.
    global_asm!(
        r#"
.text
.balign 4
.global selftest_el0_code
selftest_el0_code:
    udf     #0
    add     x0, x0, #1
    str     x0, [sp, #-16]!
    mov     x0, #0
    ldr     x0, [sp], #16
    svc     #0
    b       .
"#
    );

    unsafe extern "C" {
        fn selftest_el0_code();
    }

    fn vectors_user(_: &Env) {
        let entry = selftest_el0_code as *const () as usize;
        // SAFETY: selftest_el0_code uses only x0 and its own stack and ends
        // with svc.
        let (exit, e) = catch(|| unsafe { run_at_el0(entry, 41) });
        match e {
            Some(e) => {
                report(e.from_el0 && e.ec() == EC_UNKNOWN, format_args!("udf at EL0: EC {:#04x} from EL0", e.ec()));
                report(e.elr == entry as u64, format_args!("udf at EL0: ELR {:#x} (want {entry:#x})", e.elr));
            }
            None => {
                report(false, "udf at EL0: no exception was taken");
            }
        }
        report(exit.x0 == 42, format_args!("EL0 resumed after the udf and used its stack (x0 = {})", exit.x0));
        report(
            exit.esr.ec() == EC_SVC64 && exit.esr.imm16() == 0,
            format_args!("svc #0 from EL0: ESR {:#x}", exit.esr.0),
        );
        report(current_el() == 1, "back at EL1 after the svc");
    }

    static SEEN_MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

    fn record_mpidr(cpu: usize) {
        SEEN_MPIDR[cpu].store(rt::mpidr(), Ordering::SeqCst);
    }

    fn smp_up(env: &Env) {
        let n = smp::count();
        let boot_mpidr = smp::mpidr_of(env.boot_cpu).unwrap_or(u64::MAX);
        report(
            rt::mpidr() == boot_mpidr,
            format_args!("cpu{} (boot): MPIDR {:#x} matches its reg {boot_mpidr:#x}", env.boot_cpu, rt::mpidr()),
        );
        if n < 2 {
            report_skip("one CPU: no secondary to start");
            return;
        }
        let start = time::counter();
        for cpu in smp::secondaries() {
            if let Err(e) = smp::start(cpu, record_mpidr) {
                report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
            }
        }
        let all = time::wait_for(CPU_TIMEOUT_MS, || smp::secondaries().all(smp::is_done));
        report(all.is_some(), format_args!("all {n} CPUs up within {CPU_TIMEOUT_MS} ms"));
        report_info(format_args!("secondaries up after {} us", time::us_since(start)));
        for cpu in smp::secondaries() {
            let seen = SEEN_MPIDR[cpu].load(Ordering::SeqCst);
            let want = smp::mpidr_of(cpu).unwrap_or(u64::MAX);
            report(seen == want, format_args!("cpu{cpu}: MPIDR {seen:#x} matches its reg {want:#x}"));
        }
        smp::wait_all_off(CPU_TIMEOUT_MS);
    }

    #[repr(C, align(16))]
    #[derive(Clone, Copy, PartialEq, Eq)]
    struct FpState {
        q: [u128; 32],
        fpcr: u64,
        fpsr: u64,
    }

    impl FpState {
        const ZERO: Self = Self { q: [0; 32], fpcr: 0, fpsr: 0 };
    }

    /// FPCR: DN, FZ, RMode = round towards zero (bits every Armv8-A FPU has).
    const TEST_FPCR: u64 = (1 << 25) | (1 << 24) | (3 << 22);
    /// FPSR: QC and all six cumulative exception flags.
    const TEST_FPSR: u64 = (1 << 27) | 0x9f;

    /// Loads `input` into q0-q31, FPCR and FPSR, reads FPCR/FPSR back into
    /// `before`, makes the call (x0 = `function`), stores everything into
    /// `after`, and restores the caller's FPCR/FPSR. Returns x0.
    macro_rules! fp_call {
        ($insn:literal, $input:expr, $before:expr, $after:expr, $function:expr) => {{
            let x0: u64;
            // SAFETY: the asm reads `input` and writes `before`/`after` (each
            // an FpState, 16-byte aligned), declares every register the call
            // may change, and puts FPCR/FPSR back as it found them.
            unsafe {
                asm!(
                    "mrs {old_fpcr}, fpcr",
                    "mrs {old_fpsr}, fpsr",
                    "ldp q0, q1, [{inp}, #0]",
                    "ldp q2, q3, [{inp}, #32]",
                    "ldp q4, q5, [{inp}, #64]",
                    "ldp q6, q7, [{inp}, #96]",
                    "ldp q8, q9, [{inp}, #128]",
                    "ldp q10, q11, [{inp}, #160]",
                    "ldp q12, q13, [{inp}, #192]",
                    "ldp q14, q15, [{inp}, #224]",
                    "ldp q16, q17, [{inp}, #256]",
                    "ldp q18, q19, [{inp}, #288]",
                    "ldp q20, q21, [{inp}, #320]",
                    "ldp q22, q23, [{inp}, #352]",
                    "ldp q24, q25, [{inp}, #384]",
                    "ldp q26, q27, [{inp}, #416]",
                    "ldp q28, q29, [{inp}, #448]",
                    "ldp q30, q31, [{inp}, #480]",
                    "ldr {t}, [{inp}, #512]",
                    "msr fpcr, {t}",
                    "ldr {t}, [{inp}, #520]",
                    "msr fpsr, {t}",
                    "mrs {t}, fpcr",
                    "str {t}, [{before}, #512]",
                    "mrs {t}, fpsr",
                    "str {t}, [{before}, #520]",
                    "mov x0, {function}",
                    $insn,
                    "stp q0, q1, [{after}, #0]",
                    "stp q2, q3, [{after}, #32]",
                    "stp q4, q5, [{after}, #64]",
                    "stp q6, q7, [{after}, #96]",
                    "stp q8, q9, [{after}, #128]",
                    "stp q10, q11, [{after}, #160]",
                    "stp q12, q13, [{after}, #192]",
                    "stp q14, q15, [{after}, #224]",
                    "stp q16, q17, [{after}, #256]",
                    "stp q18, q19, [{after}, #288]",
                    "stp q20, q21, [{after}, #320]",
                    "stp q22, q23, [{after}, #352]",
                    "stp q24, q25, [{after}, #384]",
                    "stp q26, q27, [{after}, #416]",
                    "stp q28, q29, [{after}, #448]",
                    "stp q30, q31, [{after}, #480]",
                    "mrs {t}, fpcr",
                    "str {t}, [{after}, #512]",
                    "mrs {t}, fpsr",
                    "str {t}, [{after}, #520]",
                    "msr fpcr, {old_fpcr}",
                    "msr fpsr, {old_fpsr}",
                    inp = in(reg) $input as *const FpState,
                    before = in(reg) $before as *mut FpState,
                    after = in(reg) $after as *mut FpState,
                    function = in(reg) u64::from($function),
                    t = out(reg) _,
                    old_fpcr = out(reg) _,
                    old_fpsr = out(reg) _,
                    out("x0") x0, out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
                    out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                    out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                    out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                    out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
                    out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                    out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
                    out("v30") _, out("v31") _,
                );
            }
            x0
        }};
    }

    fn check_fp(what: &str, input: &FpState, before: &FpState, after: &FpState) {
        match (0..32).find(|&i| after.q[i] != input.q[i]) {
            None => report(true, format_args!("{what}: q0-q31 unchanged")),
            Some(i) => report(false, format_args!("{what}: q{i} is {:#034x}, was {:#034x}", after.q[i], input.q[i])),
        };
        report(after.fpcr == before.fpcr, format_args!("{what}: FPCR {:#x} (was {:#x})", after.fpcr, before.fpcr));
        report(after.fpsr == before.fpsr, format_args!("{what}: FPSR {:#x} (was {:#x})", after.fpsr, before.fpsr));
    }

    fn fpu(_: &Env) {
        let mut input = FpState::ZERO;
        for (i, q) in input.q.iter_mut().enumerate() {
            *q = (u128::from(data_word(2 * i)) << 64) | u128::from(data_word(2 * i + 1));
        }
        input.fpcr = TEST_FPCR;
        input.fpsr = TEST_FPSR;
        let (mut before, mut after) = (FpState::ZERO, FpState::ZERO);

        let x0 = fp_call!("hvc #0", &input, &mut before, &mut after, 0x4b00_0000u32);
        report(
            before.fpcr == TEST_FPCR && before.fpsr == TEST_FPSR,
            format_args!("FPCR/FPSR hold the values written ({:#x}/{:#x})", before.fpcr, before.fpsr),
        );
        report_info(format_args!("hvc 0x4b000000 returned x0 = {x0:#x}"));
        check_fp("hvc 0x4b000000", &input, &before, &after);

        let (mut before, mut after) = (FpState::ZERO, FpState::ZERO);
        let version = smccc::psci::PSCI_VERSION;
        let x0 = match psci::method() {
            ferrovisor_shared::dt::PsciMethod::Hvc => fp_call!("hvc #0", &input, &mut before, &mut after, version),
            ferrovisor_shared::dt::PsciMethod::Smc => fp_call!("smc #0", &input, &mut before, &mut after, version),
        };
        report_info(format_args!("PSCI_VERSION returned x0 = {x0:#x}"));
        check_fp("PSCI_VERSION", &input, &before, &after);
    }

    /// How long every CPU counts.
    const PROGRESS_MS: u64 = 200;
    /// Each CPU must count at least this fraction (1/N) of the busiest CPU's count.
    const PROGRESS_SHARE: u64 = 8;

    static PROGRESS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
    static PROGRESS_DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
    /// The virtual counter at which every CPU starts counting (0: not yet).
    static PROGRESS_START: AtomicU64 = AtomicU64::new(0);

    /// Counts loop rounds from [`PROGRESS_START`] until [`PROGRESS_MS`] of
    /// virtual time passed: a CPU that does not run meanwhile counts little.
    fn count_progress(cpu: usize) {
        let mut start = PROGRESS_START.load(Ordering::SeqCst);
        while start == 0 {
            core::hint::spin_loop();
            start = PROGRESS_START.load(Ordering::SeqCst);
        }
        let limit = ferrovisor_test_guests::cpus::ms_to_ticks(PROGRESS_MS, time::freq());
        let mut n = 0u64;
        while time::counter().saturating_sub(start) < limit {
            n += 1;
            if n.is_multiple_of(1024) {
                PROGRESS[cpu].store(n, Ordering::Relaxed);
            }
        }
        PROGRESS[cpu].store(n, Ordering::SeqCst);
        PROGRESS_DONE[cpu].store(true, Ordering::SeqCst);
    }

    fn progress(env: &Env) {
        let n = smp::count().min(MAX_CPUS);
        PROGRESS_START.store(0, Ordering::SeqCst);
        for cpu in 0..MAX_CPUS {
            PROGRESS[cpu].store(0, Ordering::SeqCst);
            PROGRESS_DONE[cpu].store(false, Ordering::SeqCst);
        }
        for cpu in smp::secondaries().filter(|&c| c < MAX_CPUS) {
            if let Err(e) = smp::start(cpu, count_progress) {
                report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
            }
        }
        let up = time::wait_for(CPU_TIMEOUT_MS, || smp::secondaries().all(smp::is_up));
        report(up.is_some(), format_args!("all {n} CPUs up within {CPU_TIMEOUT_MS} ms"));
        PROGRESS_START.store(time::counter().max(1), Ordering::SeqCst);
        count_progress(env.boot_cpu);
        let done = time::wait_for(CPU_TIMEOUT_MS, || (0..n).all(|c| PROGRESS_DONE[c].load(Ordering::SeqCst)));
        report(done.is_some(), format_args!("every CPU finished its {PROGRESS_MS} ms within {CPU_TIMEOUT_MS} ms more"));
        let counts: [u64; MAX_CPUS] = core::array::from_fn(|c| PROGRESS[c].load(Ordering::SeqCst));
        let max = counts[..n].iter().copied().max().unwrap_or(0);
        let threshold = (max / PROGRESS_SHARE).max(1);
        for cpu in 0..n {
            let finished = PROGRESS_DONE[cpu].load(Ordering::SeqCst);
            report(
                finished && counts[cpu] >= threshold,
                format_args!(
                    "cpu{cpu}: {} rounds in {PROGRESS_MS} ms (at least 1/{PROGRESS_SHARE} of the busiest CPU's {max}: {threshold})",
                    counts[cpu]
                ),
            );
        }
        smp::wait_all_off(CPU_TIMEOUT_MS);
    }
}
