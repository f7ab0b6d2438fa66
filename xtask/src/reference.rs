//! Differential runs: every VM of a guest test also runs alone on plain QEMU
//! (the guest at EL1, QEMU's own GIC, timers and PSCI), and its verdict lines
//! and `EXIT: STATUS` must match those it printed under Ferrovisor. Our guests
//! and our vGIC/ITS were written by the same hands; QEMU is an independent
//! reading of the same specifications, so a shared misreading shows here.
//!
//! A verdict line is compared with its numbers masked ([`normalise`]):
//! timings, counts, addresses and implementation-defined register values
//! differ between the two runs, the checks made and their verdicts must not.
//! Where the two may rightly differ, [`ALLOWED`] says so and why.

use std::collections::BTreeMap;
use std::fmt;

/// One of the two runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The guest alone on QEMU.
    Bare,
    /// The guest as a VM under Ferrovisor.
    Ferrovisor,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bare => "bare QEMU",
            Self::Ferrovisor => "Ferrovisor",
        })
    }
}

/// Why a difference is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// QEMU departs from the architecture; Ferrovisor follows it.
    QemuDeparts,
    /// The check tests behaviour the hypervisor defines (its containment of
    /// a hostile guest, what it implements of an optional interface), which
    /// bare hardware does differently and rightly.
    HypervisorDefined,
    /// HYPERVISOR BUG: bare QEMU is right; the entry stays until the
    /// hypervisor is fixed (none at present).
    #[allow(dead_code)]
    HypervisorBug,
}

/// Whether an allowed difference shows in every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occurs {
    /// Every run: an entry that matches nothing is stale and fails the test.
    Always,
    /// Some runs only (a race on QEMU's side): not matching is no error.
    Sometimes,
}

/// A difference allowed between the two runs of one guest.
pub struct Allowed {
    /// The test guest (`target/guests/<guest>.flat`).
    pub guest: &'static str,
    /// The start of the lines concerned, after `PASS: `/`FAIL: `/`SKIP: `.
    pub prefix: &'static str,
    /// The run whose verdict departs from what the guest expects: its
    /// `FAIL`/`SKIP` lines are excused, the other run's are not.
    pub side: Side,
    pub why: Why,
    pub occurs: Occurs,
    /// Why, with the specification's section.
    pub reason: &'static str,
}

