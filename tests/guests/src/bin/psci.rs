//! `psci`: the PSCI and SMCCC calls a guest makes, and their error codes.
//!
//! Every sub-test leaves the secondary CPUs off, so any one can run alone.
//! `affinity-info-off` needs a CPU that was never started: run alone, or
//! first among the CPU tests, as the full run does.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_test_guests::cpus::{race_verdict, unused_mpidr, RaceVerdict};
    use ferrovisor_test_guests::exception::catch;
    use ferrovisor_test_guests::{guest_main, psci, report, report_info, report_skip, rt, smp, time, Env, SubTest};
    use smccc::psci::error::{Error, INVALID_ADDRESS, INVALID_PARAMETERS, NOT_SUPPORTED};
    use smccc::psci::{AffinityState, PSCI_CPU_ON_64};
    use smccc::{Call, Hvc};

    guest_main!(
        "psci",
        &[
            SubTest { name: "invalid-function", run: invalid_function },
            SubTest { name: "psci-version", run: psci_version },
            SubTest { name: "psci-features", run: psci_features },
            SubTest { name: "smccc-version", run: smccc_version },
            SubTest { name: "affinity-info-on", run: affinity_info_on },
            SubTest { name: "affinity-info-off", run: affinity_info_off },
            SubTest { name: "cpu-on-race", run: cpu_on_race },
            SubTest { name: "cpu-on", run: cpu_on },
            SubTest { name: "cpu-off", run: cpu_off },
            SubTest { name: "cpu-on-bad-address", run: cpu_on_bad_address },
            SubTest { name: "cpu-on-bad-mpidr", run: cpu_on_bad_mpidr },
        ]
    );

    const TIMEOUT_MS: u64 = 2000;
    /// The function id kvm-unit-tests' micro-bench calls: no service has it.
    const UNKNOWN_FUNCTION: u32 = 0x4b00_0000;
    /// A PSCI function id in the PSCI range that PSCI does not define.
    const UNKNOWN_PSCI_FUNCTION: u32 = 0x8400_00ff;
    /// A PSCI result no call returns, for "never called".
    const NO_RESULT: i32 = i32::MIN;

    fn code(r: Result<(), Error>) -> i32 {
        match r {
            Ok(()) => 0,
            Err(e) => i64::from(e) as i32,
        }
    }

    /// Makes sure every secondary is off before a test that starts some.
    fn secondaries_off() -> bool {
        report(smp::wait_all_off(TIMEOUT_MS), "every secondary CPU is off to begin with")
    }

    fn invalid_function(_: &Env) {
        let (ret, e) = catch(|| Hvc::call64(UNKNOWN_FUNCTION, [0; 17]));
        if let Some(e) = e {
            report(false, format_args!("hvc #0 was taken at EL1 (EC {:#04x}): no hypervisor answers it", e.ec()));
            return;
        }
        let w0 = psci::w0(ret[0]);
        report(
            w0 == NOT_SUPPORTED,
            format_args!("hvc {UNKNOWN_FUNCTION:#x} returns NOT_SUPPORTED (x0 = {:#x})", ret[0]),
        );
    }

    fn psci_version(_: &Env) {
        match psci::version() {
            Ok(v) => {
                report((v.major, v.minor) >= (1, 0), format_args!("PSCI_VERSION {v} is at least 1.0"));
            }
            Err(e) => {
                report(false, format_args!("PSCI_VERSION failed: {e:?}"));
            }
        }
    }

    fn psci_features(_: &Env) {
        let r = psci::features(PSCI_CPU_ON_64);
        report(r == Ok(0), format_args!("PSCI_FEATURES(CPU_ON_64) = {r:?} (want Ok(0))"));
        let r = psci::features(UNKNOWN_PSCI_FUNCTION);
        report(
            r == Err(Error::NotSupported),
            format_args!("PSCI_FEATURES({UNKNOWN_PSCI_FUNCTION:#x}) = {r:?} (want NOT_SUPPORTED)"),
        );
    }

    fn smccc_version(_: &Env) {
        let w0 = psci::w0(psci::call(psci::SMCCC_VERSION, &[])[0]);
        report(w0 >= 0x1_0001, format_args!("SMCCC_VERSION = {w0:#x} (want at least 1.1 = 0x10001)"));
    }

    fn affinity_info_on(_: &Env) {
        let r = psci::affinity_info(rt::mpidr());
        report(
            r == Ok(AffinityState::On),
            format_args!("AFFINITY_INFO(own MPIDR {:#x}) = {r:?} (want On)", rt::mpidr()),
        );
    }

    fn affinity_info_off(_: &Env) {
        let Some(cpu) = smp::secondaries().filter(|&c| !smp::ever_started(c)).last() else {
            report_skip("no secondary CPU that was never started");
            return;
        };
        let r = smp::affinity(cpu);
        report(r == Ok(AffinityState::Off), format_args!("AFFINITY_INFO(cpu{cpu}, never started) = {r:?} (want Off)"));
    }

    static RACE_READY: AtomicUsize = AtomicUsize::new(0);
    static RACE_GO: AtomicBool = AtomicBool::new(false);
    static RACE_TARGET: AtomicUsize = AtomicUsize::new(0);
    static RACE_RESULT: [AtomicI32; MAX_CPUS] = [const { AtomicI32::new(NO_RESULT) }; MAX_CPUS];
    /// Racers (the boot CPU included) that have made their call.
    static RACE_CALLS: AtomicUsize = AtomicUsize::new(0);
    static RACE_RACERS: AtomicUsize = AtomicUsize::new(0);
    static RACE_TARGET_RUNS: AtomicUsize = AtomicUsize::new(0);

    fn nothing(_: usize) {}

    /// The race's target stays on until every racer has called: once it is
    /// off again, a late `CPU_ON` would rightly succeed.
    fn race_target(_: usize) {
        RACE_TARGET_RUNS.fetch_add(1, Ordering::SeqCst);
        time::wait_for(TIMEOUT_MS, || RACE_CALLS.load(Ordering::SeqCst) >= RACE_RACERS.load(Ordering::SeqCst));
    }

    /// A racer: waits for the start signal, then calls CPU_ON for the target.
    fn racer(cpu: usize) {
        RACE_READY.fetch_add(1, Ordering::SeqCst);
        if time::wait_for(TIMEOUT_MS, || RACE_GO.load(Ordering::SeqCst)).is_some() {
            let r = smp::power_on(RACE_TARGET.load(Ordering::SeqCst));
            RACE_RESULT[cpu].store(code(r), Ordering::SeqCst);
            RACE_CALLS.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn cpu_on_race(env: &Env) {
        let n = smp::count();
        if n < 3 {
            report_skip(format_args!("needs at least 3 CPUs, the VM has {n}"));
            return;
        }
        if !secondaries_off() {
            return;
        }
        let Some(target) = smp::secondaries().next() else { return };
        RACE_READY.store(0, Ordering::SeqCst);
        RACE_GO.store(false, Ordering::SeqCst);
        RACE_TARGET.store(target, Ordering::SeqCst);
        RACE_CALLS.store(0, Ordering::SeqCst);
        RACE_TARGET_RUNS.store(0, Ordering::SeqCst);
        for r in &RACE_RESULT {
            r.store(NO_RESULT, Ordering::SeqCst);
        }
        smp::prepare(target, race_target);
        let racers = || smp::secondaries().filter(move |&c| c != target);
        RACE_RACERS.store(racers().count() + 1, Ordering::SeqCst);
        for cpu in racers() {
            if let Err(e) = smp::start(cpu, racer) {
                report(false, format_args!("cpu{cpu}: CPU_ON failed: {e:?}"));
                return;
            }
        }
        let others = racers().count();
        if time::wait_for(TIMEOUT_MS, || RACE_READY.load(Ordering::SeqCst) == others).is_none() {
            report(false, format_args!("only {} of {others} racers came up", RACE_READY.load(Ordering::SeqCst)));
            return;
        }
        RACE_GO.store(true, Ordering::SeqCst);
        let own = code(smp::power_on(target));
        RACE_RESULT[env.boot_cpu].store(own, Ordering::SeqCst);
        RACE_CALLS.fetch_add(1, Ordering::SeqCst);
        let finished = time::wait_for(TIMEOUT_MS, || racers().all(smp::is_done));
        report(finished.is_some(), format_args!("all {} racers made their call", others + 1));

        let mut results = [NO_RESULT; MAX_CPUS];
        let mut count = 0;
        for cpu in core::iter::once(env.boot_cpu).chain(racers()) {
            results[count] = RACE_RESULT[cpu].load(Ordering::SeqCst);
            report_info(format_args!("cpu{cpu}: CPU_ON(cpu{target}) = {}", results[count]));
            count += 1;
        }
        let verdict = race_verdict(&results[..count]);
        report(
            verdict == RaceVerdict::Good,
            format_args!(
                "{} racing CPU_ONs for cpu{target}: one SUCCESS, the rest ALREADY_ON or ON_PENDING ({verdict:?})",
                count
            ),
        );
        report(smp::wait_done(target, TIMEOUT_MS).is_some(), format_args!("cpu{target} came up"));
        smp::wait_all_off(TIMEOUT_MS);
        let runs = RACE_TARGET_RUNS.load(Ordering::SeqCst);
        report(runs == 1, format_args!("cpu{target} started once (started {runs} times)"));
    }

    fn cpu_on(_: &Env) {
        if smp::count() < 2 {
            report_skip("one CPU: no secondary to start");
            return;
        }
        if !secondaries_off() {
            return;
        }
        for cpu in smp::secondaries() {
            let r = smp::start(cpu, nothing);
            report(r.is_ok(), format_args!("CPU_ON(cpu{cpu}) = {r:?}"));
        }
        for cpu in smp::secondaries() {
            match smp::wait_done(cpu, TIMEOUT_MS) {
                Some(us) => report(true, format_args!("cpu{cpu} came up and ran (after {us} us)")),
                None => report(false, format_args!("cpu{cpu} did not run within {TIMEOUT_MS} ms")),
            };
        }
        smp::wait_all_off(TIMEOUT_MS);
    }

    static OFF_ERROR: AtomicI32 = AtomicI32::new(NO_RESULT);

    fn turn_off(_: usize) {
        OFF_ERROR.store(code(psci::cpu_off()), Ordering::SeqCst);
    }

    fn cpu_off(_: &Env) {
        let Some(cpu) = smp::secondaries().next() else {
            report_skip("one CPU: no secondary to turn off");
            return;
        };
        if !secondaries_off() {
            return;
        }
        OFF_ERROR.store(NO_RESULT, Ordering::SeqCst);
        if let Err(e) = smp::start(cpu, turn_off) {
            report(false, format_args!("CPU_ON(cpu{cpu}) failed: {e:?}"));
            return;
        }
        let up = time::wait_for(TIMEOUT_MS, || smp::is_up(cpu)).is_some();
        report(up, format_args!("cpu{cpu} came up"));
        match smp::wait_off(cpu, TIMEOUT_MS) {
            Some(us) => report(true, format_args!("AFFINITY_INFO(cpu{cpu}) is OFF {us} us after it called CPU_OFF")),
            None => report(
                false,
                format_args!(
                    "cpu{cpu} not OFF after {TIMEOUT_MS} ms: AFFINITY_INFO = {:?}, CPU_OFF returned {}",
                    smp::affinity(cpu),
                    OFF_ERROR.load(Ordering::SeqCst)
                ),
            ),
        };
        let r = smp::start(cpu, nothing);
        report(r.is_ok(), format_args!("CPU_ON(cpu{cpu}) after CPU_OFF = {r:?}"));
        report(smp::wait_done(cpu, TIMEOUT_MS).is_some(), format_args!("cpu{cpu} ran again"));
        smp::wait_all_off(TIMEOUT_MS);
    }

    fn cpu_on_bad_address(env: &Env) {
        let Some(cpu) = smp::secondaries().next() else {
            report_skip("one CPU: no secondary to start");
            return;
        };
        if !secondaries_off() {
            return;
        }
        let ram_end = env.board.memory().iter().map(|r| r.end()).max().unwrap_or(0);
        let mpidr = smp::mpidr_of(cpu).unwrap_or(0);
        let r = code(psci::cpu_on(mpidr, ram_end, 0));
        report(
            r == INVALID_ADDRESS,
            format_args!("CPU_ON(cpu{cpu}, entry {ram_end:#x} past the end of RAM) = {r} (want INVALID_ADDRESS)"),
        );
    }

    fn cpu_on_bad_mpidr(env: &Env) {
        let mpidr = unused_mpidr(env.board.cpus());
        let entry = rt::guest_secondary_entry as *const () as usize as u64;
        let r = code(psci::cpu_on(mpidr, entry, 0));
        report(
            r == INVALID_PARAMETERS,
            format_args!("CPU_ON(MPIDR {mpidr:#x}, in no cpu node) = {r} (want INVALID_PARAMETERS)"),
        );
    }
}
