//! Linux guest tests for `cargo xtask test`: Debian's arm64 kernel Image with
//! an initramfs around Debian's static busybox, both fetched from Debian's
//! packages at test time (`scripts/fetch-linux`, cached, never committed).
//! The initramfs's `/init` prints the kernel's release and CPU count and
//! powers off; the tests boot it on plain QEMU (the control) and as VMs
//! under the hypervisor, and assert those lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ferrovisor_shared::cpio::{self, S_IFCHR, S_IFDIR, S_IFREG};

use crate::boottest::{Ctx, Failure};
use crate::check;
use crate::guestcfg::{self, GuestSpec};
use crate::qemu::{self, End, Machine, Outcome, Watch};

/// The initramfs's `/init`: mounts /proc and /sys, prints the lines the
/// tests look for (`LINUX: ok` only when every step before it worked), then
/// powers off with PSCI `SYSTEM_OFF` (`poweroff -f` does not go through an
/// init system). If the power-off returns, init exits and the kernel panics,
/// which the tests catch.
///
/// The PMU: the arm_pmu driver's probe line in the kernel log names the PMU
/// and its counters (the cycle counter and PMCR_EL0.N event counters), and
/// the PMU must be in sysfs under that name; then `/bin/perfcheck` (the
/// `ferrovisor-linux-perf` crate) counts CPU cycles through perf_event, and
/// instructions too when the PMU lists `inst_retired` (QEMU does only with
/// `-icount`).
pub const INIT: &str = r#"#!/bin/busybox sh
# Ferrovisor's Linux guest test (xtask/src/linux.rs).
bb=/bin/busybox
ok=1
$bb mount -t proc proc /proc || ok=0
$bb mount -t sysfs sysfs /sys || ok=0
echo "LINUX: version $($bb uname -r)"
cpus=$($bb grep -c '^processor' /proc/cpuinfo) || ok=0
echo "LINUX: cpus $cpus"
set -- $($bb dmesg | $bb sed -n 's/.*hw perfevents: enabled with \([^ ]*\) PMU driver, \([0-9]*\) counters available.*/\1 \2/p')
pmu=/sys/bus/event_source/devices/$1
if [ -z "$1" ]; then
    echo "LINUX: pmu none: no 'hw perfevents: enabled' in the kernel log"
    ok=0
elif [ ! -d "$pmu" ]; then
    echo "LINUX: pmu none: the kernel log names $1, $pmu is missing"
    ok=0
else
    echo "LINUX: pmu $1, $2 counters"
    events=cycles
    [ -e "$pmu/events/inst_retired" ] && events="cycles instructions"
    /bin/perfcheck $events || ok=0
fi
[ "$ok" = 1 ] && echo "LINUX: ok"
$bb poweroff -f
echo "LINUX: poweroff -f returned"
"#;

/// The guest's command line: the PL011 as console, from the first
/// instruction on (`earlycon` finds it through `stdout-path`).
pub const BOOTARGS: &str = "console=ttyAMA0 earlycon";

/// vCPUs and memory of each Linux VM.
const VCPUS: u32 = 2;
const MEM_MIB: u32 = 256;
/// The board under the hypervisor: room for two Linux VMs.
const BOARD_SMP: u32 = 4;
const BOARD_RAM_MIB: u32 = 2048;
/// Plain QEMU boots it in about 3 s; under the hypervisor (TCG, every
/// console byte an exit) it is slower, and two VMs share the host's cores.
const BARE_TIMEOUT: Duration = Duration::from_secs(60);
const HYP_TIMEOUT: Duration = Duration::from_secs(300);
/// A booting kernel prints steadily; this long without output is a hang.
const SILENCE: Duration = Duration::from_secs(90);
/// After a panic, time for the rest of its message.
const PANIC_GRACE: Duration = Duration::from_secs(5);
const TAIL_LINES: usize = 60;

/// The kernel prints this when it powers off (`reboot: Power down`).
const POWER_DOWN: &str = "reboot: Power down";
const PANIC: &str = "Kernel panic - not syncing";

/// What `scripts/fetch-linux` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Debian's `vmlinuz`: an arm64 Image.
    pub kernel: PathBuf,
    /// Its release, as `uname -r` prints it.
    pub release: String,
    /// A static arm64 busybox.
    pub busybox: PathBuf,
}

/// Reads `scripts/fetch-linux`'s output: `kernel PATH`, `release R` and
/// `busybox PATH` lines.
///
/// # Errors
/// A line is missing, given twice or empty, or an unknown line appears.
pub fn parse_fetch(text: &str) -> Result<Fetched, String> {
    let (mut kernel, mut release, mut busybox) = (None, None, None);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = value.trim();
        let slot = match key {
            "kernel" => &mut kernel,
            "release" => &mut release,
            "busybox" => &mut busybox,
            _ => return Err(format!("unexpected line `{line}`")),
        };
        if value.is_empty() {
            return Err(format!("`{key}` has no value"));
        }
        if slot.replace(value.to_string()).is_some() {
            return Err(format!("`{key}` is given twice"));
        }
    }
    let need = |v: Option<String>, key: &str| v.ok_or_else(|| format!("no `{key}` line"));
    Ok(Fetched {
        kernel: need(kernel, "kernel")?.into(),
        release: need(release, "release")?,
        busybox: need(busybox, "busybox")?.into(),
    })
}