/// The allowed differences. Each entry covers, for its guest, the differing
/// verdict lines that start with its prefix on either run (a `FAIL` or
/// `SKIP` only on its `side`).
pub const ALLOWED: &[Allowed] = &[
    Allowed {
        guest: "psci",
        prefix: "psci: smccc-version: ",
        side: Side::Bare,
        why: Why::HypervisorDefined,
        occurs: Occurs::Always,
        reason: "Ferrovisor implements SMCCC v1.1 (SMCCC_VERSION = 0x10001); QEMU's PSCI is SMCCC v1.0 and \
                 answers NOT_SUPPORTED, which SMC Calling Convention (Arm DEN 0028) SMCCC_VERSION defines as v1.0",
    },
    Allowed {
        guest: "psci",
        prefix: "psci: cpu-on-bad-address: ",
        side: Side::Bare,
        why: Why::HypervisorDefined,
        occurs: Occurs::Always,
        reason: "PSCI (Arm DEN 0022) CPU_ON returns INVALID_ADDRESS only for an entry point the implementation \
                 knows to be invalid: Ferrovisor checks it against the VM's RAM, QEMU does not check and starts \
                 the CPU there",
    },
    Allowed {
        guest: "psci",
        prefix: "psci: cpu-on-race: ",
        side: Side::Bare,
        why: Why::QemuDeparts,
        occurs: Occurs::Sometimes,
        reason: "QEMU's CPU_ON marks the target ON only once it runs and has no ON_PENDING state, so calls racing \
                 the first may also get SUCCESS (about half the runs at -smp 4); PSCI (Arm DEN 0022) CPU_ON and \
                 its CPU_ON/CPU_OFF races section: later calls return ALREADY_ON or ON_PENDING",
    },
    Allowed {
        guest: "hostile",
        prefix: "hostile: unknown-smc: ",
        side: Side::Bare,
        why: Why::HypervisorDefined,
        occurs: Occurs::Always,
        reason: "without EL3, SMC at EL1 is UNDEFINED unless HCR_EL2.TSC traps it to EL2 (Arm ARM DDI 0487, \
                 SMC instruction and HCR_EL2.TSC): bare QEMU takes an Unknown exception, Ferrovisor sets TSC and \
                 answers the unknown SMCCC call NOT_SUPPORTED",
    },
    Allowed {
        guest: "hostile",
        prefix: "hostile: mmio-no-syndrome: ",
        side: Side::Bare,
        why: Why::HypervisorDefined,
        occurs: Occurs::Always,
        reason: "an LDP to an emulated device gives the hypervisor a stage-2 abort with ESR_EL2.ISS.ISV = 0 \
                 (Arm ARM DDI 0487, ISS encoding for a Data Abort): Ferrovisor cannot emulate it and injects an \
                 external abort by design; bare QEMU simply reads the PL011's registers",
    },
    Allowed {
        guest: "timer",
        prefix: "timer: wfit: ",
        side: Side::Ferrovisor,
        why: Why::QemuDeparts,
        // Only where the CPU has FEAT_WFxT (virt's -cpu max, not raspi4b's Cortex-A72).
        occurs: Occurs::Sometimes,
        reason: "QEMU reports a WFIT trapped by HCR_EL2.TWI with a WFI syndrome (ESR_EL2.ISS.TI = 0, RV = 0, \
                 no register; Arm ARM DDI 0487, ISS encoding for an exception from a WF* instruction, defines \
                 TI = 0b10 with RV and RN), so no hypervisor can find the timeout: Ferrovisor hides FEAT_WFxT \
                 (ID_AA64ISAR2_EL1.WFxT = 0) and the guest skips; bare QEMU runs WFIT itself",
    },
    Allowed {
        guest: "hostile",
        prefix: "hostile: ipa-probe: ",
        side: Side::Bare,
        why: Why::HypervisorDefined,
        // Only in the runs that name it (guest-ipa-probe).
        occurs: Occurs::Sometimes,
        reason: "the probe is of the hypervisor's guest map: under Ferrovisor every page outside the VM's RAM and \
                 devices aborts (PASS); bare QEMU virt has devices of its own there (flash, fw_cfg, RTC, PCIe; \
                 QEMU's hw/arm/virt.c memory map), so the bare run skips",
    },
];

/// A guest left out of the differential runs, and why.
pub struct Excluded {
    pub guest: &'static str,
    pub reason: &'static str,
}

/// Guests that depend on the hypervisor (its statistics, its hypercalls, its
/// containment of a hostile guest) and so have no bare reference.
pub const EXCLUDED: &[Excluded] = &[Excluded {
    guest: "fuzz",
    reason: "its checks are of the hypervisor's containment of a hostile guest, which bare QEMU does otherwise and \
             rightly: SMC at EL1 is UNDEFINED without HCR_EL2.TSC (Arm ARM DDI 0487, SMC), bare QEMU's map has \
             flash, PCIe windows and more devices where the guest's map has nothing (so its loads outside the map \
             return data), QEMU's PSCI starts a CPU at any entry point (DEN 0022 lets it), and its random \
             system-register writes reach QEMU's own GIC and timers; its operations are random, so no two runs \
             print the same counts",
}];

pub fn excluded(guest: &str) -> Option<&'static Excluded> {
    EXCLUDED.iter().find(|e| e.guest == guest)
}

/// QEMU options a guest's bare run adds, and why.
pub struct BareOptions {
    pub guest: &'static str,
    pub args: &'static [&'static str],
    pub reason: &'static str,
}

pub const BARE_OPTIONS: &[BareOptions] = &[BareOptions {
    guest: "micro-bench",
    args: &["-icount", "shift=0,sleep=off"],
    reason: "as `scripts/bench --bare`: its busy-waiting IPI and timer samples take 10-45 s of multi-threaded TCG \
             on a loaded 2-core host, 4 s with one instruction per nanosecond; its verdicts do not depend on time",
}];

/// The extra QEMU options of `guest`'s bare run.
pub fn bare_options(guest: &str) -> Option<&'static BareOptions> {
    BARE_OPTIONS.iter().find(|o| o.guest == guest)
}

