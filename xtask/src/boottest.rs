//! `cargo xtask test`: boots the image under QEMU in the ways a user would
//! and checks what the console shows.

use std::cell::OnceCell;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::check::{self, BootExpect, BAD_DT, ENTERED_EL1, HALTED};
use crate::dtb::{self, StubFiles, STUB_DTB_ADDR, STUB_IMAGE_ADDR};
use crate::qemu::{self, Board, End, Machine, Outcome, Watch};

/// Each boot gets this long; a boot takes under a second on virt and a few
/// seconds on raspi4b.
const TIMEOUT: Duration = Duration::from_secs(60);
/// After the power-off line QEMU should exit by itself; give it this long.
const POWER_OFF_GRACE: Duration = Duration::from_secs(2);
/// After a line that ends a failed boot, wait this long for silence.
const HALT_GRACE: Duration = Duration::from_secs(3);
/// After `ferrovisor: halted` nothing more comes; stop QEMU at once.
const HALTED_GRACE: Duration = Duration::from_millis(200);
/// Lines of output shown for a failed test.
const TAIL_LINES: usize = 40;

pub struct Ctx {
    pub root: PathBuf,
    pub image: PathBuf,
    /// Generated files: target/xtask-test/.
    pub work: PathBuf,
    /// The xtask binary itself, for the option tests.
    pub xtask: PathBuf,
    /// Why the image could not be built, if it could not.
    pub build_error: Option<String>,
    /// Copy QEMU's output to the terminal as it comes.
    pub verbose: bool,
    stub_files: OnceCell<Result<StubFiles, String>>,
}

impl Ctx {
    pub fn new(root: PathBuf, image: PathBuf, work: PathBuf, xtask: PathBuf, verbose: bool) -> Self {
        Self { root, image, work, xtask, build_error: None, verbose, stub_files: OnceCell::new() }
    }
}

/// Why a test failed, with the output to show.
pub struct Failure {
    pub reason: String,
    pub log: String,
}

impl Failure {
    pub fn plain(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), log: String::new() }
    }
}

type TestFn = Box<dyn Fn(&Ctx) -> Result<(), Failure>>;

pub struct Test {
    pub name: String,
    /// Needs the packed image.
    pub boots: bool,
    run: TestFn,
}

pub fn all() -> Vec<Test> {
    let t =
        |name: &str, boots, run: fn(&Ctx) -> Result<(), Failure>| Test { name: name.into(), boots, run: Box::new(run) };
    let mut tests = vec![
        t("boot-virt-gicv2", true, |c| boot_virt(c, 2, "GICv2")),
        t("boot-virt-gicv3", true, |c| boot_virt(c, 3, "GICv3 (ITS: yes, GICv4.1: no)")),
        t("boot-virt-gicv4", true, |c| boot_virt(c, 4, "GICv4 (ITS: yes, GICv4.1: no)")),
        t("boot-raspi4b", true, boot_raspi4b),
        t("boot-raspi4b-no-maintenance-irq", true, boot_raspi4b_no_maintenance),
        t("boot-virt-el1", true, boot_virt_el1),
        t("dtb-stub-valid", true, dtb_stub_valid),
        t("dtb-no-memory", true, |c| dtb_bad(c, |f| f.no_memory.clone())),
        t("dtb-truncated", true, |c| dtb_bad(c, |f| f.truncated.clone())),
        t("run-options", false, run_options),
        t("build-check-virt-gicv2", true, |c| build_check(c, Board::Virt, 2)),
        t("build-check-virt-gicv3", true, |c| build_check(c, Board::Virt, 3)),
        t("build-check-virt-gicv4", true, |c| build_check(c, Board::Virt, 4)),
        t("build-check-raspi4b", true, |c| build_check(c, Board::Raspi4b, 2)),
    ];
    tests.push(Test { name: "sdcard-image".into(), boots: true, run: Box::new(crate::sdcard::test_image) });
    tests.push(Test { name: "run-guest-status".into(), boots: true, run: Box::new(crate::guesttest::run_status) });
    let guest_tests = [3, 2, 4]
        .into_iter()
        .flat_map(|gic| crate::guesttest::tests(gic).into_iter().map(move |t| (gic, t)))
        .chain(crate::guesttest::raspi_tests().into_iter().map(|t| (2, t)));
    for (gic, t) in guest_tests {
        let (board, smp, vms) = (t.board, t.smp, t.vms);
        tests.push(Test {
            name: t.name,
            boots: true,
            run: Box::new(move |c| crate::guesttest::run(c, board, gic, smp, &vms)),
        });
    }
    for (name, config) in crate::fuzz::suite() {
        tests.push(Test { name, boots: true, run: Box::new(move |c| crate::fuzz::run(c, &config, false)) });
    }
    tests.extend(crate::linux::tests().into_iter().map(|(name, boots, run)| Test { name, boots, run }));
    tests
}

