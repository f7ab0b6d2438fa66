//! Guest tests for `cargo xtask test`: the test guests of `tests/guests` run
//! as VMs under the hypervisor, described to it in the board's device tree
//! the way `scripts/run --guest` does, and every VM's verdicts are asserted.
//! Then each VM's guest runs alone on QEMU, and its verdicts must match
//! (`reference.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::boottest::{Ctx, Failure};
use crate::guestcfg::{self, GuestSpec};
use crate::qemu::{self, Board, End, Machine, Outcome, Watch};
use crate::reference::{self, Verdicts, ALLOWED};

/// One VM of a guest test and what its console must show.
pub struct Vm {
    pub name: &'static str,
    pub guest: &'static str,
    pub bootargs: String,
    pub vcpus: u32,
    pub mem_mib: u32,
    /// Make an initrd of this many bytes with the `cmo` pattern.
    pub initrd_pattern: Option<usize>,
    /// Lines (after the `name: ` prefix) that must appear.
    pub expect: &'static [&'static str],
    /// Lines of the hypervisor's own that must appear.
    pub host_expect: &'static [&'static str],
    /// `ferrovisor,pinned`.
    pub pinned: bool,
    /// The VM's statistics must count GICv4 doorbells (`Some(true)`: at
    /// least one) or none (`Some(false)`: software injection).
    pub doorbells: Option<bool>,
    /// The host ticks its statistics may count as guest exits (`tick
    /// exits`): none to speak of when every vCPU has a CPU to itself, some
    /// when they are time-sliced.
    pub tick_exits: Option<std::ops::RangeInclusive<u64>>,
}

impl Vm {
    pub fn new(name: &'static str, guest: &'static str, bootargs: &str, vcpus: u32) -> Self {
        Self {
            name,
            guest,
            bootargs: bootargs.into(),
            vcpus,
            mem_mib: 64,
            initrd_pattern: None,
            expect: &[],
            host_expect: &[],
            pinned: false,
            doorbells: None,
            tick_exits: None,
        }
    }
}

/// The tick exits allowed a VM whose vCPUs have CPUs to themselves: none is
/// armed for it, but one armed before the VM started may still come.
const DEDICATED_TICK_EXITS: u64 = 3;

/// The `tick exits` count of VM `name`'s statistics in `lines`.
fn tick_exits(lines: &[&str], name: &str) -> Option<u64> {
    let stats = format!("vm {name}: cmo: ");
    let line = lines.iter().find(|l| l.starts_with(&stats))?;
    let (head, _) = line.rsplit_once(" tick exits)")?;
    head.rsplit_once('(')?.1.parse().ok()
}