/// The QEMU GIC version of the bare run that is the reference for a VM on
/// virt `gic-version=gic`. Under Ferrovisor a GICv4 board's guests see a
/// GICv3 with an ITS (the host keeps GICv4 for itself), and QEMU's
/// `gic-version=4` needs `virtualization=on` (the guest would start at EL2):
/// their reference is `gic-version=3`.
pub fn reference_gic(gic: u8) -> u8 {
    if gic == 4 {
        3
    } else {
        gic
    }
}

/// What one run of one guest printed: its verdict lines and `EXIT` status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub lines: Vec<String>,
    pub exit: Option<u32>,
}

impl Verdicts {
    /// The guest's lines in `output`: those starting with `prefix` (the VM's
    /// `name: ` under the hypervisor, empty for a bare run), the prefix
    /// removed.
    pub fn parse(output: &str, prefix: &str) -> Self {
        let mut v = Self::default();
        for line in output.lines().filter_map(|l| l.strip_prefix(prefix)) {
            if verdict(line).is_some() {
                v.lines.push(line.to_string());
            } else if let Some(s) = line.strip_prefix("EXIT: STATUS=") {
                v.exit = s.trim().parse().ok();
            }
        }
        v
    }

    /// The `EXIT` status the guest's runtime derives from these verdicts
    /// (tests/guests/src/report.rs): 3 with a `FAIL`, 77 when all skipped.
    fn implied_exit(&self) -> u32 {
        if self.lines.iter().any(|l| l.starts_with("FAIL: ")) {
            3
        } else if self.lines.iter().any(|l| l.starts_with("PASS: ")) {
            1
        } else {
            77
        }
    }
}

/// `PASS`, `FAIL` or `SKIP` and the rest of a verdict line.
fn verdict(line: &str) -> Option<(&str, &str)> {
    ["PASS", "FAIL", "SKIP"].into_iter().find_map(|v| line.strip_prefix(v)?.strip_prefix(": ").map(|rest| (v, rest)))
}

/// `line` with each number that stands alone (decimal, `0x` hex, `0b`
/// binary, not part of a word such as `cpu1` or `ICENABLER0`) replaced by
/// `#`.
pub fn normalise(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < b.len() {
        let word_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if b[i].is_ascii_digit() && !word_before {
            let radix = match (b[i], b.get(i + 1)) {
                (b'0', Some(b'x')) if b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) => 16,
                (b'0', Some(b'b')) if b.get(i + 2).is_some_and(|c| matches!(c, b'0' | b'1')) => 2,
                _ => 10,
            };
            i += if radix == 10 { 0 } else { 2 };
            while i < b.len() && (b[i] as char).is_digit(radix) {
                i += 1;
            }
            out.push('#');
        } else {
            let len = line[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&line[i..i + len]);
            i += len;
        }
    }
    out
}

/// A verdict line one run printed and the other did not (as often).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The run that printed it.
    pub side: Side,
    pub line: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "only on {}: {}", self.side, self.line)
    }
}

/// The outcome of comparing one guest's two runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Differences no entry allows.
    pub unexplained: Vec<Difference>,
    /// Differences an entry allows, with the entry's index.
    pub allowed: Vec<(Difference, usize)>,
    /// The `EXIT` statuses differ and the verdicts do not explain it.
    pub exit: Option<String>,
    /// `Always` entries for this guest whose lines were printed but did not
    /// differ: the allow-list has gone stale.
    pub stale: Vec<usize>,
}

impl Comparison {
    pub fn agrees(&self) -> bool {
        self.unexplained.is_empty() && self.exit.is_none() && self.stale.is_empty()
    }

    /// One line per problem, for a report.
    pub fn problems(&self, allowed: &[Allowed]) -> Vec<String> {
        let mut out: Vec<String> = self.unexplained.iter().map(|d| d.to_string()).collect();
        out.extend(self.exit.clone());
        out.extend(self.stale.iter().map(|&i| {
            let a = &allowed[i];
            format!(
                "allow-list entry `{}` `{}` ({} differs) matched no difference: remove it from xtask/src/reference.rs",
                a.guest, a.prefix, a.side
            )
        }));
        out
    }
}