/// Runs `tests` one after the other, printing a line for each; returns
/// (passed, failed).
pub fn run_all(ctx: &Ctx, tests: &[Test]) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for test in tests {
        if ctx.verbose {
            println!("test {} ...", test.name);
        }
        let start = Instant::now();
        let result = match (&ctx.build_error, test.boots) {
            (Some(e), true) => Err(Failure::plain(format!("the image did not build: {e}"))),
            _ => (test.run)(ctx),
        };
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({secs:.1} s)", test.name);
            }
            Err(f) => {
                failed += 1;
                println!("test {} ... FAILED ({secs:.1} s)", test.name);
                println!("    reason: {}", f.reason);
                if !f.log.trim().is_empty() {
                    println!("    ---- last {TAIL_LINES} lines of output ----");
                    for line in f.log.lines() {
                        println!("    | {line}");
                    }
                    println!("    ----");
                }
            }
        }
    }
    (passed, failed)
}

fn watch(ctx: &Ctx) -> Watch {
    Watch { echo: ctx.verbose, interactive: false, timeout: Some(TIMEOUT), stop_on: end_line, progress: None }
}

fn boot(args: &[String], watch: &Watch) -> Result<Outcome, Failure> {
    qemu::run(args, watch).map_err(|e| Failure::plain(e.to_string()))
}

fn fail(outcome: &Outcome, reason: String) -> Failure {
    Failure { reason, log: outcome.tail(TAIL_LINES) }
}

/// Lines after which a boot is over, and how long QEMU may stay quiet after
/// them before it is stopped.
pub fn end_line(line: &str) -> Option<Duration> {
    if check::power_off_line(line).is_some() {
        Some(POWER_OFF_GRACE)
    } else if line.contains(HALTED) {
        Some(HALTED_GRACE)
    } else if line.contains(BAD_DT) || line.contains(ENTERED_EL1) {
        Some(HALT_GRACE)
    } else {
        None
    }
}

/// Checks a full boot: the console, then how QEMU ended. On virt the
/// semihosting exit must end QEMU with status 0; raspi4b may instead have to
/// be stopped after the power-off line.
fn judge_boot(o: &Outcome, expect: &BootExpect, may_need_stop: bool) -> Result<(), Failure> {
    let console = check::check_boot(&o.output, expect);
    let end = match o.end {
        End::Exited(Some(0)) => Ok(()),
        End::Stopped if may_need_stop => Ok(()),
        End::Stopped => Err("QEMU did not exit by itself after the last line (stopped it)".to_string()),
        End::Exited(Some(c)) => Err(format!("QEMU exited with status {c}")),
        End::Exited(None) => Err("QEMU was killed by a signal".to_string()),
        End::TimedOut => Err(format!("timeout after {}s", TIMEOUT.as_secs())),
    };
    match (console, end) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(fail(o, a)),
        (Err(a), Err(b)) => Err(fail(o, format!("{b}; {a}"))),
    }
}

fn boot_virt(ctx: &Ctx, gic: u8, gic_line: &str) -> Result<(), Failure> {
    let m = Machine { gic, smp: 4, ..Machine::default() };
    let o = boot(&m.args(&ctx.image, None), &watch(ctx))?;
    judge_boot(&o, &BootExpect::new("QEMU virt", gic_line, 4), false)
}

