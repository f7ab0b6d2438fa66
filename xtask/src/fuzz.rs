//! Fuzz runs: the `fuzz` test guest (a seeded hostile guest,
//! `tests/guests/src/bin/fuzz.rs`) as a VM beside a well-behaved control VM
//! (the `timer` guest, repeating its sub-tests), for the suite's bounded
//! runs (`guest-fuzz-*`) and for `cargo xtask fuzz`'s campaigns.
//!
//! A run passes when both VMs pass (every `PASS`/`FAIL` line, `EXIT:
//! STATUS=1`, their ends, the power-off status 0, as for every guest test),
//! the fuzz VM ran every operation it was given, reset as often as it was
//! told, no line of the hypervisor's says it panicked or halted, and the
//! watchdog on the fuzz VM's progress lines never fired. Every failure
//! names the seed and the command that repeats the run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::boottest::{Ctx, Failure};
use crate::guesttest::{self, Vm};
use crate::qemu::{Beat, Board, Machine, Progress, Watch};

/// The fuzz VM's name, and so the prefix of its lines.
const FUZZ: &str = "fuzz";
/// The control VM's.
const CONTROL: &str = "control";
/// A progress line of the fuzz VM (`INFO: fuzz: ops: progress: seed S op N of M`).
const BEAT: &str = "fuzz: INFO: fuzz: ops: progress: ";
/// Lines of the hypervisor's that end a run: a panic of either half, el2
/// halting, an exception in the host.
const FATAL: [&str; 4] = ["ferrovisor: panic", "el2: panic", "halted", "unexpected exception in the host"];

/// One fuzz run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub board: Board,
    pub gic: u8,
    pub smp: u32,
    pub seed: u64,
    pub ops: u64,
    pub resets: u64,
    pub start: u64,
    pub trace: Option<u64>,
    pub vcpus: u32,
    /// How long the control VM repeats its sub-tests (its counter time).
    pub control_ms: u64,
    pub stall: Duration,
    pub timeout: Duration,
    pub host_append: String,
}

impl Config {
    fn new(board: Board, gic: u8, seed: u64, ops: u64, resets: u64) -> Self {
        Self {
            board,
            gic,
            smp: 4,
            seed,
            ops,
            resets,
            start: 0,
            trace: None,
            vcpus: 2,
            control_ms: 5000,
            stall: Duration::from_secs(30),
            timeout: Duration::from_secs(180),
            host_append: crate::qemu::DEFAULT_BOOTARGS.into(),
        }
    }

    /// The board as `scripts/fuzz` names it.
    fn describe(&self) -> String {
        match self.board {
            Board::Virt => format!("virt GICv{} -smp {}", self.gic, self.smp),
            Board::Raspi4b => "raspi4b (GIC-400) -smp 4".into(),
        }
    }

    /// The fuzz guest's bootargs.
    pub fn bootargs(&self) -> String {
        let mut a = format!("seed={} ops={} resets={}", self.seed, self.ops, self.resets);
        if self.start != 0 {
            a += &format!(" start={}", self.start);
        }
        if let Some(t) = self.trace {
            a += &format!(" trace={t}");
        }
        a
    }

    /// The command that repeats this run.
    pub fn command(&self) -> String {
        let mut c = format!("scripts/fuzz --seed {} --ops {}", self.seed, self.ops);
        match self.board {
            Board::Virt => c += &format!(" --gic {}", self.gic),
            Board::Raspi4b => c += " --board raspi4b",
        }
        if self.board == Board::Virt && self.smp != 4 {
            c += &format!(" --smp {}", self.smp);
        }
        if self.vcpus != 2 {
            c += &format!(" --vcpus {}", self.vcpus);
        }
        c += &format!(" --resets {}", self.resets);
        c
    }

    fn vms(&self) -> Vec<Vm> {
        let mut fuzz = Vm::new(FUZZ, "fuzz", &self.bootargs(), self.vcpus);
        fuzz.expect = &["PASS: fuzz: selfcheck: ", "PASS: fuzz: ops: ", "PASS: fuzz: integrity: "];
        let mut control = Vm::new(CONTROL, "timer", &format!("repeat-ms={}", self.control_ms), 2);
        control.expect = &["PASS: timer: vtimer: ", "PASS: timer: ptimer: ", "PASS: timer: wfi: "];
        vec![fuzz, control]
    }
}

