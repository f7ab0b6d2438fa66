//! `cargo xtask`: builds and packs Ferrovisor's image, boots it under QEMU, and
//! runs the QEMU boot tests. See `cargo xtask --help`.

mod bench;
mod boottest;
mod check;
mod dtb;
mod fuzz;
mod guestcfg;
mod guests;
mod guesttest;
#[cfg(test)]
mod imports;
mod linux;
mod pack;
mod qemu;
mod reference;
mod sdcard;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use guestcfg::GuestSpec;
use qemu::{Board, Machine, Watch};

/// The bare-metal target both binaries are built for.
const TARGET: &str = "aarch64-unknown-none-softfloat";

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--debug]   build el2 and the host and pack them into target/ferrovisor.img
  run [options]     build, then boot the image under QEMU (see `cargo xtask run --help`)
  test [options]    build, then run the QEMU boot tests (see `cargo xtask test --help`)
  pack EL2 HOST OUT pack two ELF files into an image (what `build` does after building)
  guests            build the test guests into target/guests/<name>.flat
  bench [options]   boot the micro-bench guest N times and tabulate its figures (`cargo xtask bench --help`)
  fuzz [options]    a seeded fuzzing campaign: the fuzz guest beside a control VM (`cargo xtask fuzz --help`)
  sdcard [options]  write a Raspberry Pi 4 SD-card image (`cargo xtask sdcard --help`)
  help              print this";

const RUN_USAGE: &str = "\
usage: scripts/run [options]          (the same as: cargo xtask run [options])

Builds the image, boots it under QEMU with the serial console on this terminal,
and exits with the status the hypervisor powers off with.

board options:
  --board virt|raspi4b  machine to emulate (default: virt)
  --gic 2|3|4           GIC version on virt (default: 3; QEMU 10 emulates 4 as GICv4.0)
  --smp N               CPUs (default: 4; raspi4b always has 4)
  --ram MiB             the board's RAM on virt (default: 1024; raspi4b has a fixed 2 GiB)
  --host-append ARGS    the hypervisor's command line (default: \"loglevel=info semihosting-exit\")
  --gdb                 wait for gdb on localhost:1234 before the first instruction
  --timeout SECS        stop QEMU after SECS seconds and exit 124 (default: none)
  --debug               use the debug build
  --image FILE          boot FILE as it is instead of building
  --verbose             print the QEMU command line and the files made for the guests
  --help                print this