/// The guest tests, by GIC version.
pub fn tests(gic: u8) -> Vec<GuestTest> {
    let mut selftest_setup = Vm::new("selftest", "selftest", "setup smp=2 mem=256", 2);
    selftest_setup.mem_mib = 256;
    selftest_setup.expect = &["PASS: selftest: setup: "];
    let mut selftest = Vm::new("selftest", "selftest", "", 4);
    // 4 vCPUs on 4 CPUs, spinning 200 ms each in `progress`: a dedicated
    // CPU takes no tick (it took about 70 while the tick was periodic).
    selftest.tick_exits = Some(0..=DEDICATED_TICK_EXITS);
    selftest.expect = &[
        "PASS: selftest: vectors-kernel: ",
        "PASS: selftest: vectors-user: ",
        "PASS: selftest: smp: ",
        "PASS: selftest: fpu: ",
    ];
    let mut psci = Vm::new("psci", "psci", "", 4);
    psci.expect = &["PASS: psci: cpu-on-race: ", "PASS: psci: cpu-off: ", "PASS: psci: invalid-function"];
    let mut cmo = Vm::new("cmo", "cmo", "initrd-size=65549", 1);
    cmo.initrd_pattern = Some(65549);
    cmo.expect = &["PASS: cmo: "];
    cmo.host_expect = &["vm cmo: cmo: 1 epochs, 1 regions"];
    let mut cmo_reset = Vm::new("cmo-reset", "cmo", "reset", 2);
    cmo_reset.expect = &["PASS: cmo: reset: the VM restarted", "PASS: cmo: reset: after the reset .data holds"];
    cmo_reset.host_expect = &["vm cmo-reset: reset by vcpu 0", "vm cmo-reset: cmo: 2 epochs, 3 regions"];
    let mut hostile = Vm::new("hostile", "hostile", "", 1);
    hostile.expect = &[
        "PASS: hostile: unknown-sysreg",
        "PASS: hostile: unknown-smc",
        "PASS: hostile: outside-map",
        "PASS: hostile: abort-flood: 2000 loads outside the map: each a synchronous external abort",
        "PASS: hostile: mmio-no-syndrome",
    ];
    hostile.host_expect = &[
        "vm hostile vcpu 0: read from IPA 0x2000000000",
        "unknown system register S3_0_C15_C0_0",
        "has no syndrome (ISV=0) to emulate: external abort",
        // 2001 loads outside the map in one 5 s window: a burst of 5 lines
        // (vm::ratelimit), the rest counted.
        "vm hostile: log lines suppressed 1996 (unmapped 1996)",
    ];
    let mut two_a = Vm::new("first", "selftest", "vectors-kernel", 2);
    two_a.expect = &["PASS: selftest: vectors-kernel: "];
    let mut two_b = Vm::new("second", "hostile", "", 2);
    two_b.expect = &["PASS: hostile: "];
    // Two VMs on one CPU, each writing its own breakpoint and watchpoint
    // values: el2 switches them (el2/src/debug.rs), so neither sees the other's.
    let mut debug_a = Vm::new("dbga", "hostile", "debug-regs salt=0xa", 1);
    debug_a.expect = &["PASS: hostile: debug-regs: DBGBVR0/1, DBGWVR0/1 kept salt 0xa's values over 2000 exits"];
    let mut debug_b = Vm::new("dbgb", "hostile", "debug-regs salt=0xb", 1);
    debug_b.expect = &["PASS: hostile: debug-regs: DBGBVR0/1, DBGWVR0/1 kept salt 0xb's values over 2000 exits"];
    // A load from every page outside the VM's RAM and devices (hostile's
    // ipa-probe): each aborts, and the host's log stays short.
    let mut probe = Vm::new("probe", "hostile", "ipa-probe", 1);
    probe.expect = &["PASS: hostile: ipa-probe: "];
    probe.host_expect = &["vm probe: log lines suppressed "];
    // Two VMs on one CPU writing their own patterns over an eighth of their
    // RAM: neither reads anything but zero and its own.
    let mut pattern_a = Vm::new("pata", "hostile", "ram-pattern salt=0x5a", 1);
    pattern_a.expect = &[
        "PASS: hostile: ram-pattern: 8 MiB at 0x43800000 read zero before written",
        "PASS: hostile: ram-pattern: it kept salt 0x5a's pattern over 2000 exits",
    ];
    let mut pattern_b = Vm::new("patb", "hostile", "ram-pattern salt=0xa5", 1);
    pattern_b.expect = &[
        "PASS: hostile: ram-pattern: 8 MiB at 0x43800000 read zero before written",
        "PASS: hostile: ram-pattern: it kept salt 0xa5's pattern over 2000 exits",
    ];
    let mut gic_vm = Vm::new("gic", "gic", "", 4);
    gic_vm.expect = &[
        "PASS: gic: ipi: to all but self",
        "PASS: gic: ipi: to self",
        "PASS: gic: active: EOImode 1: DIR deactivates it",
        "PASS: gic: dist: ",
    ];
    let mut timer = Vm::new("timer", "timer", "", 2);
    timer.expect = &["PASS: timer: vtimer: ", "PASS: timer: ptimer: ", "PASS: timer: wfi: "];
    let mut pmu = Vm::new("pmu", "pmu", "", 4);
    pmu.expect = &[
        "PASS: pmu: introspection: ID_AA64DFR0_EL1.PMUVer reports a PMUv3",
        "PASS: pmu: cycles: PMCCNTR_EL0 stands still while PMCNTENSET_EL0 bit 31 is clear",
        "PASS: pmu: swinc: 100 writes of PMSWINC_EL0 bit 0 count 100",
        "PASS: pmu: overflow: taken once after the handler cleared the flag (1)",
        "PASS: pmu: el0: PMUSERENR_EL0.CR = 1: EL0 reads PMCCNTR_EL0",
        "PASS: pmu: percpu: every CPU counted exactly its own SW_INCR events",
    ];
    let mut bench = Vm::new("micro-bench", "micro-bench", "", 2);
    bench.expect = if gic == 2 {
        &[
            "BENCH: hvc ",
            "BENCH: mmio_read_user ",
            "BENCH: mmio_read_vgic ",
            "BENCH: eoi ",
            "BENCH: ipi ",
            "BENCH: ipi_busy ",
            "BENCH: timer ",
            "BENCH: timer_busy ",
        ]
    } else {
        &[
            "BENCH: hvc ",
            "BENCH: mmio_read_user ",
            "BENCH: mmio_read_vgic ",
            "BENCH: eoi ",
            "BENCH: ipi ",
            "BENCH: ipi_busy ",
            "BENCH: lpi ",
            "BENCH: timer ",
            "BENCH: timer_busy ",
        ]
    };
    // Oversubscribed: 4 vCPUs on 2 CPUs, every one must make progress, and
    // IPIs, timers and CPU_ON work across the time-slicing.
    let mut over_selftest = Vm::new("selftest", "selftest", "", 4);
    over_selftest.expect = &["PASS: selftest: smp: ", "PASS: selftest: progress: "];
    over_selftest.host_expect = &["ferrovisor: 4 vCPUs on 2 CPUs: time-sliced"];
    // Time-slicing is the tick's: `progress` cannot pass without it.
    over_selftest.tick_exits = Some(1..=u64::MAX);
    let mut over_gic = Vm::new("gic", "gic", "ipi", 4);
    over_gic.expect = &["PASS: gic: ipi: to all but self"];
    let mut pinned = Vm::new("pinned", "selftest", "smp", 4);
    pinned.pinned = true;
    pinned.expect = &["PASS: selftest: smp: "];
    pinned.host_expect = &["vm pinned: 4 vCPUs pinned to CPUs [0, 1, 2, 3]"];
    let mut over_timer = Vm::new("timer", "timer", "", 4);
    over_timer.expect = &["PASS: timer: wfi: "];
    let v = |s: &str| format!("guest-{s}-gicv{gic}");
    let mut tests = vec![
        GuestTest::new(v("selftest-setup"), vec![selftest_setup]),
        GuestTest::new(v("selftest"), vec![selftest]),
        GuestTest::new(v("psci"), vec![psci]),
        GuestTest::new(v("cmo"), vec![cmo]),
        GuestTest::new(v("cmo-reset"), vec![cmo_reset]),
        GuestTest::new(v("hostile"), vec![hostile]),
        GuestTest::new(v("two-vms"), vec![two_a, two_b]),
        GuestTest::new(v("ipa-probe"), vec![probe]),
        GuestTest { smp: 1, ..GuestTest::new(v("debug-isolation"), vec![debug_a, debug_b]) },
        GuestTest { smp: 1, ..GuestTest::new(v("ram-isolation"), vec![pattern_a, pattern_b]) },
        GuestTest::new(v("gic"), vec![gic_vm]),
        GuestTest::new(v("timer"), vec![timer]),
        GuestTest::new(v("pmu"), vec![pmu]),
        GuestTest::new(v("micro-bench"), vec![bench]),
        GuestTest::new(v("pinned"), vec![pinned]),
        GuestTest { smp: 2, ..GuestTest::new(v("oversubscribed"), vec![over_selftest]) },
    ];
    tests.push(GuestTest { smp: 2, ..GuestTest::new(v("oversubscribed-gic-timer"), vec![over_gic, over_timer]) });
    // The PMU's state follows each vCPU through time-slicing and moves.
    let mut over_pmu = Vm::new("pmu", "pmu", "percpu", 4);
    over_pmu.expect = &["PASS: pmu: percpu: every CPU counted exactly its own SW_INCR events"];
    tests.push(GuestTest { smp: 2, ..GuestTest::new(v("pmu-oversubscribed"), vec![over_pmu]) });
    if gic != 2 {
        // The emulated ITS (GICv3 guests; GICv2 has none).
        let mut its = Vm::new("its", "its", "", 4);
        its.mem_mib = 128;
        its.expect = &[
            "PASS: its: introspection: ",
            "PASS: its: trigger: MOVI to collection 3: ",
            "PASS: its: trigger: DISCARD: ",
            "PASS: its: doorbell: INT woke cpu3 from WFI",
        ];
        tests.push(GuestTest::new(v("its"), vec![its]));
        // A vCPU in WFI woken by an LPI another vCPU sends: on GICv4 through
        // its vPE's doorbell (counted), on GICv3 by software injection.
        let mut doorbell = Vm::new("its", "its", "doorbell", 4);
        doorbell.mem_mib = 128;
        doorbell.expect = &["PASS: its: doorbell: INT woke cpu3 from WFI"];
        doorbell.doorbells = Some(gic == 4);
        tests.push(GuestTest::new(v("its-doorbell"), vec![doorbell]));
        // The same with its 4 vCPUs on 2 CPUs: the vCPU in WFI gives its CPU
        // away, and the doorbell (or the software kick) must bring it back,
        // possibly on another CPU (VMOVP).
        let mut over = Vm::new("its", "its", "doorbell", 4);
        over.mem_mib = 128;
        over.expect = &["PASS: its: doorbell: INT woke cpu3 from WFI"];
        over.doorbells = Some(gic == 4);
        tests.push(GuestTest { smp: 2, ..GuestTest::new(v("its-doorbell-oversubscribed"), vec![over]) });
        // A VM mapping 71,680 translations, more than the host keeps for all
        // VMs, beside one whose LPIs must keep arriving: each VM has its own
        // share of the host's interrupt state (gic/vgic/budget.rs).
        let mut flooder = Vm::new("flooder", "its", "flood", 1);
        flooder.mem_mib = 128;
        flooder.expect = &[
            "PASS: its: flood: MAPD of 140 devices and MAPTI of 71680 events: the ITS read every command",
            "PASS: its: flood: after the flood, INT of the first event: LPI 8192 taken once",
        ];
        flooder.host_expect =
            &["ITS command(s) refused: its share of the host's interrupt state (6144 entries for devices and translations) is in use"];
        let mut victim = Vm::new("victim", "its", "steady", 1);
        victim.mem_mib = 128;
        victim.expect = &["PASS: its: steady: "];
        tests.push(GuestTest::new(v("its-share"), vec![flooder, victim]));
    }
    tests
}

