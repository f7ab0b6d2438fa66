//! `cargo xtask bench`: boots the `micro-bench` test guest several times, as a
//! VM under the hypervisor or (`--bare`) alone on QEMU, with `-icount
//! shift=0,sleep=off` so the guest's counter counts instructions (docs/measuring.md §1),
//! and prints each operation's cost over the runs. Nothing here judges the
//! figures: a run fails only when the guest or the hypervisor does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::guestcfg::{self, GuestSpec};
use crate::qemu::{self, End, Machine, Watch};

pub const USAGE: &str = "\
usage: scripts/bench [options]        (the same as: cargo xtask bench [options])

Boots the micro-bench test guest (tests/guests, 2 vCPUs) on QEMU virt with
-cpu max -smp 2 and -icount shift=0,sleep=off, as a VM under the hypervisor,
RUNS times, and prints each operation's ns_per_op over the runs: the median,
the least and greatest (with their spread around the median), the runs. With
-icount shift=0 one nanosecond of guest time is one instruction.

Every run must print every operation: hvc, mmio_read_user, mmio_read_vgic,
eoi, ipi and timer (the receiver in WFI), ipi_busy and timer_busy (the
receiver busy-waiting, as kvm-unit-tests' micro-bench defines them), and with
GICv3 and GICv4 lpi.

  --runs N     boot it N times (default: 5)
  --gic 2|3|4  the GIC version (default: 3)
  --bare       run the guest alone on QEMU, without the hypervisor (the floor)
  --fastpath on|off
               off boots the hypervisor with `fastpath=off`: el2 answers no
               constant GIC register (the host's paths, for before/after figures)
  --no-build   use target/ferrovisor.img and target/guests/micro-bench.flat as they are
  --verbose    show the console as it comes
  --help       print this

exit status: 0 when every run ended well and printed every operation; 1 when
a run failed or an operation is missing from a run; 2 for a wrong option.";

/// The operations every run must report, in the guest's order: `lpi` needs
/// an ITS, which QEMU virt has with GICv3 and GICv4 only.
pub fn required_ops(gic: u8) -> &'static [&'static str] {
    const ALL: &[&str] =
        &["hvc", "mmio_read_user", "mmio_read_vgic", "eoi", "ipi", "ipi_busy", "lpi", "timer", "timer_busy"];
    const NO_ITS: &[&str] =
        &["hvc", "mmio_read_user", "mmio_read_vgic", "eoi", "ipi", "ipi_busy", "timer", "timer_busy"];
    if gic == 2 {
        NO_ITS
    } else {
        ALL
    }
}

/// Checks that a run reported each of `required`.
///
/// # Errors
/// Names the operations that are missing.
pub fn check_required(samples: &[Sample], required: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = required.iter().copied().filter(|op| !samples.iter().any(|s| s.op == *op)).collect();
    match missing.as_slice() {
        [] => Ok(()),
        [op] => Err(format!("operation {op} is missing")),
        ops => Err(format!("operations {} are missing", ops.join(", "))),
    }
}

/// The guest, its file name (`target/guests/<GUEST>.flat`) and VM name.
const GUEST: &str = "micro-bench";
const VCPUS: u32 = 2;
const SMP: u32 = 2;
const GUEST_MEM_MIB: u32 = 64;
const BARE_RAM_MIB: u32 = 256;
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// After `EXIT: STATUS=...` the guest powers off; if QEMU has not ended
/// after this much silence, it is stopped.
const EXIT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_RUNS: u32 = 5;
const MAX_RUNS: u32 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts {
    pub runs: u32,
    pub gic: u8,
    pub bare: bool,
    /// `--fastpath off`: the hypervisor's `fastpath=off`.
    pub fastpath: bool,
    pub no_build: bool,
    pub verbose: bool,
}

/// Parses `cargo xtask bench`'s options; `Ok(None)` for `--help`.
///
/// # Errors
/// An unknown option, a missing or bad value.
pub fn parse_opts(args: Vec<String>) -> Result<Option<Opts>, String> {
    let mut o = Opts { runs: DEFAULT_RUNS, gic: 3, bare: false, fastpath: true, no_build: false, verbose: false };
    let mut a = crate::Args::new(args);
    while let Some(opt) = a.next_opt()? {
        match opt.as_str() {
            "--help" | "-h" => return Ok(None),
            "--runs" => o.runs = a.number(&opt)?,
            "--gic" => o.gic = a.number(&opt)?,
            "--fastpath" => {
                o.fastpath = match a.value(&opt)?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--fastpath must be on or off, not `{v}`")),
                }
            }
            "--bare" | "--no-build" | "--verbose" | "-v" => {
                a.flag(&opt)?;
                match opt.as_str() {
                    "--bare" => o.bare = true,
                    "--no-build" => o.no_build = true,
                    _ => o.verbose = true,
                }
            }
            _ => return Err(format!("unknown option `{opt}`")),
        }
    }
    if !(1..=MAX_RUNS).contains(&o.runs) {
        return Err(format!("--runs must be 1 to {MAX_RUNS}, not {}", o.runs));
    }
    if !(2..=4).contains(&o.gic) {
        return Err(format!("--gic must be 2, 3 or 4, not {}", o.gic));
    }
    Ok(Some(o))
}