/// The suite's runs: on each board and GIC, a seed of its own, a bounded
/// number of operations (each run takes 5-15 s under TCG) and one reset.
pub fn suite() -> Vec<(String, Config)> {
    vec![
        ("guest-fuzz-gicv3".into(), Config::new(Board::Virt, 3, 1, 20_000, 1)),
        ("guest-fuzz-gicv2".into(), Config::new(Board::Virt, 2, 2, 20_000, 1)),
        ("guest-fuzz-gicv4".into(), Config::new(Board::Virt, 4, 3, 20_000, 1)),
        ("guest-fuzz-raspi4b".into(), Config::new(Board::Raspi4b, 2, 4, 20_000, 1)),
    ]
}

/// The VMs of the suite's runs, for reference.rs's check that every guest
/// its lists name is one the tests run.
#[cfg(test)]
pub fn suite_vms() -> Vec<Vm> {
    suite().into_iter().flat_map(|(_, c)| c.vms()).collect()
}

fn beat(line: &str) -> Beat {
    if line.starts_with(BEAT) {
        Beat::Alive
    } else if line.starts_with("fuzz: EXIT: STATUS=") || line.starts_with("vm fuzz: ended") {
        Beat::Finished
    } else {
        Beat::Other
    }
}

/// What the run's console says beyond the guest tests' checks: no fatal
/// line of the hypervisor's, the fuzz VM's count of operations and resets.
///
/// # Errors
/// The first thing wrong.
pub fn judge(output: &str, stalled: Option<&str>, c: &Config) -> Result<(), String> {
    let hypervisor = |l: &&str| !l.starts_with("fuzz: ") && !l.starts_with("control: ");
    if let Some(line) = output.lines().filter(hypervisor).find(|l| FATAL.iter().any(|f| l.contains(f))) {
        return Err(format!("the hypervisor failed: `{line}`"));
    }
    if let Some(last) = stalled {
        let last = if last.is_empty() { "none" } else { last };
        return Err(format!(
            "watchdog: no progress line from vm fuzz for {} s (the last: {last}); rerun with --start and --trace \
             near that op to see the one that hangs",
            c.stall.as_secs()
        ));
    }
    let want = format!(
        "fuzz: PASS: fuzz: ops: seed {}: {} operations from op {} to {} on the boot CPU",
        c.seed,
        c.ops - c.resets.min(c.ops),
        c.start,
        c.start + c.ops
    );
    if !output.lines().any(|l| l.starts_with(&want)) {
        return Err(format!("no line starting `{want}`"));
    }
    // The hypervisor's log line (`[INFO  cpu3] vm fuzz: reset by vcpu 0`).
    let resets = output.lines().filter(hypervisor).filter(|l| l.contains("vm fuzz: reset by vcpu ")).count() as u64;
    if resets != c.resets {
        return Err(format!("vm fuzz reset {resets} times, not {}", c.resets));
    }
    Ok(())
}

/// Runs `c` and checks it all; the failure names the seed and the command.
pub fn run(ctx: &Ctx, c: &Config, print_beats: bool) -> Result<(), Failure> {
    let machine = Machine {
        board: c.board,
        gic: c.gic,
        smp: if c.board == Board::Raspi4b { crate::qemu::RASPI_CPUS } else { c.smp },
        append: c.host_append.clone(),
        ..Machine::default()
    };
    let watch = Watch {
        echo: ctx.verbose,
        interactive: false,
        timeout: Some(c.timeout),
        stop_on: crate::boottest::end_line,
        progress: Some(Progress { classify: beat, stall: c.stall, print: print_beats }),
    };
    let vms = c.vms();
    let seeded = |f: Failure| Failure {
        reason: format!("seed {}, {} ops on {}: {} (repeat: {})", c.seed, c.ops, c.describe(), f.reason, c.command()),
        log: f.log,
    };
    let o = guesttest::boot(ctx, &machine, &vms, &watch).map_err(seeded)?;
    // The whole console, which can be long: the report shows its tail.
    let board = match c.board {
        Board::Virt => format!("virt-gicv{}", c.gic),
        Board::Raspi4b => "raspi4b".into(),
    };
    let console = ctx.work.join(format!("fuzz-{board}-seed-{}.log", c.seed));
    let saved = std::fs::write(&console, &o.output).is_ok();
    let with_console = |f: Failure| {
        let f = seeded(f);
        if saved {
            Failure { reason: format!("{}; the console is in {}", f.reason, console.display()), log: f.log }
        } else {
            f
        }
    };
    judge(&o.output, o.stalled.as_deref(), c).map_err(|reason| with_console(Failure { reason, log: o.tail(60) }))?;
    guesttest::check(&o, &vms).map_err(with_console)?;
    Ok(())
}