/// One member of a cpio archive.
struct Member<'a> {
    path: &'a str,
    /// File type and permission bits, as `st_mode`.
    mode: u32,
    data: &'a [u8],
    /// Major and minor number of a device file.
    rdev: (u32, u32),
}

/// A cpio "newc" archive of `members` ended by `TRAILER!!!`. Unlike
/// [`guestcfg::write_cpio`] (plain 0644 files) it keeps types and modes:
/// the initramfs needs directories, executables and a device node.
fn write_newc(members: &[Member]) -> Result<Vec<u8>, String> {
    let mut w = cpio::Writer::new(Vec::new());
    for m in members {
        w.entry(m.path, m.mode, m.data, m.rdev).map_err(|e| format!("{}: {e}", m.path))?;
    }
    Ok(w.finish())
}

/// The initramfs: `/bin/busybox`, `/bin/perfcheck`, `/init` (the script
/// [`INIT`]), the mount points and `/dev/console` (character device 5:1, for
/// kernels whose built-in initramfs lacks it).
///
/// # Errors
/// `busybox` is not a 64-bit little-endian arm64 ELF file, `perfcheck` is
/// not a static arm64 executable ([`check_static_exec`]), or either is 4 GiB
/// or more.
pub fn initramfs(busybox: &[u8], perfcheck: &[u8]) -> Result<Vec<u8>, String> {
    const EM_AARCH64: u16 = 183;
    let arm64 = busybox.len() > 20
        && busybox.starts_with(b"\x7fELF\x02\x01")
        && u16::from_le_bytes([busybox[18], busybox[19]]) == EM_AARCH64;
    if !arm64 {
        return Err("busybox is not an arm64 ELF file".into());
    }
    check_static_exec(perfcheck).map_err(|e| format!("perfcheck: {e}"))?;
    let dir = |path| Member { path, mode: S_IFDIR | 0o755, data: &[], rdev: (0, 0) };
    write_newc(&[
        dir("bin"),
        dir("dev"),
        dir("proc"),
        dir("sys"),
        Member { path: "dev/console", mode: S_IFCHR | 0o600, data: &[], rdev: (5, 1) },
        Member { path: "bin/busybox", mode: S_IFREG | 0o755, data: busybox, rdev: (0, 0) },
        Member { path: "bin/perfcheck", mode: S_IFREG | 0o755, data: perfcheck, rdev: (0, 0) },
        Member { path: "init", mode: S_IFREG | 0o755, data: INIT.as_bytes(), rdev: (0, 0) },
    ])
}

/// Checks that `elf` is what Linux runs as it is, without a dynamic loader
/// or relocation: a 64-bit little-endian arm64 `ET_EXEC` with loadable
/// segments, its entry point in an executable one, no `PT_INTERP` or
/// `PT_DYNAMIC`, no relocations left for a loader.
///
/// # Errors
/// Names the first property that does not hold.
pub fn check_static_exec(elf: &[u8]) -> Result<(), String> {
    use object::elf::{self, FileHeader64};
    use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
    use object::Endianness;

    let header = FileHeader64::<Endianness>::parse(elf).map_err(|e| format!("not an ELF64 file: {e}"))?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    if endian != Endianness::Little {
        return Err("not little-endian".into());
    }
    if header.e_machine(endian) != elf::EM_AARCH64 {
        return Err(format!("machine {}, not arm64 (EM_AARCH64)", header.e_machine(endian)));
    }
    if header.e_type(endian) != elf::ET_EXEC {
        return Err(format!("ELF type {}, not ET_EXEC: it must be linked static and non-PIE", header.e_type(endian)));
    }
    let phdrs = header.program_headers(endian, elf).map_err(|e| format!("program headers: {e}"))?;
    for p in phdrs {
        match p.p_type(endian) {
            elf::PT_INTERP => return Err("it has a PT_INTERP: it wants a dynamic loader".into()),
            elf::PT_DYNAMIC => return Err("it has a PT_DYNAMIC: it is dynamically linked".into()),
            _ => {}
        }
    }
    let entry = header.e_entry(endian);
    let runs_entry = phdrs.iter().any(|p| {
        let (start, size) = (p.p_vaddr(endian), p.p_memsz(endian));
        p.p_type(endian) == elf::PT_LOAD && p.p_flags(endian) & elf::PF_X != 0 && (start..start + size).contains(&entry)
    });
    if !runs_entry {
        return Err(format!("its entry point {entry:#x} is in no executable PT_LOAD segment"));
    }
    let sections = header.sections(endian, elf).map_err(|e| format!("section headers: {e}"))?;
    for s in sections.iter() {
        let relocs = matches!(s.sh_type(endian), elf::SHT_RELA | elf::SHT_REL);
        if relocs && s.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0 && s.sh_size(endian) != 0 {
            return Err("it has relocations for a loader to apply (.rela.dyn): build it non-PIE".into());
        }
    }
    Ok(())
}