/// One `BENCH:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub op: String,
    pub iterations: u64,
    pub ns_per_op: u64,
    pub min: u64,
    pub max: u64,
}

/// Reads a `BENCH: <op> iterations=<N> ns_per_op=<int> min=<int> max=<int>`
/// line (the text after `BENCH: `). Other `key=value` words are ignored.
fn parse_line(rest: &str) -> Result<Sample, String> {
    let mut words = rest.split_whitespace();
    let op = words.next().filter(|w| !w.contains('=')).ok_or("no operation name")?;
    let mut values: BTreeMap<&str, u64> = BTreeMap::new();
    for w in words {
        let (key, value) = w.split_once('=').ok_or_else(|| format!("`{w}` is not key=value"))?;
        let n = value.parse().map_err(|_| format!("{key}: `{value}` is not a whole number"))?;
        if values.insert(key, n).is_some() {
            return Err(format!("{key} is given twice"));
        }
    }
    let get = |key: &str| values.get(key).copied().ok_or_else(|| format!("no {key}="));
    Ok(Sample {
        op: op.to_string(),
        iterations: get("iterations")?,
        ns_per_op: get("ns_per_op")?,
        min: get("min")?,
        max: get("max")?,
    })
}

/// The guest's `BENCH:` lines in one run's console. `prefix` is the VM's
/// `name: ` under the hypervisor (lines of other VMs and of the hypervisor
/// are skipped), empty for a bare run.
///
/// # Errors
/// A malformed `BENCH:` line, an operation given twice, or none at all.
pub fn parse_run(output: &str, prefix: &str) -> Result<Vec<Sample>, String> {
    let mut samples: Vec<Sample> = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix(prefix).and_then(|l| l.trim_start().strip_prefix("BENCH:")) else {
            continue;
        };
        let s = parse_line(rest).map_err(|e| format!("bad line `{line}`: {e}"))?;
        if samples.iter().any(|x| x.op == s.op) {
            return Err(format!("operation {} is reported twice", s.op));
        }
        samples.push(s);
    }
    if samples.is_empty() {
        return Err("no `BENCH:` line".into());
    }
    Ok(samples)
}

/// One operation over all runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub op: String,
    pub median: u64,
    pub min: u64,
    pub max: u64,
    /// `ns_per_op` of each run, in run order.
    pub values: Vec<u64>,
}

fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        // The mean of the middle two, rounded half up; no overflow.
        v[mid - 1] / 2 + v[mid] / 2 + (v[mid - 1] % 2 + v[mid] % 2).div_ceil(2)
    }
}

/// Each operation's figures over `runs` (each run's samples), in the order
/// the first run reported them.
///
/// # Errors
/// No runs, or an operation that some run reported and another did not.
pub fn summarize(runs: &[Vec<Sample>]) -> Result<Vec<Row>, String> {
    let first = runs.first().ok_or("no runs")?;
    for (i, run) in runs.iter().enumerate() {
        for s in run {
            if !first.iter().any(|f| f.op == s.op) {
                return Err(format!("operation {} is in run {} but not in run 1", s.op, i + 1));
            }
        }
        for f in first {
            if !run.iter().any(|s| s.op == f.op) {
                return Err(format!("operation {} is missing from run {}", f.op, i + 1));
            }
        }
    }
    Ok(first
        .iter()
        .map(|f| {
            let values: Vec<u64> =
                runs.iter().map(|run| run.iter().find(|s| s.op == f.op).map_or(0, |s| s.ns_per_op)).collect();
            Row {
                op: f.op.clone(),
                median: median(&values),
                min: *values.iter().min().expect("at least one run"),
                max: *values.iter().max().expect("at least one run"),
                values,
            }
        })
        .collect())
}