/// A guest test: its VMs, on `board` (virt with `smp` CPUs, or raspi4b).
pub struct GuestTest {
    pub name: String,
    pub board: Board,
    pub smp: u32,
    pub vms: Vec<Vm>,
}

impl GuestTest {
    fn new(name: String, vms: Vec<Vm>) -> Self {
        Self { name, board: Board::Virt, smp: 4, vms }
    }
}

/// The guest tests under QEMU `raspi4b` (4 CPUs, GIC-400: vGICv2): the
/// virt set but for what needs another CPU count, plus an oversubscribed run
/// (two 4-vCPU VMs on the 4 CPUs).
pub fn raspi_tests() -> Vec<GuestTest> {
    let keep = [
        "selftest-setup",
        "selftest",
        "psci",
        "cmo",
        "cmo-reset",
        "hostile",
        "two-vms",
        "gic",
        "timer",
        "pmu",
        "micro-bench",
        "pinned",
    ];
    let mut out: Vec<GuestTest> = tests(2)
        .into_iter()
        .filter_map(|t| {
            let base = t.name.strip_prefix("guest-")?.strip_suffix("-gicv2")?.to_string();
            keep.contains(&base.as_str()).then(|| GuestTest {
                name: format!("guest-{base}-raspi4b"),
                board: Board::Raspi4b,
                smp: qemu::RASPI_CPUS,
                vms: t.vms,
            })
        })
        .collect();
    let mut a = Vm::new("gic", "gic", "ipi", 4);
    a.expect = &["PASS: gic: ipi: to all but self"];
    let mut b = Vm::new("selftest", "selftest", "", 4);
    b.expect = &["PASS: selftest: smp: ", "PASS: selftest: progress: "];
    b.host_expect = &["ferrovisor: 8 vCPUs on 4 CPUs: time-sliced"];
    out.push(GuestTest {
        name: "guest-oversubscribed-raspi4b".into(),
        board: Board::Raspi4b,
        smp: qemu::RASPI_CPUS,
        vms: vec![a, b],
    });
    out
}