guest options (each --guest starts a VM; the options after it, or before
the first --guest, apply to that VM; give --guest again for more VMs):
  --guest FILE          the guest's kernel: an arm64 Image or a raw binary
  --append ARGS         the guest's command line (default: none)
  --initrd FILE         the guest's initrd (default: none)
  --vcpus N             its vCPUs, 1 to 8 and at most --smp (default: 1)
  --mem MiB             its memory (default: 128)
  --pin                 keep its vCPU i on one CPU (default: any CPU)
  --name NAME           its name: printable ASCII, no spaces, at most 32
                        characters (default: FILE's stem)

The guests' files go into a cpio bundle that QEMU loads as the hypervisor's
initrd (-initrd), and each guest is described by a ferrovisor,domain node
under /chosen in a copy of the board's device tree (-dtb), both written to
target/xtask-run/.

exit status: the hypervisor's power-off status N (from `ferrovisor: power off,
status N`); 2 if it ended without that line or the options are wrong; 124 on timeout.";

const TEST_USAGE: &str = "\
usage: cargo xtask test [--filter SUBSTR] [--verbose] [--debug] [--no-build] [--list]

Builds the image and boots it under QEMU in each test's way, one test at a time.
  --filter SUBSTR  run only the tests whose name contains SUBSTR
  --verbose        show QEMU's output as it comes
  --debug          test the debug build
  --no-build       test target/ferrovisor.img as it is
  --list           list the tests and exit";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn image_path(root: &Path) -> PathBuf {
    target_dir(root).join("ferrovisor.img")
}

/// Packs the ELF files `el2` and `host` into `out` and prints one line about it.
fn pack_files(root: &Path, el2: &Path, host: &Path, out: &Path) -> Result<(), String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let packed = pack::pack(&read(el2)?, &read(host)?)?;
    let tmp = out.with_extension("img.tmp");
    fs::write(&tmp, &packed.image).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    let h = packed.header;
    println!(
        "{}: {} bytes, {} in memory (el2 {} bytes, {} in memory; host {} bytes, {} in memory, at {:#x}; \
         {} + {} relocations)",
        out.strip_prefix(root).unwrap_or(out).display(),
        packed.image.len(),
        packed.image_size(),
        packed.el2_file_size,
        h.el2_mem_size,
        h.host_file_size,
        h.host_mem_size,
        h.host_offset,
        packed.relocations.0,
        packed.relocations.1
    );
    Ok(())
}

/// Builds both binaries and packs them into the image; returns its path.
/// The built-in guest set: `default.vms` lines (name, vCPUs, MiB, kernel,
/// `-- bootargs`), with the test guests of the same names.
const DEFAULT_VMS: &str = "\
# Ferrovisor's built-in guests, run when the device tree names none.
# name      vcpus  mem_mib  kernel           bootargs
selftest    2      64       selftest.flat    -- setup smp=2 mem=64
hostile     1      32       hostile.flat
";

/// Builds the test guests and packs the built-in set into the bundle the
/// host embeds.
fn default_bundle(root: &Path) -> Result<PathBuf, String> {
    let guests = guests::build_guests(root)?;
    let mut files: Vec<(String, Vec<u8>)> = vec![("default.vms".into(), DEFAULT_VMS.as_bytes().to_vec())];
    for line in DEFAULT_VMS.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()) {
        let kernel = line.split_whitespace().nth(3).ok_or("default.vms: a line without a kernel")?;
        let name = kernel.trim_end_matches(".flat");
        let (_, path) = guests
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("default.vms names {kernel}, which is not a test guest"))?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push((kernel.to_string(), bytes));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let out = target_dir(root).join("guests").join("default.cpio");
    std::fs::write(&out, guestcfg::write_cpio(&refs)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

fn build(root: &Path, debug: bool) -> Result<PathBuf, String> {
    let bundle = default_bundle(root)?;
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "-p", "ferrovisor-el2", "-p", "ferrovisor-host", "--target", TARGET]);
    cmd.env("FERROVISOR_DEFAULT_BUNDLE", &bundle);
    if !debug {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let dir = target_dir(root).join(TARGET).join(if debug { "debug" } else { "release" });
    let image = image_path(root);
    pack_files(root, &dir.join("ferrovisor-el2"), &dir.join("ferrovisor-host"), &image)?;
    Ok(image)
}

/// Splits `--opt=value` and takes the value of `--opt value`.
struct Args {
    items: std::vec::IntoIter<String>,
    pending_value: Option<String>,
}

impl Args {
    fn new(args: Vec<String>) -> Self {
        Self { items: args.into_iter(), pending_value: None }
    }

    /// The next option name (without any `=value`).
    fn next_opt(&mut self) -> Result<Option<String>, String> {
        if let Some(v) = self.pending_value.take() {
            return Err(format!("unexpected value `{v}`"));
        }
        let Some(arg) = self.items.next() else {
            return Ok(None);
        };
        if let Some((name, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
            self.pending_value = Some(value.to_string());
            return Ok(Some(name.to_string()));
        }
        Ok(Some(arg))
    }

    fn value(&mut self, opt: &str) -> Result<String, String> {
        self.pending_value.take().or_else(|| self.items.next()).ok_or_else(|| format!("{opt} needs a value"))
    }

    fn number<T: std::str::FromStr>(&mut self, opt: &str) -> Result<T, String> {
        let v = self.value(opt)?;
        v.parse().map_err(|_| format!("{opt} takes a number, not `{v}`"))
    }

    fn flag(&mut self, opt: &str) -> Result<(), String> {
        match self.pending_value.take() {
            Some(v) => Err(format!("{opt} takes no value (got `{v}`)")),
            None => Ok(()),
        }
    }
}

enum Parsed<T> {
    Go(T),
    Help,
}

#[derive(Debug, PartialEq)]
struct RunOpts {
    machine: Machine,
    timeout: Option<u64>,
    debug: bool,
    /// Boot this file as it is instead of building.
    image: Option<PathBuf>,
    guests: Vec<GuestSpec>,
    /// Print the QEMU command line.
    verbose: bool,
    notes: Vec<String>,
}

/// Room the hypervisor keeps for itself when the guests' memory is summed
/// against the board's.
const HYPERVISOR_RESERVE_MIB: u64 = 64;
/// The RAM QEMU's raspi4b describes in the Pi's device tree (`memory@0`: the
/// part below the VideoCore's share of the first GiB), measured on QEMU 10.0.
const RASPI_VISIBLE_RAM_MIB: u64 = 960;

/// One guest's options as given, before defaults and checks.
#[derive(Default)]
struct GuestDraft {
    kernel: Option<PathBuf>,
    name: Option<String>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    vcpus: Option<u32>,
    mem: Option<u32>,
    pin: bool,
    /// The guest options given, in order, for the message when --guest is missing.
    given: Vec<String>,
}

impl GuestDraft {
    /// Records a guest option's value; each may be given once per guest.
    fn set<T>(&mut self, slot: fn(&mut Self) -> &mut Option<T>, opt: &str, value: T) -> Result<(), String> {
        self.given.push(opt.to_string());
        let field = slot(self);
        if field.is_some() {
            return Err(format!("{opt} is given twice for one guest (give each guest's options after its --guest)"));
        }
        *field = Some(value);
        Ok(())
    }
}

/// The per-guest options of `run` (and `sdcard`).
const GUEST_OPTIONS: [&str; 7] = ["--guest", "--pin", "--append", "--initrd", "--vcpus", "--mem", "--name"];

/// Applies one of [`GUEST_OPTIONS`]: `--guest` starts a new guest, the
/// others apply to the last one.
fn guest_option(drafts: &mut Vec<GuestDraft>, opt: &str, a: &mut Args) -> Result<(), String> {
    if opt == "--guest" {
        let file = PathBuf::from(a.value(opt)?);
        let last = drafts.last_mut().expect("there is always a draft");
        if last.kernel.is_some() {
            drafts.push(GuestDraft { kernel: Some(file), ..GuestDraft::default() });
        } else {
            last.kernel = Some(file);
        }
        return Ok(());
    }
    let d = drafts.last_mut().expect("there is always a draft");
    match opt {
        "--pin" => {
            a.flag(opt)?;
            d.given.push(opt.to_string());
            d.pin = true;
        }
        "--append" => d.set(|d| &mut d.append, opt, a.value(opt)?)?,
        "--initrd" => d.set(|d| &mut d.initrd, opt, PathBuf::from(a.value(opt)?))?,
        "--vcpus" => d.set(|d| &mut d.vcpus, opt, a.number::<u32>(opt)?)?,
        "--mem" => d.set(|d| &mut d.mem, opt, a.number::<u32>(opt)?)?,
        _ => d.set(|d| &mut d.name, opt, a.value(opt)?)?,
    }
    Ok(())
}

/// Turns the drafts into guests: defaults, then checks against the board.
fn finish_guests(mut drafts: Vec<GuestDraft>, m: &Machine) -> Result<Vec<GuestSpec>, String> {
    if drafts.len() == 1 && drafts[0].kernel.is_none() {
        let d = drafts.remove(0);
        if d.given.is_empty() {
            return Ok(Vec::new());
        }
        let hint = if d.mem.is_some() { " (the board's RAM is --ram now)" } else { "" };
        let verb = if d.given.len() == 1 { "is" } else { "are" };
        return Err(format!("{} {verb} for a guest, but there is no --guest FILE{hint}", d.given.join(", ")));
    }
    let mut guests: Vec<GuestSpec> = Vec::new();
    for d in drafts {
        let kernel = d.kernel.expect("every draft after the first starts with --guest");
        let name = match d.name {
            Some(n) => {
                guestcfg::check_name(&n).map_err(|e| format!("--name: {e}"))?;
                n
            }
            None => guestcfg::default_name(&kernel),
        };
        let vcpus = d.vcpus.unwrap_or(1);
        // More vCPUs than CPUs is fine: the hypervisor time-slices them.
        let max = guestcfg::MAX_VCPUS;
        if vcpus == 0 {
            return Err(format!("guest `{name}`: --vcpus must be at least 1"));
        }
        if vcpus > max {
            return Err(format!("guest `{name}`: --vcpus {vcpus} is more than {max}, the most a VM may have"));
        }
        let mem_mib = d.mem.unwrap_or(128);
        if mem_mib == 0 {
            return Err(format!("guest `{name}`: --mem 0 MiB is too small (1 at least)"));
        }
        if guests.iter().any(|g| g.name == name) {
            return Err(format!("two guests are named `{name}`: give each its own --name"));
        }
        let bootargs = d.append.unwrap_or_default();
        guests.push(GuestSpec { name, kernel, initrd: d.initrd, bootargs, vcpus, mem_mib, pinned: d.pin });
    }
    let total: u64 = guests.iter().map(|g| u64::from(g.mem_mib)).sum();
    let (ram, what) = match m.board {
        Board::Virt => (u64::from(m.mem_mib), "--ram"),
        Board::Raspi4b => (RASPI_VISIBLE_RAM_MIB, "raspi4b's"),
    };
    if total + HYPERVISOR_RESERVE_MIB > ram {
        return Err(format!(
            "the guests' memory ({total} MiB) does not fit in {what} {ram} MiB with {HYPERVISOR_RESERVE_MIB} MiB \
             for the hypervisor"
        ));
    }
    Ok(guests)
}

fn parse_run(args: Vec<String>) -> Result<Parsed<RunOpts>, String> {
    let mut m = Machine::default();
    let (mut timeout, mut debug, mut image, mut verbose) = (None, false, None, false);
    let (mut gic, mut smp, mut ram) = (None, None, None);
    let mut drafts = vec![GuestDraft::default()];
    let mut a = Args::new(args);
    while let Some(opt) = a.next_opt()? {
        match opt.as_str() {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--board" => {
                let v = a.value(&opt)?;
                m.board = Board::parse(&v).ok_or_else(|| format!("unknown board `{v}` (virt or raspi4b)"))?;
            }
            "--gic" => gic = Some(a.number::<u8>(&opt)?),
            "--smp" => smp = Some(a.number::<u32>(&opt)?),
            "--ram" => ram = Some(a.number::<u32>(&opt)?),
            "--host-append" => m.append = a.value(&opt)?,
            o if GUEST_OPTIONS.contains(&o) => guest_option(&mut drafts, &opt, &mut a)?,
            "--verbose" | "-v" => {
                a.flag(&opt)?;
                verbose = true;
            }
            "--timeout" => timeout = Some(a.number::<u64>(&opt)?),
            "--gdb" => {
                a.flag(&opt)?;
                m.gdb = true;
            }
            "--debug" => {
                a.flag(&opt)?;
                debug = true;
            }
            "--image" => image = Some(PathBuf::from(a.value(&opt)?)),
            _ => return Err(format!("unknown option `{opt}`")),
        }
    }
    let mut notes = Vec::new();
    match m.board {
        Board::Virt => {
            m.gic = gic.unwrap_or(3);
            if !(2..=4).contains(&m.gic) {
                return Err(format!("--gic must be 2, 3 or 4, not {}", m.gic));
            }
            m.smp = smp.unwrap_or(4);
            let max = if m.gic == 2 { 8 } else { 512 };
            if !(1..=max).contains(&m.smp) {
                return Err(format!("--smp must be 1 to {max} on virt with GICv{}", m.gic));
            }
            m.mem_mib = ram.unwrap_or(1024);
            if m.mem_mib < 64 {
                return Err(format!("--ram {} MiB is too small (64 at least)", m.mem_mib));
            }
        }
        Board::Raspi4b => {
            if gic.is_some_and(|g| g != 2) {
                return Err("--gic: the Raspberry Pi 4 has a GIC-400 (GICv2); --gic applies to virt".into());
            }
            if smp.is_some_and(|n| n != qemu::RASPI_CPUS) {
                return Err(format!("--smp: the Raspberry Pi 4 has {} CPUs, always", qemu::RASPI_CPUS));
            }
            m.gic = 2;
            m.smp = qemu::RASPI_CPUS;
            if ram.is_some() {
                notes.push("note: raspi4b has a fixed 2 GiB of RAM; ignoring --ram".into());
            }
        }
    }
    if timeout == Some(0) {
        return Err("--timeout must be at least 1".into());
    }
    let guests = finish_guests(drafts, &m)?;
    Ok(Parsed::Go(RunOpts { machine: m, timeout, debug, image, guests, verbose, notes }))
}

fn gdb_hint(root: &Path, debug: bool, board: Board, image: &Path) {
    let dir = target_dir(root).join(TARGET).join(if debug { "debug" } else { "release" });
    let base = board.load_addr();
    let mut cmd = vec!["gdb-multiarch".to_string(), "-ex 'target remote localhost:1234'".to_string()];
    cmd.push(format!("-ex 'add-symbol-file {} -o {base:#x}'", dir.join("ferrovisor-el2").display()));
    let header = fs::read(image).ok().and_then(|img| ferrovisor_shared::image::PackageHeader::parse(&img).ok());
    if let Some(h) = header {
        let host = base + h.host_offset;
        cmd.push(format!("-ex 'add-symbol-file {} -o {host:#x}'", dir.join("ferrovisor-host").display()));
    }
    eprintln!("xtask: QEMU waits for gdb on localhost:1234; attach with (apt-get install gdb-multiarch):");
    eprintln!("  {}", cmd.join(" \\\n    "));
    eprintln!("  (the offsets are physical load addresses: right while the code runs where it was loaded, 1:1)");
}

/// The device tree and initrd to boot with: the guests' when there are any,
/// else the Pi's tree on raspi4b and QEMU's own on virt.
fn guest_files(root: &Path, opts: &RunOpts) -> Result<(Option<PathBuf>, Option<PathBuf>), String> {
    if opts.guests.is_empty() {
        return match opts.machine.board {
            Board::Raspi4b => Ok((Some(boottest::pi_dtb(root)?), None)),
            Board::Virt => Ok((None, None)),
        };
    }
    let p = guestcfg::prepare(root, &opts.machine, &opts.guests)?;
    if opts.verbose {
        for g in &opts.guests {
            let initrd = g.initrd.as_ref().map_or(String::new(), |i| format!(", initrd {}", i.display()));
            eprintln!(
                "xtask: guest `{}`: {} vCPU(s), {} MiB, {}{initrd}, bootargs {:?}",
                g.name,
                g.vcpus,
                g.mem_mib,
                g.kernel.display(),
                g.bootargs
            );
        }
        eprintln!(
            "xtask: device tree {} (source {}), guest bundle {}",
            p.dtb.display(),
            p.dts.display(),
            p.bundle.display()
        );
    }
    Ok((Some(p.dtb), Some(p.bundle)))
}

/// `args` quoted for a POSIX shell.
fn shell_words(args: &[String]) -> String {
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.,/:+@%".contains(&b));
    let quote = |s: &String| if plain(s) { s.clone() } else { format!("'{}'", s.replace('\'', "'\\''")) };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn cmd_run(args: Vec<String>) -> ExitCode {
    let opts = match parse_run(args) {
        Ok(Parsed::Go(o)) => o,
        Ok(Parsed::Help) => {
            println!("{RUN_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("scripts/run: {e}\n\n{RUN_USAGE}");
            return ExitCode::from(2);
        }
    };
    for note in &opts.notes {
        eprintln!("{note}");
    }
    if let Err(e) = guestcfg::check_files(&opts.guests) {
        eprintln!("scripts/run: {e}");
        return ExitCode::from(2);
    }
    let root = root();
    let built = match &opts.image {
        Some(path) if path.is_file() => Ok(path.clone()),
        Some(path) => Err(format!("--image: {} is not a file", path.display())),
        None => build(&root, opts.debug),
    };
    let image = match built {
        Ok(i) => i,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    let (dtb, initrd) = match guest_files(&root, &opts) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    let args = opts.machine.boot_args(&image, dtb.as_deref(), initrd.as_deref());
    if opts.verbose {
        eprintln!("xtask: {} {}", qemu::QEMU, shell_words(&args));
    }
    if opts.machine.gdb {
        gdb_hint(&root, opts.debug, opts.machine.board, &image);
    }
    let watch = Watch {
        echo: true,
        interactive: true,
        timeout: opts.timeout.map(Duration::from_secs),
        // QEMU keeps running after a power-off on raspi4b without semihosting.
        stop_on: |l| check::power_off_line(l).map(|_| Duration::from_secs(2)),
        progress: None,
    };
    let outcome = match qemu::run(&args, &watch) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    let (code, message) = qemu::run_status(outcome.end, check::power_off_status(&outcome.output), opts.timeout);
    if let Some(m) = message {
        eprintln!("{m}");
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn cmd_build(args: Vec<String>) -> ExitCode {
    let mut debug = false;
    for arg in args {
        match arg.as_str() {
            "--debug" => debug = true,
            "--help" | "-h" => {
                println!("usage: cargo xtask build [--debug]\n\nBuilds el2 and the host for {TARGET} and packs them into target/ferrovisor.img.");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("xtask build: unknown option `{arg}`\nusage: cargo xtask build [--debug]");
                return ExitCode::from(2);
            }
        }
    }
    match build(&root(), debug) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_test(args: Vec<String>) -> ExitCode {
    let (mut filter, mut verbose, mut debug, mut list) = (None, false, false, false);
    let mut no_build = false;
    let mut a = Args::new(args);
    let parsed: Result<(), String> = (|| {
        while let Some(opt) = a.next_opt()? {
            match opt.as_str() {
                "--filter" => filter = Some(a.value(&opt)?),
                "--verbose" | "-v" => verbose = true,
                "--debug" => debug = true,
                "--no-build" => no_build = true,
                "--list" => list = true,
                "--help" | "-h" => return Err(String::new()),
                _ => return Err(format!("unknown option `{opt}`")),
            }
            a.flag(&opt).ok();
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => {}
        Err(e) if e.is_empty() => {
            println!("{TEST_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("xtask test: {e}\n\n{TEST_USAGE}");
            return ExitCode::from(2);
        }
    }
    let tests: Vec<_> =
        boottest::all().into_iter().filter(|t| filter.as_deref().is_none_or(|f| t.name.contains(f))).collect();
    if list {
        for t in &tests {
            println!("{}", t.name);
        }
        return ExitCode::SUCCESS;
    }
    if tests.is_empty() {
        eprintln!("xtask test: no test matches the filter");
        return ExitCode::from(2);
    }
    let root = root();
    let work = target_dir(&root).join("xtask-test");
    let xtask = env::current_exe().unwrap_or_else(|_| PathBuf::from("xtask"));
    let mut ctx = boottest::Ctx::new(root.clone(), image_path(&root), work.clone(), xtask, verbose);
    if let Err(e) = fs::create_dir_all(&work) {
        eprintln!("xtask test: {}: {e}", work.display());
        return ExitCode::FAILURE;
    }
    if no_build {
        if !ctx.image.exists() {
            ctx.build_error = Some(format!("--no-build: {} does not exist", ctx.image.display()));
        }
    } else if tests.iter().any(|t| t.boots) {
        if let Err(e) = build(&root, debug) {
            eprintln!("xtask: {e}");
            ctx.build_error = Some(e);
        }
    }
    let (passed, failed) = boottest::run_all(&ctx, &tests);
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn cmd_guests(args: Vec<String>) -> ExitCode {
    const GUESTS_USAGE: &str =
        "usage: cargo xtask guests\n\nBuilds the test guests (tests/guests) into target/guests/<name>.flat.";
    match args.first().map(String::as_str) {
        None => {}
        Some("--help" | "-h") => {
            println!("{GUESTS_USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(arg) => {
            eprintln!("xtask guests: unknown option `{arg}`\n{GUESTS_USAGE}");
            return ExitCode::from(2);
        }
    }
    let root = root();
    match guests::build_guests(&root) {
        Ok(built) => {
            for (_, path) in built {
                println!("{}", path.strip_prefix(&root).unwrap_or(&path).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let cmd = args.remove(0);
    match cmd.as_str() {
        "build" => cmd_build(args),
        "run" => cmd_run(args),
        "test" => cmd_test(args),
        "guests" => cmd_guests(args),
        "bench" => bench::cmd(args),
        "fuzz" => fuzz::cmd(args),
        "sdcard" => sdcard::cmd(args),
        "pack" => match &args[..] {
            [el2, host, out] => match pack_files(&root(), Path::new(el2), Path::new(host), Path::new(out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xtask: {e}");
                    ExitCode::FAILURE
                }
            },
            _ => {
                eprintln!("usage: cargo xtask pack EL2.elf HOST.elf OUT.img");
                ExitCode::from(2)
            }
        },
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("xtask: unknown command `{cmd}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunOpts, String> {
        match parse_run(args.iter().map(|s| s.to_string()).collect())? {
            Parsed::Go(o) => Ok(o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn run_defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.machine, Machine::default());
        assert_eq!((o.machine.gic, o.machine.smp, o.machine.mem_mib), (3, 4, 1024));
        assert_eq!(o.machine.append, "loglevel=info semihosting-exit");
        assert_eq!((o.timeout, o.debug), (None, false));
    }

    #[test]
    fn run_options() {
        let o = parse(&[
            "--gic=2",
            "--smp",
            "2",
            "--ram",
            "512",
            "--host-append",
            "a b",
            "--gdb",
            "--timeout=9",
            "--debug",
            "--verbose",
        ])
        .unwrap();
        assert_eq!((o.machine.gic, o.machine.smp, o.machine.mem_mib), (2, 2, 512));
        assert_eq!(o.machine.append, "a b");
        assert!(o.machine.gdb && o.debug && o.verbose);
        assert_eq!(o.timeout, Some(9));
        assert!(o.guests.is_empty());
        let o = parse(&["--board", "raspi4b", "--ram", "512", "--smp", "4"]).unwrap();
        assert_eq!((o.machine.board, o.machine.gic, o.machine.smp), (Board::Raspi4b, 2, 4));
        assert_eq!(o.notes.len(), 1);
        assert_eq!(parse(&["--help"]).unwrap_err(), "help");
    }

    #[test]
    fn run_rejects() {
        for (args, msg) in [
            (&["--board", "nope"][..], "unknown board `nope`"),
            (&["--board"], "--board needs a value"),
            (&["--gic", "5"], "--gic must be 2, 3 or 4"),
            (&["--gic", "2", "--smp", "9"], "--smp must be 1 to 8"),
            (&["--smp", "0"], "--smp must be 1"),
            (&["--smp", "x"], "--smp takes a number"),
            (&["--board=raspi4b", "--smp=2"], "4 CPUs"),
            (&["--board=raspi4b", "--gic=3"], "GICv2"),
            (&["--gdb=1"], "takes no value"),
            (&["--timeout", "0"], "at least 1"),
            (&["--ram", "32"], "--ram 32 MiB is too small"),
            (&["extra"], "unknown option `extra`"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(msg), "{args:?}: {e}");
        }
    }

    fn guest(name: &str, kernel: &str, initrd: Option<&str>, bootargs: &str, vcpus: u32, mem_mib: u32) -> GuestSpec {
        GuestSpec {
            name: name.into(),
            kernel: kernel.into(),
            initrd: initrd.map(Into::into),
            bootargs: bootargs.into(),
            vcpus,
            mem_mib,
            pinned: false,
        }
    }

    #[test]
    fn guest_options() {
        let o =
            parse(&["--guest", "dir/linux.Image", "--append", "console=ttyAMA0 quiet", "--vcpus", "2", "--mem", "64"])
                .unwrap();
        assert_eq!(o.guests, [guest("linux", "dir/linux.Image", None, "console=ttyAMA0 quiet", 2, 64)]);
        assert_eq!(o.machine.append, qemu::DEFAULT_BOOTARGS, "--append is the guest's now");
        assert_eq!(o.machine.mem_mib, 1024);
        // Defaults, and options before the first --guest apply to it.
        let o = parse(&["--initrd=r.cpio", "--name", "first", "--guest", "k.bin", "--host-append", "loglevel=debug"])
            .unwrap();
        assert_eq!(o.guests, [guest("first", "k.bin", Some("r.cpio"), "", 1, 128)]);
        assert_eq!(o.machine.append, "loglevel=debug");
        // Each --guest starts the next VM.
        let o = parse(&[
            "--guest", "a.flat", "--vcpus", "4", "--guest", "b.flat", "--mem", "16", "--append", "x", "--guest",
            "c/a.flat", "--name", "a2", "--smp", "4", "--ram", "512",
        ])
        .unwrap();
        assert_eq!(
            o.guests,
            [
                guest("a", "a.flat", None, "", 4, 128),
                guest("b", "b.flat", None, "x", 1, 16),
                guest("a2", "c/a.flat", None, "", 1, 128),
            ]
        );
        assert_eq!(
            parse(&["--board", "raspi4b", "--guest", "k", "--vcpus", "4", "--mem", "896"]).unwrap().guests.len(),
            1
        );
    }

    #[test]
    fn guest_options_rejected() {
        for (args, msg) in [
            (&["--mem", "64"][..], "--mem is for a guest, but there is no --guest FILE (the board's RAM is --ram now)"),
            (&["--append", "x", "--vcpus", "1"], "--append, --vcpus are for a guest, but there is no --guest FILE"),
            (&["--guest"], "--guest needs a value"),
            (&["--guest", "k", "--vcpus", "0"], "guest `k`: --vcpus must be at least 1"),
            (&["--guest", "k", "--vcpus", "9"], "--vcpus 9 is more than 8, the most a VM may have"),
            (&["--guest", "k", "--mem", "0"], "--mem 0 MiB is too small"),
            (&["--guest", "k", "--mem", "-1"], "--mem takes a number"),
            (&["--guest", "k", "--vcpus", "1", "--vcpus", "2"], "--vcpus is given twice for one guest"),
            (&["--guest", "k", "--name", "a b"], "--name: `a b`: only printable ASCII"),
            (&["--guest", "k", "--name", ""], "--name: the name is empty"),
            (&["--guest", "x/k", "--guest", "y/k.bin"], "two guests are named `k`"),
            (&["--guest", "k", "--mem", "961"], "the guests' memory (961 MiB) does not fit in --ram 1024 MiB"),
            (&["--ram", "512", "--guest", "k", "--guest", "l", "--mem", "400"], "(528 MiB) does not fit"),
            (&["--guest", "k", "--verbose=1"], "takes no value"),
            (&["--board=raspi4b", "--guest", "k", "--mem", "897"], "(897 MiB) does not fit in raspi4b's 960 MiB"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(msg), "{args:?}: {e}");
        }
        assert!(parse(&["--guest", "k", "--mem", "960"]).is_ok());
    }

    #[test]
    fn shell_quoting() {
        let args: Vec<String> = ["-M", "virt,gic-version=3", "-append", "a b", "it's", ""].map(String::from).to_vec();
        assert_eq!(shell_words(&args), "-M virt,gic-version=3 -append 'a b' 'it'\\''s' ''");
    }
}