/// The spread of a row: (max - min) / median, in percent.
fn spread(r: &Row) -> String {
    if r.median == 0 {
        return "-".into();
    }
    format!("{:.1}%", (r.max - r.min) as f64 * 100.0 / r.median as f64)
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| operation | median | min..max over runs (spread) | runs |\n|---|---:|---|---:|\n");
    for r in rows {
        out += &format!("| {} | {} | {}..{} ({}) | {} |\n", r.op, r.median, r.min, r.max, spread(r), r.values.len());
    }
    out
}

/// Checks how a run ended: the guest's `EXIT: STATUS=1` and no `FAIL:`
/// line; under the hypervisor also the VM's end and the power-off status 0.
///
/// # Errors
/// Says what was wrong.
pub fn check_run(output: &str, end: End, prefix: &str, bare: bool) -> Result<(), String> {
    let own: Vec<&str> = output.lines().filter_map(|l| l.strip_prefix(prefix)).collect();
    if let Some(fail) = own.iter().find(|l| l.starts_with("FAIL:")) {
        return Err(format!("the guest failed: `{fail}`"));
    }
    if !own.contains(&"EXIT: STATUS=1") {
        let exit = own.iter().find(|l| l.starts_with("EXIT:"));
        return Err(exit.map_or("the guest printed no `EXIT:` line".into(), |l| format!("the guest ended with `{l}`")));
    }
    if !bare {
        match crate::check::power_off_status(output) {
            Some(0) => {}
            Some(n) => return Err(format!("the hypervisor powered off with status {n}")),
            None => return Err("the hypervisor did not power off".into()),
        }
    }
    match end {
        End::Exited(Some(0)) => Ok(()),
        End::Exited(Some(c)) => Err(format!("QEMU exited with status {c}")),
        End::Exited(None) => Err("QEMU was killed by a signal".into()),
        End::Stopped => Err("QEMU did not exit after the guest's EXIT line (stopped it)".into()),
        End::TimedOut => Err(format!("timeout after {}s", RUN_TIMEOUT.as_secs())),
    }
}

fn end_line(line: &str) -> Option<Duration> {
    crate::boottest::end_line(line).or_else(|| line.contains("EXIT: STATUS=").then_some(EXIT_GRACE))
}

/// The guest's flat file: built unless `no_build`.
fn guest_file(root: &Path, no_build: bool) -> Result<PathBuf, String> {
    let path = crate::target_dir(root).join("guests").join(format!("{GUEST}.flat"));
    if no_build {
        return if path.is_file() { Ok(path) } else { Err(format!("--no-build: {} does not exist", path.display())) };
    }
    let built = crate::guests::build_guests(root)?;
    built.into_iter().find(|(n, _)| n == GUEST).map(|(_, p)| p).ok_or_else(|| {
        format!("tests/guests has no `{GUEST}` guest (a [[bin]] in tests/guests/Cargo.toml) to benchmark")
    })
}

/// The QEMU arguments of one run and the prefix of the guest's lines.
fn prepare(root: &Path, o: &Opts, guest: &Path) -> Result<(Vec<String>, String), String> {
    let icount = ["-icount".to_string(), "shift=0,sleep=off".to_string()];
    if o.bare {
        let m = Machine {
            virtualization: false,
            gic: o.gic,
            smp: SMP,
            mem_mib: BARE_RAM_MIB,
            append: String::new(),
            ..Machine::default()
        };
        let mut args = m.args(guest, None);
        args.extend(icount);
        return Ok((args, String::new()));
    }
    let image = if o.no_build {
        let image = crate::image_path(root);
        if !image.is_file() {
            return Err(format!("--no-build: {} does not exist", image.display()));
        }
        image
    } else {
        crate::build(root, false)?
    };
    let mut m = Machine { gic: o.gic, smp: SMP, ..Machine::default() };
    if !o.fastpath {
        m.append.push_str(" fastpath=off");
    }
    let spec = GuestSpec {
        name: GUEST.into(),
        kernel: guest.to_path_buf(),
        initrd: None,
        bootargs: String::new(),
        vcpus: VCPUS,
        mem_mib: GUEST_MEM_MIB,
        pinned: false,
    };
    guestcfg::check_files(std::slice::from_ref(&spec))?;
    let p = guestcfg::prepare(root, &m, &[spec])?;
    let mut args = m.boot_args(&image, Some(&p.dtb), Some(&p.bundle));
    args.extend(icount);
    Ok((args, format!("{GUEST}: ")))
}