/// perfcheck's package and binary, and the flags that make it a static,
/// non-PIE executable: they replace `.cargo/config.toml`'s PIE flags for
/// `aarch64-unknown-none` (`RUSTFLAGS` wins over `target.<triple>.rustflags`).
const PERF_PACKAGE: &str = "ferrovisor-linux-perf";
const PERF_BIN: &str = "perfcheck";
const PERF_RUSTFLAGS: &str = "-C relocation-model=static";

/// Builds `/bin/perfcheck` (release, `aarch64-unknown-none`) and returns
/// its ELF file.
fn build_perfcheck(root: &Path) -> Result<Vec<u8>, String> {
    let target = crate::guests::GUEST_TARGET;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", PERF_RUSTFLAGS)
        .args(["build", "--quiet", "--release", "-p", PERF_PACKAGE, "--target", target])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p {PERF_PACKAGE} failed ({status})"));
    }
    let path = crate::target_dir(root).join(target).join("release").join(PERF_BIN);
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The files a Linux test boots.
struct Files {
    kernel: PathBuf,
    release: String,
    initramfs: PathBuf,
}

static FILES: OnceLock<Result<Files, String>> = OnceLock::new();

/// Runs `scripts/fetch-linux` (once per xtask run) and writes the initramfs
/// into the test directory.
fn files(ctx: &Ctx) -> Result<&'static Files, Failure> {
    FILES.get_or_init(|| fetch_and_pack(&ctx.root, &ctx.work)).as_ref().map_err(|e| Failure::plain(e.clone()))
}

fn fetch_and_pack(root: &Path, work: &Path) -> Result<Files, String> {
    let script = root.join("scripts/fetch-linux");
    let out =
        Command::new(&script).arg("--quiet").output().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/fetch-linux could not fetch Debian's kernel and busybox-static ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let f = parse_fetch(&String::from_utf8_lossy(&out.stdout)).map_err(|e| format!("scripts/fetch-linux: {e}"))?;
    let busybox = std::fs::read(&f.busybox).map_err(|e| format!("{}: {e}", f.busybox.display()))?;
    let perfcheck = build_perfcheck(root)?;
    let archive = initramfs(&busybox, &perfcheck).map_err(|e| format!("the initramfs: {e}"))?;
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let initramfs = work.join("linux-initramfs.cpio");
    std::fs::write(&initramfs, archive).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    Ok(Files { kernel: f.kernel, release: f.release, initramfs })
}

/// What a Linux guest said of its PMU: its `LINUX: pmu` line and its
/// `LINUX: perf` lines, in order. The tests under the hypervisor compare it
/// with plain QEMU's (the same `-cpu`): the counters a PMU has may differ
/// from one board to another, not between a VM and the CPU it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PmuSaid {
    pub pmu: String,
    pub perf: Vec<String>,
}

impl PmuSaid {
    fn show(&self) -> String {
        std::iter::once(&self.pmu).chain(&self.perf).map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
    }
}

/// Checks what one Linux guest printed (its console lines, without any VM
/// prefix): the release, the CPU count, an armv8 PMU with its counters
/// (`LINUX: pmu armv8_..., N counters`), perf_event counting cycles
/// (`LINUX: perf cycles counting`, no `LINUX: perf FAILED`), `LINUX: ok`.
/// Returns what it said of its PMU.
///
/// # Errors
/// Names the first line that is missing or wrong, and the guest's last line.
pub fn check_guest<'a>(lines: impl IntoIterator<Item = &'a str>, release: &str, cpus: u32) -> Result<PmuSaid, String> {
    let lines: Vec<&str> = lines.into_iter().collect();
    let Some(last) = lines.last() else {
        return Err("it printed nothing".into());
    };
    let said = |key: &str| lines.iter().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let want = [("LINUX: version ", release.to_string()), ("LINUX: cpus ", cpus.to_string())];
    for (key, value) in &want {
        match said(key) {
            Some(v) if v == value => {}
            Some(v) => return Err(format!("it printed `{key}{v}`, not `{key}{value}`")),
            None => return Err(missing(&lines, &format!("{key}{value}"), last)),
        }
    }
    const PMU: &str = "LINUX: pmu ";
    let Some(pmu) = said(PMU) else {
        return Err(missing(&lines, "LINUX: pmu armv8_..., N counters", last));
    };
    let counters = pmu
        .strip_prefix("armv8_")
        .and_then(|rest| rest.split_once(", "))
        .and_then(|(_, n)| n.strip_suffix(" counters"))
        .and_then(|n| n.parse::<u32>().ok());
    match counters {
        Some(n) if n > 0 => {}
        _ if pmu.starts_with("none") => return Err(format!("it found no PMU: `{PMU}{pmu}`")),
        _ => return Err(format!("it printed `{PMU}{pmu}`, not `{PMU}armv8_..., N counters`")),
    }
    let perf: Vec<String> = lines.iter().filter(|l| l.starts_with("LINUX: perf ")).map(|l| l.trim().into()).collect();
    if let Some(failed) = perf.iter().find(|l| l.starts_with("LINUX: perf FAILED")) {
        return Err(format!("its perf_event counters do not work: `{failed}`"));
    }
    if !perf.iter().any(|l| l == "LINUX: perf cycles counting") {
        return Err(missing(&lines, "LINUX: perf cycles counting", last));
    }
    if !lines.contains(&"LINUX: ok") {
        return Err(missing(&lines, "LINUX: ok", last));
    }
    Ok(PmuSaid { pmu: format!("{PMU}{pmu}"), perf })
}