pub const USAGE: &str = "\
usage: scripts/fuzz --seed N --ops M [options]     (the same as: cargo xtask fuzz ...)

Boots the hypervisor with the `fuzz` test guest (a seeded hostile guest:
random HVC/SMC calls, system register accesses, MMIO of every width and form
to every device and outside the map, ITS floods, timer programming, WFI/WFE/
WFIT, PSCI calls with bad arguments, resets) beside a control VM (the `timer`
guest, repeating its sub-tests), and says whether the run was clean: both VMs
passed, every operation ran, no hypervisor panic, no stall.

  --seed N          the seed (default: from the clock, printed)
  --ops M           operations on the fuzz VM's boot CPU (default 100000)
  --gic 2|3|4       the GIC on virt (default 3)
  --board B         virt or raspi4b (default virt)
  --resets R        SYSTEM_RESETs at operations the seed picks (default 1)
  --vcpus N         the fuzz VM's vCPUs, 1 to 4 (default 2)
  --smp N           the board's CPUs on virt, 1 to 8 (default 4; fewer than the
                    VMs' 2 + N vCPUs time-slices them)
  --start K         begin at operation K (each operation's randomness is its own)
  --trace K         the guest prints every operation from K on
  --control-secs S  how long the control VM repeats its tests (default: ops / 2000)
  --stall S         fail if the fuzz VM prints no progress line for S seconds (default 30)
  --timeout S       give up after S seconds (default: 300 + ops / 500)
  --host-append A   the hypervisor's command line (default \"loglevel=info semihosting-exit\")
  --no-build        use target/ferrovisor.img and target/guests as they are
  --verbose         show the whole console as it comes (else the progress lines)

exit status: 0 for a clean run, 1 for a failure (the seed is printed), 2 for
a wrong option.";

struct Opts {
    config: Config,
    no_build: bool,
    verbose: bool,
}

fn parse(args: Vec<String>) -> Result<Option<Opts>, String> {
    let mut c = Config::new(Board::Virt, 3, 0, 100_000, 1);
    let (mut seed, mut control, mut timeout) = (None, None, None);
    let (mut no_build, mut verbose) = (false, false);
    let mut a = crate::Args::new(args);
    while let Some(opt) = a.next_opt()? {
        match opt.as_str() {
            "--help" | "-h" => return Ok(None),
            "--seed" => seed = Some(a.number(&opt)?),
            "--ops" => c.ops = a.number(&opt)?,
            "--gic" => c.gic = a.number(&opt)?,
            "--board" => {
                let v = a.value(&opt)?;
                c.board = Board::parse(&v).ok_or_else(|| format!("unknown board `{v}` (virt or raspi4b)"))?;
            }
            "--resets" => c.resets = a.number(&opt)?,
            "--smp" => c.smp = a.number(&opt)?,
            "--vcpus" => c.vcpus = a.number(&opt)?,
            "--start" => c.start = a.number(&opt)?,
            "--trace" => c.trace = Some(a.number(&opt)?),
            "--control-secs" => control = Some(a.number::<u64>(&opt)?),
            "--stall" => c.stall = Duration::from_secs(a.number(&opt)?),
            "--timeout" => timeout = Some(a.number::<u64>(&opt)?),
            "--host-append" => c.host_append = a.value(&opt)?,
            "--no-build" | "--verbose" | "-v" => {
                a.flag(&opt)?;
                if opt == "--no-build" {
                    no_build = true;
                } else {
                    verbose = true;
                }
            }
            _ => return Err(format!("unknown option `{opt}`")),
        }
    }
    if c.ops == 0 {
        return Err("--ops must be at least 1".into());
    }
    if !(2..=4).contains(&c.gic) {
        return Err(format!("--gic must be 2, 3 or 4, not {}", c.gic));
    }
    if c.board == Board::Raspi4b {
        c.gic = 2;
        c.smp = crate::qemu::RASPI_CPUS;
    }
    if !(1..=8).contains(&c.smp) {
        return Err(format!("--smp must be 1 to 8, not {}", c.smp));
    }
    if !(1..=4).contains(&c.vcpus) {
        return Err(format!("--vcpus must be 1 to 4, not {}", c.vcpus));
    }
    if c.resets > 8 {
        return Err(format!("--resets must be 0 to 8, not {}", c.resets));
    }
    if c.stall.is_zero() {
        return Err("--stall must be at least 1".into());
    }
    c.seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    c.control_ms = control.unwrap_or(c.ops / 2000).max(1) * 1000;
    c.timeout = Duration::from_secs(timeout.unwrap_or(300 + c.ops / 500));
    Ok(Some(Opts { config: c, no_build, verbose }))
}

/// `cargo xtask fuzz ARGS`.
pub fn cmd(args: Vec<String>) -> ExitCode {
    let o = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("scripts/fuzz: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = crate::root();
    let work = crate::target_dir(&root).join("xtask-fuzz");
    let xtask = std::env::current_exe().unwrap_or_default();
    let ctx = Ctx::new(root.clone(), crate::image_path(&root), work, xtask, o.verbose);
    if !o.no_build {
        if let Err(e) = crate::build(&root, false) {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    }
    let c = &o.config;
    println!(
        "fuzz: seed {}, {} ops from op {}, {} resets, on {}: vm fuzz ({} vCPUs, bootargs \"{}\") beside vm control \
         (timer, 2 vCPUs, repeat-ms={})",
        c.seed,
        c.ops,
        c.start,
        c.resets,
        c.describe(),
        c.vcpus,
        c.bootargs(),
        c.control_ms
    );
    let started = Instant::now();
    let result = run(&ctx, c, !o.verbose);
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!(
                "fuzz: PASS: seed {}, {} ops on {} in {secs:.1} s ({:.0} ops/s); both VMs passed, no hypervisor panic",
                c.seed,
                c.ops,
                c.describe(),
                c.ops as f64 / secs
            );
            ExitCode::SUCCESS
        }
        Err(f) => {
            println!("fuzz: FAIL after {secs:.1} s: {}", f.reason);
            for line in f.log.lines() {
                println!("    | {line}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Option<Opts>, String> {
        parse(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn options() {
        let o = args(&["--seed", "7", "--ops", "1000000", "--gic=2"]).unwrap().unwrap();
        let c = &o.config;
        assert_eq!((c.seed, c.ops, c.gic, c.board, c.resets), (7, 1_000_000, 2, Board::Virt, 1));
        assert_eq!(c.control_ms, 500_000);
        assert_eq!(c.timeout, Duration::from_secs(2300));
        assert_eq!(c.bootargs(), "seed=7 ops=1000000 resets=1");
        assert_eq!(c.command(), "scripts/fuzz --seed 7 --ops 1000000 --gic 2 --resets 1");
        let o = args(&["--seed=1", "--board", "raspi4b", "--resets", "0", "--start", "5", "--trace", "9"])
            .unwrap()
            .unwrap();
        assert_eq!((o.config.board, o.config.gic), (Board::Raspi4b, 2));
        assert_eq!(o.config.bootargs(), "seed=1 ops=100000 resets=0 start=5 trace=9");
        assert_eq!(o.config.command(), "scripts/fuzz --seed 1 --ops 100000 --board raspi4b --resets 0");
        let o = args(&["--seed=1", "--smp", "2", "--vcpus", "4"]).unwrap().unwrap();
        assert_eq!(o.config.command(), "scripts/fuzz --seed 1 --ops 100000 --gic 3 --smp 2 --vcpus 4 --resets 1");
        assert!(args(&["--help"]).unwrap().is_none());
        for (a, msg) in [
            (&["--gic", "5"][..], "--gic must be 2, 3 or 4"),
            (&["--ops", "0"], "--ops must be at least 1"),
            (&["--vcpus", "9"], "--vcpus must be 1 to 4"),
            (&["--smp", "0"], "--smp must be 1 to 8"),
            (&["--board", "pi5"], "unknown board `pi5`"),
            (&["--seed"], "--seed needs a value"),
            (&["--frob"], "unknown option `--frob`"),
        ] {
            let e = args(a).err().unwrap();
            assert!(e.contains(msg), "{a:?}: {e}");
        }
        assert!(args(&[]).unwrap().unwrap().config.seed > 0, "a seed from the clock");
    }

    const GOOD: &str = "\
fuzz: INFO: fuzz: ops: progress: seed 3 op 1000 of 2000 (2000 ops/s)
[INFO  cpu2] vm fuzz: reset by vcpu 0
fuzz: PASS: fuzz: ops: seed 3: 1999 operations from op 0 to 2000 on the boot CPU, 300 on secondaries
fuzz: EXIT: STATUS=1
";

    #[test]
    fn judging() {
        let c = Config::new(Board::Virt, 3, 3, 2000, 1);
        assert_eq!(judge(GOOD, None, &c), Ok(()));
        let e = judge(&format!("{GOOD}ferrovisor: panic on cpu1: oops\n"), None, &c).unwrap_err();
        assert!(e.contains("the hypervisor failed: `ferrovisor: panic on cpu1: oops`"), "{e}");
        let e = judge(&format!("{GOOD}el2: CPU Some(2) halted\n"), None, &c).unwrap_err();
        assert!(e.contains("halted"), "{e}");
        // A guest line that happens to say "halted" is the guest's business.
        assert_eq!(judge(&format!("{GOOD}fuzz: INFO: fuzz: ops: halted\n"), None, &c), Ok(()));
        let e = judge(GOOD, Some("fuzz: INFO: fuzz: ops: progress: seed 3 op 1000"), &c).unwrap_err();
        assert!(e.starts_with("watchdog: no progress line from vm fuzz for 30 s (the last: fuzz: INFO"), "{e}");
        assert!(judge(GOOD, Some(""), &c).unwrap_err().contains("(the last: none)"));
        let short = GOOD.replace("1999 operations", "1500 operations");
        assert!(judge(&short, None, &c)
            .unwrap_err()
            .starts_with("no line starting `fuzz: PASS: fuzz: ops: seed 3: 1999"));
        let e = judge(&GOOD.replace("[INFO  cpu2] vm fuzz: reset by vcpu 0\n", ""), None, &c).unwrap_err();
        assert_eq!(e, "vm fuzz reset 0 times, not 1");
    }

    #[test]
    fn beats() {
        assert_eq!(beat("fuzz: INFO: fuzz: ops: progress: seed 1 op 5 of 9 (1 ops/s)"), Beat::Alive);
        assert_eq!(beat("fuzz: EXIT: STATUS=3"), Beat::Finished);
        assert_eq!(beat("control: INFO: fuzz: ops: progress: "), Beat::Other);
        assert_eq!(beat("[WARN  cpu1] vm fuzz vcpu 0: read from IPA 0x20"), Beat::Other);
    }

    #[test]
    fn the_suite_covers_every_board_and_gic() {
        let s = suite();
        for (gic, board) in [(2, Board::Virt), (3, Board::Virt), (4, Board::Virt), (2, Board::Raspi4b)] {
            assert!(s.iter().any(|(n, c)| n.contains("fuzz") && c.gic == gic && c.board == board), "{gic} {board:?}");
        }
        let mut seeds: Vec<u64> = s.iter().map(|(_, c)| c.seed).collect();
        seeds.dedup();
        assert_eq!(seeds.len(), s.len(), "a seed of its own each");
    }
}