/// Runs the benchmark as `o` says and prints the table; the error is the
/// message to print and the exit status.
fn bench(o: &Opts) -> Result<(), (String, u8)> {
    let root = crate::root();
    let guest = guest_file(&root, o.no_build).map_err(|e| (e, 1))?;
    let (args, prefix) = prepare(&root, o, &guest).map_err(|e| (e, 1))?;
    let watch =
        Watch { echo: o.verbose, interactive: false, timeout: Some(RUN_TIMEOUT), stop_on: end_line, progress: None };
    let mut runs = Vec::new();
    for i in 1..=o.runs {
        let out = qemu::run(&args, &watch).map_err(|e| (e.to_string(), 1))?;
        let failed = |e: String| {
            let tail = out.tail(30).lines().map(|l| format!("    | {l}\n")).collect::<String>();
            (format!("run {i} of {} failed: {e}\n{tail}", o.runs), 1)
        };
        check_run(&out.output, out.end, &prefix, o.bare).map_err(failed)?;
        let samples = parse_run(&out.output, &prefix).map_err(failed)?;
        check_required(&samples, required_ops(o.gic)).map_err(failed)?;
        eprintln!("xtask bench: run {i} of {}: {} operations", o.runs, samples.len());
        runs.push(samples);
    }
    let rows = summarize(&runs).map_err(|e| (e, 1))?;
    let how = match (o.bare, o.fastpath) {
        (true, _) => "alone on QEMU (--bare)",
        (false, true) => "as a VM under Ferrovisor",
        (false, false) => "as a VM under Ferrovisor (fastpath=off)",
    };
    println!("{GUEST} ({VCPUS} vCPUs) {how}, QEMU virt GICv{} -cpu max -smp {SMP}, {} runs", o.gic, o.runs);
    println!("ns_per_op (with -icount shift=0: instructions per operation)");
    println!();
    print!("{}", table(&rows));
    println!();
    // Paths relative to the repository, so the line can be pasted there.
    let words = crate::shell_words(&args).replace(&format!("{}/", root.display()), "");
    println!("command: {} {words}", qemu::QEMU);
    Ok(())
}