fn missing(lines: &[&str], want: &str, last: &str) -> String {
    match lines.iter().find(|l| l.contains(PANIC)) {
        Some(panic) => format!("no `{want}`: the kernel panicked: `{}`", panic.trim()),
        None => format!("no `{want}` line; its last line: `{last}`"),
    }
}

/// Checks a run of Linux VMs under the hypervisor: each VM's lines (after
/// its `name: ` prefix, and its PMU lines the same as `bare`'s), its end by
/// `SYSTEM_OFF`, and the power-off.
///
/// # Errors
/// Names what is missing or wrong, VM by VM.
pub fn check_vms(output: &str, names: &[&str], release: &str, cpus: u32, bare: &PmuSaid) -> Result<(), String> {
    let lines: Vec<&str> = output.lines().collect();
    if let Some(at) = lines.iter().position(|l| l.contains("ferrovisor: panic")) {
        let what = lines.get(at + 1).map_or(String::new(), |l| format!(" {l}"));
        return Err(format!("the hypervisor panicked: {}{what}", lines[at].trim()));
    }
    for name in names {
        let prefix = format!("{name}: ");
        let own = lines.iter().filter_map(|l| l.strip_prefix(prefix.as_str()));
        let pmu = check_guest(own, release, cpus).map_err(|e| {
            // The hypervisor's word on why the VM did not start or was stopped.
            let why = [format!("vm {name}: not started"), format!("vm {name}: ended (stopped")];
            match lines.iter().find(|l| why.iter().any(|w| l.starts_with(w.as_str()))) {
                Some(said) => format!("vm {name}: {e} (the hypervisor: `{said}`)"),
                None => format!("vm {name}: {e}"),
            }
        })?;
        if pmu != *bare {
            return Err(format!("vm {name}: its PMU: {}; on plain QEMU: {}", pmu.show(), bare.show()));
        }
        let ended = format!("vm {name}: ended (");
        match output.lines().find(|l| l.starts_with(&ended)) {
            Some(l) if l.starts_with(&format!("vm {name}: ended (system off)")) => {}
            Some(l) => return Err(format!("vm {name} did not end with SYSTEM_OFF: `{l}`")),
            None => return Err(format!("vm {name}: no `vm {name}: ended (system off)` line")),
        }
    }
    if !output.lines().any(|l| l.contains("ferrovisor: all VMs ended")) {
        return Err("no `ferrovisor: all VMs ended`".into());
    }
    match check::power_off_status(output) {
        Some(0) => Ok(()),
        Some(n) => Err(format!("the hypervisor powered off with status {n}, not 0")),
        None => Err("the hypervisor did not power off".into()),
    }
}

/// Lines after which a Linux run is over, and the silence allowed after
/// them; any other line allows [`SILENCE`], so a hung kernel is caught
/// before the time limit.
fn end_line(line: &str) -> Option<Duration> {
    if let Some(grace) = crate::boottest::end_line(line) {
        Some(grace)
    } else if line.contains(PANIC) {
        Some(PANIC_GRACE)
    } else {
        Some(SILENCE)
    }
}

fn watch(ctx: &Ctx, timeout: Duration) -> Watch {
    Watch { echo: ctx.verbose, interactive: false, timeout: Some(timeout), stop_on: end_line, progress: None }
}

fn ended(o: &Outcome, timeout: Duration) -> Result<(), String> {
    match o.end {
        End::Exited(Some(0)) => Ok(()),
        End::Exited(Some(c)) => Err(format!("QEMU exited with status {c}")),
        End::Exited(None) => Err("QEMU was killed by a signal".into()),
        End::Stopped if o.output.contains(PANIC) => Err("QEMU was stopped after the kernel panic".into()),
        End::Stopped => Err(format!("QEMU was stopped after {}s without output", SILENCE.as_secs())),
        End::TimedOut => Err(format!("timeout after {}s", timeout.as_secs())),
    }
}

/// Both a console check and how QEMU ended, the console's reason first.
fn verdict<T>(o: &Outcome, console: Result<T, String>, timeout: Duration) -> Result<T, Failure> {
    let reason = match (console, ended(o, timeout)) {
        (Ok(said), Ok(())) => return Ok(said),
        (Err(a), Ok(())) | (Ok(_), Err(a)) => a,
        (Err(a), Err(b)) => format!("{a}; {b}"),
    };
    Err(Failure { reason, log: o.tail(TAIL_LINES) })
}