/// The Raspberry Pi 4 device tree, fetched into the cache when missing.
pub fn pi_dtb(root: &std::path::Path) -> Result<PathBuf, String> {
    let script = root.join("scripts/fetch-pi-dtb");
    let out =
        Command::new(&script).arg("--quiet").output().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        return Err(format!(
            "scripts/fetch-pi-dtb failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(path))
}

/// An older Pi device tree without the GIC's maintenance interrupt: the
/// hypervisor says it takes INTID 25, and the built-in set still runs.
fn boot_raspi4b_no_maintenance(ctx: &Ctx) -> Result<(), Failure> {
    let dtb = pi_dtb(&ctx.root).map_err(Failure::plain)?;
    let dtb = crate::dtb::pi_dtb_without_maintenance(&dtb, &ctx.work).map_err(Failure::plain)?;
    let m = Machine { board: Board::Raspi4b, smp: qemu::RASPI_CPUS, ..Machine::default() };
    let o = boot(&m.args(&ctx.image, Some(&dtb)), &watch(ctx))?;
    judge_boot(&o, &BootExpect::new("Raspberry Pi 4", "GICv2", 4), true)?;
    let want = "names no GIC maintenance interrupt: taking INTID 25";
    if !o.output.lines().any(|l| l.contains(want)) {
        return Err(fail(&o, format!("no warning containing `{want}`")));
    }
    if !o.output.lines().any(|l| l.starts_with("vm selftest: ended (system off), EXIT: STATUS=1")) {
        return Err(fail(&o, "the built-in selftest VM did not pass".into()));
    }
    Ok(())
}

fn boot_raspi4b(ctx: &Ctx) -> Result<(), Failure> {
    let dtb = pi_dtb(&ctx.root).map_err(Failure::plain)?;
    let m = Machine { board: Board::Raspi4b, smp: qemu::RASPI_CPUS, ..Machine::default() };
    let o = boot(&m.args(&ctx.image, Some(&dtb)), &watch(ctx))?;
    judge_boot(&o, &BootExpect::new("Raspberry Pi 4", "GICv2", 4), true)
}

/// `buildcheck`: a VM built with each step failing in turn gives back all
/// it took each time (frames, heap, ITS IDs), then the built-in set runs.
/// On a GICv4 the steps include the direct-injection vPEs.
fn build_check(ctx: &Ctx, board: Board, gic: u8) -> Result<(), Failure> {
    let (dtb, smp) = match board {
        Board::Raspi4b => (Some(pi_dtb(&ctx.root).map_err(Failure::plain)?), qemu::RASPI_CPUS),
        Board::Virt => (None, 4),
    };
    let append = format!("{} buildcheck", qemu::DEFAULT_BOOTARGS);
    let m = Machine { board, gic, smp, append, ..Machine::default() };
    let o = boot(&m.args(&ctx.image, dtb.as_deref()), &watch(ctx))?;
    if let Some(l) = o.output.lines().find(|l| l.starts_with("build-check: FAIL")) {
        return Err(fail(&o, format!("`{l}`")));
    }
    // Eleven steps, from the guest RAM to the VM as a whole (`Vm::build`).
    let passed = o.output.lines().find_map(|l| l.strip_prefix("build-check: PASS ("));
    let steps: u32 = match passed.and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()) {
        Some(n) => n,
        None => return Err(fail(&o, "no `build-check: PASS (N steps, ...)` line".into())),
    };
    if steps < 11 {
        return Err(fail(&o, format!("only {steps} build steps were failed on purpose; the build has 11")));
    }
    if !o.output.lines().any(|l| l.starts_with("vm selftest: ended (system off), EXIT: STATUS=1")) {
        return Err(fail(&o, "the built-in selftest VM did not pass after the build check".into()));
    }
    Ok(())
}

/// Without virtualization=on the image starts at EL1: it must say so and stop
/// (it may fail to power off, so QEMU is stopped after a quiet spell).
fn boot_virt_el1(ctx: &Ctx) -> Result<(), Failure> {
    let m = Machine { virtualization: false, ..Machine::default() };
    let o = boot(&m.args(&ctx.image, None), &watch(ctx))?;
    if !o.output.lines().any(|l| l.contains(ENTERED_EL1)) {
        return Err(fail(&o, format!("no `{ENTERED_EL1}` line")));
    }
    if o.end == End::TimedOut {
        return Err(fail(&o, format!("kept printing for {}s after `{ENTERED_EL1}`", TIMEOUT.as_secs())));
    }
    Ok(())
}

fn stub_machine() -> Machine {
    Machine { gic: 3, smp: 1, ..Machine::default() }
}

fn stub_files(ctx: &Ctx) -> Result<&StubFiles, Failure> {
    ctx.stub_files
        .get_or_init(|| dtb::make_stub_files(&ctx.work, &stub_machine()))
        .as_ref()
        .map_err(|e| Failure::plain(e.clone()))
}

fn stub_args(ctx: &Ctx, files: &StubFiles, dtb: &std::path::Path) -> Vec<String> {
    qemu::stub_boot_args(&stub_machine(), &files.stub, &ctx.image, STUB_IMAGE_ADDR, dtb, STUB_DTB_ADDR)
}

/// The control for the broken-tree tests: the stub path with QEMU's own tree
/// boots normally.
fn dtb_stub_valid(ctx: &Ctx) -> Result<(), Failure> {
    let files = stub_files(ctx)?;
    let o = boot(&stub_args(ctx, files, &files.valid), &watch(ctx))?;
    judge_boot(&o, &BootExpect::new("QEMU virt", "GICv3 (ITS: yes, GICv4.1: no)", 1), false)
}

/// A broken device tree must produce `ferrovisor: bad device tree: ...` and
/// an end (power-off with a nonzero status, or a halt), not a hang.
fn dtb_bad(ctx: &Ctx, pick: fn(&StubFiles) -> PathBuf) -> Result<(), Failure> {
    let files = stub_files(ctx)?;
    let o = boot(&stub_args(ctx, files, &pick(files)), &watch(ctx))?;
    check::check_bad_dt(&o.output).map_err(|e| fail(&o, e))?;
    if o.end == End::TimedOut {
        return Err(fail(&o, format!("kept printing for {}s after `{BAD_DT}`", TIMEOUT.as_secs())));
    }
    Ok(())
}

/// `scripts/run`'s option handling (through the xtask binary it runs).
fn run_options(ctx: &Ctx) -> Result<(), Failure> {
    let run = |args: &[&str]| -> Result<(i32, String, String), Failure> {
        let out = Command::new(&ctx.xtask)
            .arg("run")
            .args(args)
            .output()
            .map_err(|e| Failure::plain(format!("cannot run {}: {e}", ctx.xtask.display())))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let expect = |args: &[&str], code: i32, stream_has: (bool, &str)| -> Result<(), Failure> {
        let (got, stdout, stderr) = run(args)?;
        let (on_stdout, needle) = stream_has;
        let text = if on_stdout { &stdout } else { &stderr };
        if got != code || !text.contains(needle) {
            return Err(Failure {
                reason: format!(
                    "`scripts/run {}`: expected exit {code} and `{needle}` on {}, got exit {got}",
                    args.join(" "),
                    if on_stdout { "stdout" } else { "stderr" }
                ),
                log: format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
            });
        }
        Ok(())
    };
    // The script itself once (it runs scripts/setup and cargo), then the
    // option parsing through the binary it ends in.
    let out = Command::new(ctx.root.join("scripts/run"))
        .arg("--help")
        .output()
        .map_err(|e| Failure::plain(format!("cannot run scripts/run: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("usage: scripts/run") {
        return Err(Failure {
            reason: format!("`scripts/run --help`: expected exit 0 and the usage, got {}", out.status),
            log: format!("stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    expect(&["--help"], 0, (true, "usage: scripts/run"))?;
    expect(&["--board", "nope"], 2, (false, "usage: scripts/run"))?;
    expect(&["--board", "nope"], 2, (false, "unknown board `nope`"))?;
    expect(&["--board=raspi4b", "--smp", "2"], 2, (false, "4 CPUs"))?;
    expect(&["--gic", "5"], 2, (false, "--gic"))?;
    expect(&["--smp", "two"], 2, (false, "--smp"))?;
    expect(&["--frobnicate"], 2, (false, "unknown option `--frobnicate`"))?;
    expect(&["--timeout"], 2, (false, "--timeout needs a value"))?;
    // Guest options: checked before anything is built.
    expect(&["--mem", "64"], 2, (false, "the board's RAM is --ram now"))?;
    expect(&["--guest", "k", "--vcpus", "0"], 2, (false, "--vcpus must be at least 1"))?;
    expect(&["--guest", "/nonexistent/guest.bin"], 2, (false, "--guest /nonexistent/guest.bin: "))?;
    Ok(())
}