fn entry_matches(a: &Allowed, guest: &str, d: &Difference) -> bool {
    let Some((v, rest)) = verdict(&d.line) else { return false };
    a.guest == guest && rest.starts_with(a.prefix) && (v == "PASS" || d.side == a.side)
}

/// Compares the runs of `guest` alone on QEMU (`bare`) and under Ferrovisor
/// (`hyp`): the verdict lines as multisets of [`normalise`]d lines, then
/// the `EXIT` statuses, with `allowed` applied.
pub fn compare(guest: &str, bare: &Verdicts, hyp: &Verdicts, allowed: &[Allowed]) -> Comparison {
    let mut by_key: BTreeMap<String, (Vec<&String>, Vec<&String>)> = BTreeMap::new();
    for l in &bare.lines {
        by_key.entry(normalise(l)).or_default().0.push(l);
    }
    for l in &hyp.lines {
        by_key.entry(normalise(l)).or_default().1.push(l);
    }
    let mut diffs = Vec::new();
    for (b, h) in by_key.values() {
        let (side, lines, n) = if b.len() > h.len() {
            (Side::Bare, b, b.len() - h.len())
        } else {
            (Side::Ferrovisor, h, h.len() - b.len())
        };
        // The lines without a counterpart: the last ones of their kind.
        diffs.extend(lines[lines.len() - n..].iter().map(|l| Difference { side, line: (*l).clone() }));
    }
    let mut c = Comparison::default();
    let mut used = vec![false; allowed.len()];
    for d in diffs {
        match allowed.iter().position(|a| entry_matches(a, guest, &d)) {
            Some(i) => {
                used[i] = true;
                c.allowed.push((d, i));
            }
            None => c.unexplained.push(d),
        }
    }
    if bare.exit != hyp.exit {
        let explained =
            c.unexplained.is_empty() && bare.exit == Some(bare.implied_exit()) && hyp.exit == Some(hyp.implied_exit());
        if !explained {
            let show = |e: Option<u32>| e.map_or("no EXIT line".to_string(), |s| format!("EXIT: STATUS={s}"));
            c.exit =
                Some(format!("{} on {}, {} under {}", show(bare.exit), Side::Bare, show(hyp.exit), Side::Ferrovisor));
        }
    }
    let printed = |prefix: &str| {
        bare.lines.iter().chain(&hyp.lines).any(|l| verdict(l).is_some_and(|(_, rest)| rest.starts_with(prefix)))
    };
    c.stale = allowed
        .iter()
        .enumerate()
        .filter(|&(i, a)| a.guest == guest && a.occurs == Occurs::Always && !used[i] && printed(a.prefix))
        .map(|(i, _)| i)
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str], exit: Option<u32>) -> Verdicts {
        Verdicts { lines: lines.iter().map(|s| s.to_string()).collect(), exit }
    }

    const SMC: Allowed = Allowed {
        guest: "hostile",
        prefix: "hostile: unknown-smc: ",
        side: Side::Bare,
        why: Why::HypervisorDefined,
        occurs: Occurs::Always,
        reason: "test",
    };
    const RACE: Allowed = Allowed {
        guest: "psci",
        prefix: "psci: cpu-on-race: ",
        side: Side::Bare,
        why: Why::QemuDeparts,
        occurs: Occurs::Sometimes,
        reason: "test",
    };

    #[test]
    fn numbers_are_masked_words_are_not() {
        assert_eq!(
            normalise("vtimer on cpu1: 488 us after the deadline (counter 0x1293db4, CVAL 0x121ca2f)"),
            "vtimer on cpu1: # us after the deadline (counter #, CVAL #)"
        );
        assert_eq!(normalise("q0-q31 unchanged, FPSR 0x800009f (was 0x800009f)"), "q0-q31 unchanged, FPSR # (was #)");
        assert_eq!(
            normalise("GICR_ICENABLER0 disables SGI 6 alone (0xffbf)"),
            "GICR_ICENABLER0 disables SGI # alone (#)"
        );
        assert_eq!(normalise("distinct (0b1111), = -2, Ok(0), 1/8, 1.1"), "distinct (#), = -#, Ok(#), #/#, #.#");
        assert_eq!(normalise("0x and 0b2 and EL1"), "#x and #b2 and EL1");
        assert_eq!(normalise("naïve 7"), "naïve #");
    }

    #[test]
    fn parse_takes_the_vm_s_verdicts_and_exit() {
        let out = "selftest: PASS: selftest: smp: cpu1 up\nhostile: FAIL: hostile: x\nselftest: INFO: 3\n\
                   [WARN] selftest: PASS: no\nselftest: SKIP: selftest: fpu: none\nselftest: EXIT: STATUS=1\n";
        let v = Verdicts::parse(out, "selftest: ");
        assert_eq!(v, run(&["PASS: selftest: smp: cpu1 up", "SKIP: selftest: fpu: none"], Some(1)));
        let bare = Verdicts::parse("PASS: a: b\nSUMMARY: 1 tests\nEXIT: STATUS=77\n", "");
        assert_eq!(bare, run(&["PASS: a: b"], Some(77)));
        assert_eq!(Verdicts::parse("PASS: a: b\n", "").exit, None);
    }

    #[test]
    fn same_checks_with_other_figures_agree() {
        let b = run(&["PASS: timer: wfi: woken after 20202 us", "PASS: timer: wfi: cpu1 done"], Some(1));
        let h = run(&["PASS: timer: wfi: cpu1 done", "PASS: timer: wfi: woken after 20950 us"], Some(1));
        let c = compare("timer", &b, &h, ALLOWED);
        assert!(c.agrees(), "{c:?}");
        assert!(c.allowed.is_empty());
    }

    #[test]
    fn a_different_verdict_is_named_on_both_sides() {
        let b = run(&["PASS: gic: dist: x 1", "FAIL: gic: dist: ITARGETSR 0x1"], Some(3));
        let h = run(&["PASS: gic: dist: x 2", "PASS: gic: dist: ITARGETSR 0x1"], Some(1));
        let c = compare("gic", &b, &h, ALLOWED);
        assert_eq!(
            c.unexplained,
            vec![
                Difference { side: Side::Bare, line: "FAIL: gic: dist: ITARGETSR 0x1".into() },
                Difference { side: Side::Ferrovisor, line: "PASS: gic: dist: ITARGETSR 0x1".into() },
            ]
        );
        // The verdicts do not explain the statuses while they differ unallowed.
        assert_eq!(c.exit.as_deref(), Some("EXIT: STATUS=3 on bare QEMU, EXIT: STATUS=1 under Ferrovisor"));
        assert_eq!(c.problems(ALLOWED).len(), 3);
    }

    #[test]
    fn a_line_printed_more_often_on_one_side_differs() {
        let b = run(&["PASS: smp: cpu1 up", "PASS: smp: cpu1 up"], Some(1));
        let h = run(&["PASS: smp: cpu1 up"], Some(1));
        let c = compare("selftest", &b, &h, &[]);
        assert_eq!(c.unexplained, vec![Difference { side: Side::Bare, line: "PASS: smp: cpu1 up".into() }]);
        let c = compare("selftest", &h, &b, &[]);
        assert_eq!(c.unexplained[0].side, Side::Ferrovisor);
    }

    #[test]
    fn an_allowed_difference_explains_the_status_too() {
        let b = run(&["PASS: hostile: a", "FAIL: hostile: unknown-smc: taken at EL1 (EC 0x00)"], Some(3));
        let h = run(&["PASS: hostile: a", "PASS: hostile: unknown-smc: NOT_SUPPORTED"], Some(1));
        let c = compare("hostile", &b, &h, &[SMC]);
        assert!(c.agrees(), "{c:?}");
        assert_eq!(c.allowed.len(), 2);
        // Not for another guest.
        assert_eq!(compare("selftest", &b, &h, &[SMC]).unexplained.len(), 2);
        // A status the verdicts do not give is still a difference.
        let odd = run(&["PASS: hostile: a", "FAIL: hostile: unknown-smc: x"], Some(5));
        assert!(compare("hostile", &odd, &h, &[SMC]).exit.is_some());
        // So is a run that never printed its status.
        let hung = run(&["PASS: hostile: a", "FAIL: hostile: unknown-smc: x"], None);
        assert_eq!(
            compare("hostile", &hung, &h, &[SMC]).exit.as_deref(),
            Some("no EXIT line on bare QEMU, EXIT: STATUS=1 under Ferrovisor")
        );
    }

    #[test]
    fn a_failure_on_the_other_side_is_not_excused() {
        let b = run(&["PASS: hostile: unknown-smc: NOT_SUPPORTED"], Some(1));
        let h = run(&["FAIL: hostile: unknown-smc: taken at EL1"], Some(3));
        let c = compare("hostile", &b, &h, &[SMC]);
        assert_eq!(c.unexplained, vec![Difference { side: Side::Ferrovisor, line: h.lines[0].clone() }]);
        assert_eq!(c.allowed.len(), 1, "the PASS counterpart is covered");
        assert!(c.exit.is_some());
    }

    #[test]
    fn an_entry_that_matches_nothing_is_stale() {
        let same = run(&["PASS: hostile: unknown-smc: NOT_SUPPORTED"], Some(1));
        let c = compare("hostile", &same, &same, &[SMC]);
        assert_eq!(c.stale, vec![0]);
        assert!(!c.agrees());
        assert!(c.problems(&[SMC])[0].contains("matched no difference"), "{:?}", c.problems(&[SMC]));
        // A run that did not select the sub-test says nothing of the entry.
        let other = run(&["PASS: hostile: unknown-sysreg: UNDEFINED"], Some(1));
        assert!(compare("hostile", &other, &other, &[SMC]).agrees());
        // A `Sometimes` entry may match nothing.
        let race = run(&["PASS: psci: cpu-on-race: one SUCCESS (Good)"], Some(1));
        assert!(compare("psci", &race, &race, &[RACE]).agrees());
        let lost = run(&["FAIL: psci: cpu-on-race: one SUCCESS (Winners(3))"], Some(3));
        let c = compare("psci", &lost, &race, &[RACE]);
        assert!(c.agrees(), "{c:?}");
    }

    #[test]
    fn gicv4_boards_are_compared_with_gicv3() {
        assert_eq!((reference_gic(2), reference_gic(3), reference_gic(4)), (2, 3, 3));
    }

    /// Every entry names a guest the tests run and a sub-test that guest
    /// has, gives its reason, and is the only one for its lines: an entry
    /// for something renamed or removed must go.
    #[test]
    fn the_allow_list_names_real_guests_and_sub_tests() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let run_guests: Vec<&str> = [2, 3, 4]
            .into_iter()
            .flat_map(crate::guesttest::tests)
            .chain(crate::guesttest::raspi_tests())
            .flat_map(|t| t.vms.into_iter().map(|vm| vm.guest))
            .chain(crate::fuzz::suite_vms().into_iter().map(|vm| vm.guest))
            .collect();
        for (i, a) in ALLOWED.iter().enumerate() {
            assert!(run_guests.contains(&a.guest), "entry {i}: no guest test runs `{}`", a.guest);
            assert!(excluded(a.guest).is_none(), "entry {i}: `{}` is excluded", a.guest);
            let sub = a
                .prefix
                .strip_prefix(a.guest)
                .and_then(|r| r.strip_prefix(": "))
                .and_then(|r| r.split(": ").next())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| panic!("entry {i}: prefix `{}` is not `{}: <sub-test>: `", a.prefix, a.guest));
            let src = root.join("tests/guests/src/bin").join(format!("{}.rs", a.guest.replace('-', "_")));
            let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            assert!(text.contains(&format!("\"{sub}\"")), "entry {i}: {} has no sub-test `{sub}`", src.display());
            assert!(a.reason.len() > 40, "entry {i}: give the reason and the specification's section");
            let overlaps = |b: &Allowed| b.prefix.starts_with(a.prefix) || a.prefix.starts_with(b.prefix);
            assert!(
                !ALLOWED[..i].iter().any(|b| b.guest == a.guest && overlaps(b)),
                "entry {i} overlaps an earlier one"
            );
            assert_eq!(a.why == Why::HypervisorBug, a.reason.starts_with("HYPERVISOR BUG:"), "entry {i}");
        }
        for e in EXCLUDED {
            assert!(run_guests.contains(&e.guest) && !e.reason.is_empty(), "excluded `{}`", e.guest);
        }
        for o in BARE_OPTIONS {
            assert!(run_guests.contains(&o.guest) && !o.reason.is_empty(), "bare options for `{}`", o.guest);
        }
    }
}