/// The control's result, once per xtask run: the tests under the
/// hypervisor compare their PMU lines with it.
static BARE: OnceLock<Result<PmuSaid, Failure>> = OnceLock::new();

/// The control: the same kernel and initramfs on plain QEMU (no
/// hypervisor), where QEMU provides the GIC, timer, PSCI and the PMU.
fn bare(ctx: &Ctx) -> Result<(), Failure> {
    match bare_run(ctx) {
        Ok(_) => Ok(()),
        Err(f) => Err(Failure { reason: f.reason.clone(), log: f.log.clone() }),
    }
}

/// The control's PMU lines, booting it if no test has yet.
fn bare_run(ctx: &Ctx) -> Result<&'static PmuSaid, &'static Failure> {
    BARE.get_or_init(|| {
        let f = files(ctx)?;
        let m =
            Machine { virtualization: false, smp: VCPUS, mem_mib: 512, append: BOOTARGS.into(), ..Machine::default() };
        let args = m.boot_args(&f.kernel, None, Some(&f.initramfs));
        let o = qemu::run(&args, &watch(ctx, BARE_TIMEOUT)).map_err(|e| Failure::plain(e.to_string()))?;
        let console = check_guest(o.output.lines(), &f.release, VCPUS).and_then(|pmu| {
            o.output.lines().any(|l| l.contains(POWER_DOWN)).then_some(pmu).ok_or(format!("no `{POWER_DOWN}` line"))
        });
        verdict(&o, console, BARE_TIMEOUT)
    })
    .as_ref()
}

/// Linux VMs named `names`, 2 vCPUs and 256 MiB each, under the hypervisor
/// on virt with `gic` at `-smp 4`.
fn under_hypervisor(ctx: &Ctx, gic: u8, names: &[&str]) -> Result<(), Failure> {
    let f = files(ctx)?;
    let reference = bare_run(ctx).map_err(|e| Failure {
        reason: format!(
            "the control on plain QEMU (linux-bare), which the PMU lines are compared with, failed: {}",
            e.reason
        ),
        log: e.log.clone(),
    })?;
    let machine = Machine { gic, smp: BOARD_SMP, mem_mib: BOARD_RAM_MIB, ..Machine::default() };
    let specs: Vec<GuestSpec> = names
        .iter()
        .map(|name| GuestSpec {
            name: (*name).into(),
            kernel: f.kernel.clone(),
            initrd: Some(f.initramfs.clone()),
            bootargs: BOOTARGS.into(),
            vcpus: VCPUS,
            mem_mib: MEM_MIB,
            pinned: false,
        })
        .collect();
    guestcfg::check_files(&specs).map_err(Failure::plain)?;
    let prepared = guestcfg::prepare(&ctx.root, &machine, &specs).map_err(Failure::plain)?;
    let args = machine.boot_args(&ctx.image, Some(&prepared.dtb), Some(&prepared.bundle));
    let o = qemu::run(&args, &watch(ctx, HYP_TIMEOUT)).map_err(|e| Failure::plain(e.to_string()))?;
    verdict(&o, check_vms(&o.output, names, &f.release, VCPUS, reference), HYP_TIMEOUT)
}

pub type TestFn = Box<dyn Fn(&Ctx) -> Result<(), Failure>>;