/// `cargo xtask bench ARGS`.
pub fn cmd(args: Vec<String>) -> ExitCode {
    let o = match parse_opts(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("scripts/bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match bench(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, code)) => {
            eprintln!("xtask bench: {e}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Result<Option<Opts>, String> {
        parse_opts(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn options() {
        let d = opts(&[]).unwrap().unwrap();
        assert_eq!(d, Opts { runs: 5, gic: 3, bare: false, fastpath: true, no_build: false, verbose: false });
        let o = opts(&["--runs", "9", "--gic=2", "--bare", "--no-build", "-v"]).unwrap().unwrap();
        assert_eq!(o, Opts { runs: 9, gic: 2, bare: true, fastpath: true, no_build: true, verbose: true });
        assert!(!opts(&["--fastpath", "off"]).unwrap().unwrap().fastpath);
        assert!(opts(&["--fastpath=on"]).unwrap().unwrap().fastpath);
        assert_eq!(opts(&["--help"]).unwrap(), None);
        for (args, msg) in [
            (&["--runs", "0"][..], "--runs must be 1 to 1000, not 0"),
            (&["--runs", "x"], "--runs takes a number, not `x`"),
            (&["--runs"], "--runs needs a value"),
            (&["--gic", "5"], "--gic must be 2, 3 or 4, not 5"),
            (&["--bare=1"], "--bare takes no value (got `1`)"),
            (&["--fastpath", "maybe"], "--fastpath must be on or off, not `maybe`"),
            (&["--smp", "4"], "unknown option `--smp`"),
        ] {
            assert_eq!(opts(args).unwrap_err(), msg, "{args:?}");
        }
    }

    const BARE: &str = "\
micro-bench: starting
BENCH: hvc iterations=4096 ns_per_op=12 min=11 max=40
PASS: micro-bench: hvc
BENCH: mmio_read_user iterations=4096 ns_per_op=14 min=14 max=14
BENCH: ipi iterations=64 ns_per_op=557 min=480 max=900
EXIT: STATUS=1
";

    fn sample(op: &str, iterations: u64, ns_per_op: u64, min: u64, max: u64) -> Sample {
        Sample { op: op.into(), iterations, ns_per_op, min, max }
    }

    #[test]
    fn bench_lines() {
        let s = parse_run(BARE, "").unwrap();
        assert_eq!(
            s,
            [
                sample("hvc", 4096, 12, 11, 40),
                sample("mmio_read_user", 4096, 14, 14, 14),
                sample("ipi", 64, 557, 480, 900)
            ]
        );
        // Under the hypervisor: only the VM's own lines count.
        let hyp = "vm micro-bench: 2 vCPUs\nmicro-bench: BENCH: hvc iterations=8 ns_per_op=150 min=140 max=160\n\
                   other: BENCH: eoi iterations=8 ns_per_op=1 min=1 max=1\nBENCH: ipi iterations=1 ns_per_op=2 min=2 max=2\n\
                   micro-bench: EXIT: STATUS=1\n";
        assert_eq!(parse_run(hyp, "micro-bench: ").unwrap(), [sample("hvc", 8, 150, 140, 160)]);
        // Unknown keys are ignored; order does not matter.
        let s = parse_run("BENCH: eoi max=3 min=1 ns_per_op=2 iterations=5 cycles=9", "").unwrap();
        assert_eq!(s, [sample("eoi", 5, 2, 1, 3)]);
    }

    #[test]
    fn bad_bench_lines() {
        for (text, msg) in [
            ("PASS: x\nEXIT: STATUS=1", "no `BENCH:` line"),
            (
                "BENCH: hvc iterations=1 ns_per_op=2 min=3",
                "bad line `BENCH: hvc iterations=1 ns_per_op=2 min=3`: no max=",
            ),
            ("BENCH: hvc iterations=1 ns_per_op=2.5 min=3 max=4", ": ns_per_op: `2.5` is not a whole number"),
            ("BENCH: hvc iterations=1 ns_per_op=-2 min=3 max=4", ": ns_per_op: `-2` is not a whole number"),
            ("BENCH: iterations=1 ns_per_op=2 min=3 max=4", ": no operation name"),
            ("BENCH:", ": no operation name"),
            ("BENCH: hvc iterations=1 ns_per_op=2 min=3 max=4 junk", ": `junk` is not key=value"),
            ("BENCH: hvc iterations=1 iterations=1 ns_per_op=2 min=3 max=4", ": iterations is given twice"),
            (
                "BENCH: hvc iterations=1 ns_per_op=2 min=3 max=4\nBENCH: hvc iterations=1 ns_per_op=2 min=3 max=4",
                "operation hvc is reported twice",
            ),
        ] {
            let e = parse_run(text, "").unwrap_err();
            assert!(e.ends_with(msg), "{text:?}: {e}");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[5]), 5);
        assert_eq!(median(&[9, 1, 5]), 5);
        assert_eq!(median(&[4, 1, 3, 2]), 3, "2.5 rounds up");
        assert_eq!(median(&[10, 20]), 15);
        assert_eq!(median(&[u64::MAX, u64::MAX]), u64::MAX);
        assert_eq!(median(&[u64::MAX - 1, u64::MAX]), u64::MAX);
    }

    fn run(values: &[(&str, u64)]) -> Vec<Sample> {
        values.iter().map(|&(op, ns)| sample(op, 100, ns, ns, ns)).collect()
    }

    #[test]
    fn summary_and_table() {
        let runs = vec![
            run(&[("hvc", 150), ("eoi", 21)]),
            run(&[("eoi", 21), ("hvc", 140)]),
            run(&[("hvc", 170), ("eoi", 21)]),
            run(&[("hvc", 145), ("eoi", 21)]),
            run(&[("hvc", 150), ("eoi", 21)]),
        ];
        let rows = summarize(&runs).unwrap();
        assert_eq!(
            rows,
            [
                Row { op: "hvc".into(), median: 150, min: 140, max: 170, values: vec![150, 140, 170, 145, 150] },
                Row { op: "eoi".into(), median: 21, min: 21, max: 21, values: vec![21; 5] },
            ]
        );
        assert_eq!(
            table(&rows),
            "| operation | median | min..max over runs (spread) | runs |\n|---|---:|---|---:|\n\
             | hvc | 150 | 140..170 (20.0%) | 5 |\n| eoi | 21 | 21..21 (0.0%) | 5 |\n"
        );
        let zero = summarize(&[run(&[("nop", 0)])]).unwrap();
        assert!(table(&zero).contains("| nop | 0 | 0..0 (-) | 1 |"));
    }

    #[test]
    fn required_operations() {
        let v3 = required_ops(3);
        assert_eq!(required_ops(4), v3);
        assert!(v3.contains(&"ipi_busy") && v3.contains(&"timer_busy") && v3.contains(&"lpi"));
        assert_eq!(required_ops(2), v3.iter().copied().filter(|&op| op != "lpi").collect::<Vec<_>>());
        let all: Vec<Sample> = v3.iter().map(|op| sample(op, 1, 1, 1, 1)).collect();
        assert_eq!(check_required(&all, v3), Ok(()));
        assert_eq!(check_required(&all, required_ops(2)), Ok(()), "an extra operation is fine");
        let no_busy: Vec<Sample> = all.iter().filter(|s| !s.op.ends_with("_busy")).cloned().collect();
        assert_eq!(check_required(&no_busy, v3).unwrap_err(), "operations ipi_busy, timer_busy are missing");
        let no_lpi: Vec<Sample> = all.iter().filter(|s| s.op != "lpi").cloned().collect();
        assert_eq!(check_required(&no_lpi, v3).unwrap_err(), "operation lpi is missing");
        assert_eq!(check_required(&no_lpi, required_ops(2)), Ok(()));
    }

    #[test]
    fn missing_operations() {
        let e = summarize(&[run(&[("hvc", 1), ("eoi", 2)]), run(&[("hvc", 1)])]).unwrap_err();
        assert_eq!(e, "operation eoi is missing from run 2");
        let e = summarize(&[run(&[("hvc", 1)]), run(&[("hvc", 1), ("ipi", 3)])]).unwrap_err();
        assert_eq!(e, "operation ipi is in run 2 but not in run 1");
        assert_eq!(summarize(&[]).unwrap_err(), "no runs");
    }

    #[test]
    fn run_endings() {
        let ok = End::Exited(Some(0));
        assert_eq!(check_run(BARE, ok, "", true), Ok(()));
        assert_eq!(check_run(BARE, End::TimedOut, "", true).unwrap_err(), "timeout after 180s");
        assert_eq!(check_run(BARE, End::Exited(Some(1)), "", true).unwrap_err(), "QEMU exited with status 1");
        let failed = BARE.replace("EXIT: STATUS=1", "FAIL: micro-bench: ipi: no IPI\nEXIT: STATUS=3");
        assert_eq!(check_run(&failed, ok, "", true).unwrap_err(), "the guest failed: `FAIL: micro-bench: ipi: no IPI`");
        let status3 = BARE.replace("EXIT: STATUS=1", "EXIT: STATUS=3");
        assert_eq!(check_run(&status3, ok, "", true).unwrap_err(), "the guest ended with `EXIT: STATUS=3`");
        let cut = BARE.replace("EXIT: STATUS=1\n", "");
        assert_eq!(check_run(&cut, ok, "", true).unwrap_err(), "the guest printed no `EXIT:` line");
        // Under the hypervisor: the VM's lines and the power-off status.
        let p = "micro-bench: ";
        let hyp: String = BARE.lines().map(|l| format!("{p}{l}\n")).collect();
        let good = format!("{hyp}vm micro-bench: ended (system off)\nferrovisor: power off, status 0\n");
        assert_eq!(check_run(&good, ok, p, false), Ok(()));
        assert_eq!(check_run(BARE, ok, p, false).unwrap_err(), "the guest printed no `EXIT:` line");
        let e = check_run(&good.replace("status 0", "status 1"), ok, p, false).unwrap_err();
        assert_eq!(e, "the hypervisor powered off with status 1");
        assert_eq!(check_run(&hyp, ok, p, false).unwrap_err(), "the hypervisor did not power off");
    }

    #[test]
    fn end_lines() {
        assert_eq!(end_line("micro-bench: EXIT: STATUS=1"), Some(EXIT_GRACE));
        assert_eq!(end_line("ferrovisor: power off, status 0"), Some(Duration::from_secs(2)));
        assert_eq!(end_line("BENCH: hvc iterations=1 ns_per_op=1 min=1 max=1"), None);
    }
}