static GUESTS: OnceLock<Result<Vec<(String, PathBuf)>, String>> = OnceLock::new();

fn guest_path(ctx: &Ctx, name: &str) -> Result<PathBuf, Failure> {
    let built = GUESTS.get_or_init(|| crate::guests::build_guests(&ctx.root));
    let built = built.as_ref().map_err(|e| Failure::plain(format!("the test guests did not build: {e}")))?;
    built
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| Failure::plain(format!("no test guest `{name}`")))
}

fn pattern_file(dir: &Path, len: usize) -> Result<PathBuf, Failure> {
    let path = dir.join(format!("pattern-{len}.bin"));
    let bytes: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(7).wrapping_add(3)) as u8).collect();
    std::fs::write(&path, bytes).map_err(|e| Failure::plain(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// Boots the VMs on `board` (virt with `gic` at `-smp smp`) and checks
/// every verdict.
pub fn run(ctx: &Ctx, board: Board, gic: u8, smp: u32, vms: &[Vm]) -> Result<(), Failure> {
    let machine = Machine { board, gic, smp, ..Machine::default() };
    let watch = Watch {
        echo: ctx.verbose,
        interactive: false,
        timeout: Some(std::time::Duration::from_secs(60)),
        stop_on: crate::boottest::end_line,
        progress: None,
    };
    let o = boot(ctx, &machine, vms, &watch)?;
    check(&o, vms)?;
    for vm in vms {
        differential(ctx, board, gic, vm, &o.output)?;
    }
    Ok(())
}

/// Boots `vms` on `machine` under `watch`.
///
/// # Errors
/// A guest that does not build, files that cannot be written, QEMU not starting.
pub fn boot(ctx: &Ctx, machine: &Machine, vms: &[Vm], watch: &Watch) -> Result<Outcome, Failure> {
    std::fs::create_dir_all(&ctx.work).map_err(|e| Failure::plain(e.to_string()))?;
    let mut specs = Vec::new();
    for vm in vms {
        let initrd = vm.initrd_pattern.map(|n| pattern_file(&ctx.work, n)).transpose()?;
        specs.push(GuestSpec {
            name: vm.name.into(),
            kernel: guest_path(ctx, vm.guest)?,
            initrd,
            bootargs: vm.bootargs.clone(),
            vcpus: vm.vcpus,
            mem_mib: vm.mem_mib,
            pinned: vm.pinned,
        });
    }
    let prepared = guestcfg::prepare(&ctx.root, machine, &specs).map_err(Failure::plain)?;
    let args = machine.boot_args(&ctx.image, Some(&prepared.dtb), Some(&prepared.bundle));
    qemu::run(&args, watch).map_err(|e| Failure::plain(e.to_string()))
}

/// Checks what a run of `vms` printed: each VM's `PASS` lines and no
/// `FAIL`, its expected lines, `EXIT: STATUS=1` and its end, the
/// hypervisor's lines, and the power-off status 0.
///
/// # Errors
/// The first check that fails, with the output's tail.
pub fn check(o: &Outcome, vms: &[Vm]) -> Result<(), Failure> {
    let fail = |reason: String| Failure { reason, log: o.tail(60) };
    let lines: Vec<&str> = o.output.lines().collect();
    for vm in vms {
        let prefix = format!("{}: ", vm.name);
        let own: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix(prefix.as_str())).collect();
        if let Some(bad) = own.iter().find(|l| l.starts_with("FAIL:")) {
            return Err(fail(format!("vm {}: {bad}", vm.name)));
        }
        if !own.iter().any(|l| l.starts_with("PASS:")) {
            return Err(fail(format!("vm {}: no PASS line", vm.name)));
        }
        for want in vm.expect {
            if !own.iter().any(|l| l.starts_with(want)) {
                return Err(fail(format!("vm {}: no line starting `{want}`", vm.name)));
            }
        }
        if !own.contains(&"EXIT: STATUS=1") {
            return Err(fail(format!("vm {}: no `EXIT: STATUS=1`", vm.name)));
        }
        let ended = format!("vm {}: ended (system off), EXIT: STATUS=1", vm.name);
        if !lines.iter().any(|l| l.starts_with(&ended)) {
            return Err(fail(format!("no `{ended}` line")));
        }
        if let Some(want) = vm.doorbells {
            let stats = format!("vm {}: fast paths ", vm.name);
            let rings = lines
                .iter()
                .filter(|l| l.starts_with(&stats))
                .find_map(|l| l.rsplit_once("doorbells ").and_then(|(_, n)| n.trim().parse::<u64>().ok()));
            match rings {
                Some(n) if (n > 0) == want => {}
                Some(n) => {
                    return Err(fail(format!(
                        "vm {}: {n} doorbells, expected {}",
                        vm.name,
                        if want { "some" } else { "none" }
                    )))
                }
                None => return Err(fail(format!("vm {}: no doorbell count in its statistics", vm.name))),
            }
        }
        if let Some(want) = &vm.tick_exits {
            match tick_exits(&lines, vm.name) {
                Some(n) if want.contains(&n) => {}
                Some(n) => return Err(fail(format!("vm {}: {n} tick exits, expected {want:?}", vm.name))),
                None => return Err(fail(format!("vm {}: no tick exits in its statistics", vm.name))),
            }
        }
        for want in vm.host_expect {
            if !lines.iter().any(|l| l.contains(want)) {
                return Err(fail(format!("no line containing `{want}`")));
            }
        }
    }
    if !lines.iter().any(|l| l.contains("ferrovisor: all VMs ended")) {
        return Err(fail("no `ferrovisor: all VMs ended`".into()));
    }
    match (o.end, crate::check::power_off_status(&o.output)) {
        (End::Exited(Some(0)), Some(0)) => {}
        (end, status) => {
            return Err(fail(format!("expected power-off status 0 and QEMU exit 0, got {status:?} and {end:?}")))
        }
    }
    Ok(())
}

/// Bare runs already made, by command line: the same guest with the same
/// options recurs across tests (the GICv4 tests share their references with
/// GICv3), and one run of each is enough.
static BARE_RUNS: Mutex<BTreeMap<Vec<String>, Arc<Outcome>>> = Mutex::new(BTreeMap::new());

/// The reference for `vm`: its guest alone on QEMU virt at EL1 with the VM's
/// vCPUs as CPUs, its memory, bootargs and initrd. raspi4b has no bare
/// reference of its own (QEMU enters a raspi4b kernel at EL2 with spin
/// tables and no PSCI, which our guests cannot use): the guest sees the same
/// vGICv2 there as on virt GICv2, which is its reference, with the Pi's CPU
/// (QEMU's raspi4b is a Cortex-A72: its ID registers and PMU, PMUv3 without
/// PMUv3p5's 64-bit counters, are what the guest sees).
fn bare_args(ctx: &Ctx, board: Board, gic: u8, vm: &Vm) -> Result<Vec<String>, Failure> {
    let (gic, cpu) = match board {
        Board::Virt => (reference::reference_gic(gic), "max"),
        Board::Raspi4b => (2, "cortex-a72"),
    };
    let machine = Machine {
        gic,
        smp: vm.vcpus,
        mem_mib: vm.mem_mib,
        virtualization: false,
        append: vm.bootargs.clone(),
        cpu,
        ..Machine::default()
    };
    let initrd = vm.initrd_pattern.map(|n| pattern_file(&ctx.work, n)).transpose()?;
    let mut args = machine.boot_args(&guest_path(ctx, vm.guest)?, None, initrd.as_deref());
    if let Some(o) = reference::bare_options(vm.guest) {
        args.extend(o.args.iter().map(|s| s.to_string()));
        if ctx.verbose {
            println!("bare reference: {} adds {}: {}", vm.guest, o.args.join(" "), o.reason);
        }
    }
    Ok(args)
}

fn bare_end(line: &str) -> Option<std::time::Duration> {
    // QEMU exits by itself on the PSCI SYSTEM_OFF that follows.
    line.starts_with("EXIT: STATUS=").then_some(std::time::Duration::from_secs(2))
}

/// Runs `vm`'s guest alone on QEMU and compares its verdicts with those it
/// printed under the hypervisor (`output`).
pub fn differential(ctx: &Ctx, board: Board, gic: u8, vm: &Vm, output: &str) -> Result<(), Failure> {
    if let Some(e) = reference::excluded(vm.guest) {
        println!("    note: vm {}: no bare QEMU reference for `{}`: {}", vm.name, vm.guest, e.reason);
        return Ok(());
    }
    let args = bare_args(ctx, board, gic, vm)?;
    let command = format!("{} {}", qemu::QEMU, args.join(" "));
    let cached = BARE_RUNS.lock().map_err(|_| Failure::plain("bare-run cache poisoned"))?.get(&args).cloned();
    let bare = match cached {
        Some(o) => o,
        None => {
            if ctx.verbose {
                println!("bare reference: {command}");
            }
            let watch = Watch {
                echo: ctx.verbose,
                interactive: false,
                timeout: Some(std::time::Duration::from_secs(60)),
                stop_on: bare_end,
                progress: None,
            };
            let o = Arc::new(qemu::run(&args, &watch).map_err(|e| Failure::plain(e.to_string()))?);
            BARE_RUNS.lock().map_err(|_| Failure::plain("bare-run cache poisoned"))?.insert(args, o.clone());
            o
        }
    };
    let hyp = Verdicts::parse(output, &format!("{}: ", vm.name));
    let c = reference::compare(vm.guest, &Verdicts::parse(&bare.output, ""), &hyp, ALLOWED);
    if ctx.verbose {
        for (d, i) in &c.allowed {
            let a = &ALLOWED[*i];
            println!("    allowed ({:?}: {}): {d}", a.why, a.reason);
        }
    }
    if c.agrees() {
        return Ok(());
    }
    let problems = c.problems(ALLOWED);
    let mut log = format!("bare run: {command}\n(ended {:?})\n", bare.end);
    for p in &problems {
        log.push_str(p);
        log.push('\n');
    }
    log.push_str("---- bare run's output ----\n");
    log.push_str(&bare.tail(40));
    Err(Failure {
        reason: format!(
            "vm {}: {} difference(s) from `{}` alone on QEMU, first: {}",
            vm.name,
            problems.len(),
            vm.guest,
            problems[0]
        ),
        log,
    })
}

/// `scripts/run --guest FILE --append ARGS ...` exits with what the guest's
/// `EXIT: STATUS` means: 0 for a pass, the status for a failure.
pub fn run_status(ctx: &Ctx) -> Result<(), Failure> {
    let selftest = guest_path(ctx, "selftest")?;
    let image = ctx.image.display().to_string();
    let guest = selftest.display().to_string();
    let run = |append: &str| -> Result<(i32, String), Failure> {
        let out = std::process::Command::new(&ctx.xtask)
            .args(["run", "--image", &image, "--gic", "3", "--smp", "4", "--guest", &guest])
            .args(["--append", append, "--vcpus", "2", "--mem", "256", "--timeout", "60"])
            .output()
            .map_err(|e| Failure::plain(format!("cannot run {}: {e}", ctx.xtask.display())))?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let (code, out) = run("setup smp=2 mem=256")?;
    if code != 0 || !out.contains("selftest: EXIT: STATUS=1") {
        return Err(Failure { reason: format!("a passing guest: expected exit 0, got {code}"), log: out });
    }
    // The guest is told to expect 3 CPUs and sees 2: it fails with STATUS=3.
    let (code, out) = run("setup smp=3 mem=256")?;
    if code != 3 || !out.contains("selftest: EXIT: STATUS=3") {
        return Err(Failure { reason: format!("a failing guest: expected exit 3, got {code}"), log: out });
    }
    // Two VMs, the second an arm64 Image whose header claims 1 GiB: the
    // hypervisor refuses it with a message, the first runs and passes, and the
    // run fails.
    let mut header = vec![0u8; 4096];
    header[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes()); // text_offset
    header[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes()); // image_size
    header[24..32].copy_from_slice(&0xau64.to_le_bytes()); // LE, 4 KiB pages
    header[56..60].copy_from_slice(b"ARM\x64");
    let huge = ctx.work.join("huge.Image");
    std::fs::write(&huge, &header).map_err(|e| Failure::plain(format!("{}: {e}", huge.display())))?;
    let huge = huge.display().to_string();
    let out = std::process::Command::new(&ctx.xtask)
        .args(["run", "--image", &image, "--smp", "4", "--timeout", "60"])
        .args(["--guest", &guest, "--name", "big", "--vcpus", "4", "--append", "setup smp=4"])
        .args(["--guest", &huge, "--name", "extra", "--mem", "16"])
        .output()
        .map_err(|e| Failure::plain(format!("cannot run {}: {e}", ctx.xtask.display())))?;
    let (code, text) = (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned());
    if code != 1 || !text.contains("vm extra: not started: ") || !text.contains("big: EXIT: STATUS=1") {
        return Err(Failure {
            reason: format!("a VM that does not fit: expected exit 1 and a message, got {code}"),
            log: text,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_exits_are_read_from_the_vms_own_statistics() {
        let out = "vm a: cmo: 1 epochs, 1 regions, 64 KiB cleaned; guest time 1083 ms (72 tick exits)\n\
                   vm ab: cmo: 1 epochs, 1 regions, 64 KiB cleaned; guest time 5 ms (0 tick exits)\n\
                   vm c: cmo: 1 epochs, 1 regions, 64 KiB cleaned; guest time 5 ms (2 ticks)";
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(tick_exits(&lines, "a"), Some(72));
        assert_eq!(tick_exits(&lines, "ab"), Some(0));
        assert_eq!(tick_exits(&lines, "c"), None, "the old format");
        assert_eq!(tick_exits(&lines, "d"), None);
    }
}