/// The Linux tests: (name, needs the hypervisor's image, test).
pub fn tests() -> Vec<(String, bool, TestFn)> {
    vec![
        ("linux-bare".into(), false, Box::new(bare)),
        ("linux-gicv3".into(), true, Box::new(|c| under_hypervisor(c, 3, &["linux"]))),
        ("linux-gicv2".into(), true, Box::new(|c| under_hypervisor(c, 2, &["linux"]))),
        // GICv4: the guest's ITS is backed by a physical device and vPEs.
        ("linux-gicv4".into(), true, Box::new(|c| under_hypervisor(c, 4, &["linux"]))),
        ("linux-two-vms".into(), true, Box::new(|c| under_hypervisor(c, 3, &["linux-a", "linux-b"]))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_output() {
        let f = parse_fetch("kernel /c/k/vmlinuz\nrelease 6.1.0-56-arm64\nbusybox /c/b/busybox\n").unwrap();
        assert_eq!(f.kernel, Path::new("/c/k/vmlinuz"));
        assert_eq!(f.release, "6.1.0-56-arm64");
        assert_eq!(f.busybox, Path::new("/c/b/busybox"));
        // A path with a space stays whole.
        assert_eq!(parse_fetch("busybox /a b/bb\nrelease r\nkernel k").unwrap().busybox, Path::new("/a b/bb"));
        for (text, msg) in [
            ("kernel k\nrelease r\n", "no `busybox` line"),
            ("kernel k\nkernel k\nrelease r\nbusybox b", "`kernel` is given twice"),
            ("kernel\nrelease r\nbusybox b", "`kernel` has no value"),
            ("kernel k\nrelease r\nbusybox b\nfetch-linux: cached", "unexpected line `fetch-linux: cached`"),
            ("", "no `kernel` line"),
        ] {
            assert_eq!(parse_fetch(text).unwrap_err(), msg, "{text:?}");
        }
    }

    /// path, mode, data, rdev
    type ReadBack = (String, u32, Vec<u8>, (u32, u32));

    /// Reads a newc archive back, member by member up to the trailer.
    fn read_newc(a: &[u8]) -> Vec<ReadBack> {
        assert!(a.ends_with(b"TRAILER!!!\0\0\0\0"), "nothing after the trailer");
        let archive = cpio::Archive::parse(a).unwrap();
        archive.entries().map(|e| (e.name.to_string(), e.mode, e.data.to_vec(), e.rdev)).collect()
    }

    fn fake_busybox() -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
        elf.resize(18, 0);
        elf.extend_from_slice(&183u16.to_le_bytes());
        elf.extend_from_slice(b"rest of an arm64 ELF, 3 bytes off 4");
        elf
    }

    /// A static arm64 executable as the kernel runs it: one RX segment at
    /// 0x400000 with the entry point in it.
    fn fake_perfcheck(e_type: u16, machine: u16, entry: u64, relas: &[(u64, u32, i64)]) -> Vec<u8> {
        use crate::pack::tests::{fake_elf, Seg};
        let segs = [Seg { vaddr: 0x40_0000, data: vec![0xd5; 0x100], memsz: 0x100 }];
        fake_elf(e_type, machine, entry, &segs, relas)
    }

    fn good_perfcheck() -> Vec<u8> {
        fake_perfcheck(object::elf::ET_EXEC, object::elf::EM_AARCH64, 0x40_0010, &[])
    }

    #[test]
    fn static_executables() {
        use object::elf;
        assert_eq!(check_static_exec(&good_perfcheck()), Ok(()));
        let e = check_static_exec(&fake_perfcheck(elf::ET_DYN, elf::EM_AARCH64, 0x40_0010, &[])).unwrap_err();
        assert_eq!(e, "ELF type 3, not ET_EXEC: it must be linked static and non-PIE");
        let e = check_static_exec(&fake_perfcheck(elf::ET_EXEC, elf::EM_X86_64, 0x40_0010, &[])).unwrap_err();
        assert_eq!(e, "machine 62, not arm64 (EM_AARCH64)");
        let e = check_static_exec(&fake_perfcheck(elf::ET_EXEC, elf::EM_AARCH64, 0x40_0100, &[])).unwrap_err();
        assert_eq!(e, "its entry point 0x400100 is in no executable PT_LOAD segment");
        let relocs = [(0x40_0020, elf::R_AARCH64_RELATIVE, 0x40_0000)];
        let e = check_static_exec(&fake_perfcheck(elf::ET_EXEC, elf::EM_AARCH64, 0x40_0010, &relocs)).unwrap_err();
        assert!(e.starts_with("it has relocations for a loader to apply"), "{e}");
        // The first program header (at e_phoff 64) made a PT_INTERP or a PT_DYNAMIC.
        for (p_type, msg) in [(elf::PT_INTERP, "PT_INTERP"), (elf::PT_DYNAMIC, "PT_DYNAMIC")] {
            let mut f = good_perfcheck();
            f[64..68].copy_from_slice(&p_type.to_le_bytes());
            assert!(check_static_exec(&f).unwrap_err().contains(msg), "{msg}");
        }
        let mut big_endian = good_perfcheck();
        big_endian[5] = 2;
        assert!(check_static_exec(&big_endian).is_err());
        assert!(check_static_exec(b"#!/bin/sh\n").unwrap_err().starts_with("not an ELF64 file"));
    }

    #[test]
    fn initramfs_members() {
        let bb = fake_busybox();
        let perf = good_perfcheck();
        let members = read_newc(&initramfs(&bb, &perf).unwrap());
        let find = |p: &str| members.iter().find(|m| m.0 == p).unwrap_or_else(|| panic!("no {p}"));
        for d in ["bin", "dev", "proc", "sys"] {
            assert_eq!(find(d).1, 0o040_755, "{d}");
        }
        assert_eq!(find("bin/busybox").1, 0o100_755);
        assert_eq!(find("bin/busybox").2, bb);
        assert_eq!(find("bin/perfcheck").1, 0o100_755);
        assert_eq!(find("bin/perfcheck").2, perf);
        assert_eq!(find("init").1, 0o100_755);
        assert_eq!(find("dev/console").1, 0o020_600);
        assert_eq!(find("dev/console").3, (5, 1));
        // A directory comes before what is in it.
        let at = |p: &str| members.iter().position(|m| m.0 == p).unwrap();
        assert!(at("bin") < at("bin/busybox") && at("dev") < at("dev/console"));
        let init = String::from_utf8(find("init").2.clone()).unwrap();
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        for line in [
            "echo \"LINUX: version $($bb uname -r)\"",
            "echo \"LINUX: cpus $cpus\"",
            "echo \"LINUX: pmu $1, $2 counters\"",
            "/bin/perfcheck $events || ok=0",
            "$bb poweroff -f",
        ] {
            assert!(init.lines().any(|l| l.trim_start() == line), "{line}");
        }
    }

    #[test]
    fn initramfs_wants_arm64_busybox() {
        let mut x86 = fake_busybox();
        x86[18] = 62;
        let perf = good_perfcheck();
        assert_eq!(initramfs(&x86, &perf).unwrap_err(), "busybox is not an arm64 ELF file");
        assert!(initramfs(b"#!/bin/sh\n", &perf).is_err());
        assert!(initramfs(&[], &perf).is_err());
        let pie = fake_perfcheck(object::elf::ET_DYN, object::elf::EM_AARCH64, 0x40_0010, &[]);
        let e = initramfs(&fake_busybox(), &pie).unwrap_err();
        assert!(e.starts_with("perfcheck: ELF type 3, not ET_EXEC"), "{e}");
    }

    const GOOD: &str = "\
[    2.082248] Run /init as init process
LINUX: version 6.1.0-56-arm64
LINUX: cpus 2
LINUX: pmu armv8_pmuv3, 7 counters
perfcheck: cycles: 1223788 1973149 2464285
LINUX: perf cycles counting
LINUX: ok
[    2.422128] reboot: Power down";

    fn good_pmu() -> PmuSaid {
        PmuSaid { pmu: "LINUX: pmu armv8_pmuv3, 7 counters".into(), perf: vec!["LINUX: perf cycles counting".into()] }
    }

    #[test]
    fn guest_lines() {
        assert_eq!(check_guest(GOOD.lines(), "6.1.0-56-arm64", 2), Ok(good_pmu()));
        let with_insns = GOOD.replace("counting\n", "counting\nLINUX: perf instructions counting\n");
        let said = check_guest(with_insns.lines(), "6.1.0-56-arm64", 2).unwrap();
        assert_eq!(said.perf, ["LINUX: perf cycles counting", "LINUX: perf instructions counting"]);
        let pmu_err =
            |from: &str, to: &str| check_guest(GOOD.replace(from, to).lines(), "6.1.0-56-arm64", 2).unwrap_err();
        let none = "LINUX: pmu none: no 'hw perfevents: enabled' in the kernel log";
        assert_eq!(pmu_err("LINUX: pmu armv8_pmuv3, 7 counters", none), format!("it found no PMU: `{none}`"));
        for wrong in
            ["LINUX: pmu armv7_cortex_a15, 7 counters", "LINUX: pmu armv8_pmuv3, 0 counters", "LINUX: pmu armv8_pmuv3"]
        {
            let e = pmu_err("LINUX: pmu armv8_pmuv3, 7 counters", wrong);
            assert_eq!(e, format!("it printed `{wrong}`, not `LINUX: pmu armv8_..., N counters`"));
        }
        let e = pmu_err("LINUX: pmu armv8_pmuv3, 7 counters\n", "");
        assert!(e.starts_with("no `LINUX: pmu armv8_..., N counters` line"), "{e}");
        let failed = "LINUX: perf FAILED: cycles: perf_event_open: ENOENT (errno 2)";
        let e = pmu_err("LINUX: perf cycles counting", failed);
        assert_eq!(e, format!("its perf_event counters do not work: `{failed}`"));
        // A failure beside a counting event still fails.
        let e = pmu_err("LINUX: perf cycles counting", &format!("LINUX: perf cycles counting\n{failed}"));
        assert!(e.starts_with("its perf_event counters do not work"), "{e}");
        let e = pmu_err("LINUX: perf cycles counting\n", "");
        assert!(e.starts_with("no `LINUX: perf cycles counting` line"), "{e}");
        let e = check_guest(GOOD.lines(), "6.1.0-56-arm64", 4).unwrap_err();
        assert_eq!(e, "it printed `LINUX: cpus 2`, not `LINUX: cpus 4`");
        let e = check_guest(GOOD.lines(), "6.12.0-1-arm64", 2).unwrap_err();
        assert!(e.contains("`LINUX: version 6.1.0-56-arm64`, not `LINUX: version 6.12.0-1-arm64`"), "{e}");
        let no_ok = GOOD.replace("LINUX: ok\n", "");
        assert!(check_guest(no_ok.lines(), "6.1.0-56-arm64", 2).unwrap_err().starts_with("no `LINUX: ok` line"));
        let stuck = "[    0.000000] Booting Linux\n[    0.100000] smp: Bringing up secondary CPUs ...";
        assert_eq!(
            check_guest(stuck.lines(), "r", 2).unwrap_err(),
            "no `LINUX: version r` line; its last line: `[    0.100000] smp: Bringing up secondary CPUs ...`"
        );
        let panic =
            "[    1.0] Run /init as init process\n[    1.1] Kernel panic - not syncing: No working init found.\n";
        let e = check_guest(panic.lines(), "r", 2).unwrap_err();
        assert!(e.contains("the kernel panicked: `[    1.1] Kernel panic - not syncing: No working init found.`"));
        assert_eq!(check_guest("".lines(), "r", 2).unwrap_err(), "it printed nothing");
    }

    fn run_output(vms: &[(&str, &str)]) -> String {
        let mut out = String::from("Ferrovisor 0.1.0\nvm linux-a: 2 vCPUs on CPUs [0, 1], 256 MiB\n");
        for (name, console) in vms {
            for l in console.lines() {
                out += &format!("{name}: {l}\n");
            }
        }
        for (name, _) in vms {
            out += &format!("vm {name}: ended (system off), no EXIT line, verdict Pass\nvm {name}: exits 9\n");
        }
        out + "ferrovisor: all VMs ended\nferrovisor: power off, status 0\n"
    }

    #[test]
    fn vm_lines() {
        let r = "6.1.0-56-arm64";
        let two = run_output(&[("linux-a", GOOD), ("linux-b", GOOD)]);
        let bare = good_pmu();
        assert_eq!(check_vms(&two, &["linux-a", "linux-b"], r, 2, &bare), Ok(()));
        // A VM's PMU is the one of the CPU it runs on, as on plain QEMU.
        let fewer = run_output(&[("linux-a", &GOOD.replace("7 counters", "1 counters"))]);
        assert_eq!(
            check_vms(&fewer, &["linux-a"], r, 2, &bare).unwrap_err(),
            "vm linux-a: its PMU: `LINUX: pmu armv8_pmuv3, 1 counters`, `LINUX: perf cycles counting`; \
             on plain QEMU: `LINUX: pmu armv8_pmuv3, 7 counters`, `LINUX: perf cycles counting`"
        );
        let bare_insns =
            PmuSaid { perf: vec![bare.perf[0].clone(), "LINUX: perf instructions counting".into()], ..good_pmu() };
        let e = check_vms(&two, &["linux-a"], r, 2, &bare_insns).unwrap_err();
        assert!(e.ends_with("`LINUX: perf cycles counting`, `LINUX: perf instructions counting`"), "{e}");
        // Another VM's lines are not this one's.
        let one = run_output(&[("linux-a", GOOD), ("linux-b", "[    0.0] Booting Linux")]);
        let e = check_vms(&one, &["linux-a", "linux-b"], r, 2, &bare).unwrap_err();
        assert_eq!(e, format!("vm linux-b: no `LINUX: version {r}` line; its last line: `[    0.0] Booting Linux`"));
        assert_eq!(check_vms(&one, &["linux-c"], r, 2, &bare).unwrap_err(), "vm linux-c: it printed nothing");
        let refused = one.replace("ferrovisor: all", "vm linux-c: not started: it needs 2 vCPUs\nferrovisor: all");
        assert_eq!(
            check_vms(&refused, &["linux-c"], r, 2, &bare).unwrap_err(),
            "vm linux-c: it printed nothing (the hypervisor: `vm linux-c: not started: it needs 2 vCPUs`)"
        );
        let panic = "self-check: PASS\nferrovisor: panic on cpu0: panicked at a.rs:1:2:\nout of memory\n";
        assert_eq!(
            check_vms(panic, &["linux"], r, 2, &bare).unwrap_err(),
            "the hypervisor panicked: ferrovisor: panic on cpu0: panicked at a.rs:1:2: out of memory"
        );
        let stopped = two.replace("vm linux-b: ended (system off)", "vm linux-b: ended (stopped: SError)");
        let e = check_vms(&stopped, &["linux-a", "linux-b"], r, 2, &bare).unwrap_err();
        assert!(e.starts_with("vm linux-b did not end with SYSTEM_OFF: `vm linux-b: ended (stopped: SError)"), "{e}");
        let no_end = two.replace("vm linux-a: ended", "vm linux-a: still");
        let e = check_vms(&no_end, &["linux-a"], r, 2, &bare).unwrap_err();
        assert_eq!(e, "vm linux-a: no `vm linux-a: ended (system off)` line");
        let status = two.replace("status 0", "status 1");
        let e = check_vms(&status, &["linux-a"], r, 2, &bare).unwrap_err();
        assert_eq!(e, "the hypervisor powered off with status 1, not 0");
        let cut = two.replace("ferrovisor: all VMs ended\nferrovisor: power off, status 0\n", "");
        assert_eq!(check_vms(&cut, &["linux-a"], r, 2, &bare).unwrap_err(), "no `ferrovisor: all VMs ended`");
    }

    #[test]
    fn end_lines() {
        assert_eq!(end_line("ferrovisor: power off, status 0"), Some(Duration::from_secs(2)));
        assert_eq!(end_line("linux: [    1.1] Kernel panic - not syncing: Attempted to kill init!"), Some(PANIC_GRACE));
        assert_eq!(end_line("linux: [    0.0] Booting Linux"), Some(SILENCE));
    }
}
