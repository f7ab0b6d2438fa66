//! Reading the hypervisor's console output: the power-off line and what a
//! boot must show.

/// The hypervisor's last line: `ferrovisor: power off, status N`.
pub const POWER_OFF: &str = "ferrovisor: power off, status ";
/// Printed when the image was entered at EL1 (no virtualization extensions).
pub const ENTERED_EL1: &str = "ferrovisor: entered at EL1, not EL2";
/// Starts every device-tree error.
pub const BAD_DT: &str = "ferrovisor: bad device tree:";
/// Printed when the hypervisor stops without powering off.
pub const HALTED: &str = "ferrovisor: halted";

/// The status of a power-off line, if `line` is one.
pub fn power_off_line(line: &str) -> Option<i32> {
    let rest = &line[line.find(POWER_OFF)? + POWER_OFF.len()..];
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

/// The status of the last power-off line in `output`.
pub fn power_off_status(output: &str) -> Option<i32> {
    output.lines().filter_map(power_off_line).next_back()
}

/// What a successful boot prints on a board.
#[derive(Clone, Debug)]
pub struct BootExpect {
    /// The start of the banner's board line, e.g. `board:   QEMU virt`.
    pub board: String,
    /// The banner's exact GIC line, e.g. `gic:     GICv2`.
    pub gic: String,
    /// CPUs the board has, all of which must come online and pass.
    pub cpus: usize,
}

impl BootExpect {
    pub fn new(board: &str, gic: &str, cpus: usize) -> Self {
        Self { board: format!("board:   {board}"), gic: format!("gic:     {gic}"), cpus }
    }
}

/// Checks a boot's console output against `expect`: the banner, one passing
/// self-check per CPU, the overall pass and a power-off with status 0.
///
/// # Errors
/// Lists every expected line that is missing.
pub fn check_boot(output: &str, expect: &BootExpect) -> Result<(), String> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let has = |want: &str| lines.contains(&want);
    let mut missing: Vec<String> = Vec::new();
    if !lines.iter().any(|l| l.starts_with("Ferrovisor ")) {
        missing.push("the banner `Ferrovisor <version>`".into());
    }
    if !lines.iter().any(|l| l.starts_with(&expect.board)) {
        missing.push(format!("a line starting `{}`", expect.board));
    }
    let mut exact =
        vec!["entered: EL2".to_string(), format!("cpus:    {n} online of {n}", n = expect.cpus), expect.gic.clone()];
    exact.extend((0..expect.cpus).map(|n| format!("self-check: cpu{n} sgi ok timer ok")));
    exact.push(format!("self-check: PASS ({n}/{n} CPUs)", n = expect.cpus));
    for want in &exact {
        if !has(want) {
            missing.push(format!("`{want}`"));
        }
    }
    match power_off_status(output) {
        Some(0) => {}
        Some(n) => missing.push(format!("`{POWER_OFF}0` (it powered off with status {n})")),
        None => missing.push(format!("`{POWER_OFF}0`")),
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing from the output: {}", missing.join(", ")))
    }
}

/// Checks that a boot with a broken device tree said so and did not claim
/// success.
///
/// # Errors
/// Says what is missing or wrong.
pub fn check_bad_dt(output: &str) -> Result<(), String> {
    if !output.lines().any(|l| l.contains(BAD_DT)) {
        return Err(format!("no `{BAD_DT}` line in the output"));
    }
    if power_off_status(output) == Some(0) {
        return Err(format!("it powered off with status 0 after `{BAD_DT}`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRT: &str = "\
Ferrovisor 0.1.0
  board:   QEMU virt (linux,dummy-virt)
  entered: EL2
  cpus:    4 online of 4
  gic:     GICv3 (ITS: yes, GICv4.1: no)
  memory:  1024 MiB at 0x40000000, 1010 MiB free
[INFO ] starting CPUs
self-check: cpu0 sgi ok timer ok
self-check: cpu1 sgi ok timer ok
[INFO ] cpu2 up\r
self-check: cpu2 sgi ok timer ok
self-check: cpu3 sgi ok timer ok
self-check: PASS (4/4 CPUs)
ferrovisor: power off, status 0
";

    fn virt3() -> BootExpect {
        BootExpect::new("QEMU virt", "GICv3 (ITS: yes, GICv4.1: no)", 4)
    }

    #[test]
    fn reads_power_off_lines() {
        assert_eq!(power_off_line("ferrovisor: power off, status 0"), Some(0));
        assert_eq!(power_off_line("ferrovisor: power off, status 17\r"), Some(17));
        assert_eq!(power_off_line("junk ferrovisor: power off, status -3 tail"), Some(-3));
        assert_eq!(power_off_line("ferrovisor: power off, status "), None);
        assert_eq!(power_off_line("ferrovisor: power off"), None);
        assert_eq!(
            power_off_status("a\nferrovisor: power off, status 1\nb\nferrovisor: power off, status 2\n"),
            Some(2)
        );
        assert_eq!(power_off_status(VIRT), Some(0));
        assert_eq!(power_off_status("no marker\n"), None);
    }

    #[test]
    fn accepts_a_good_boot() {
        assert_eq!(check_boot(VIRT, &virt3()), Ok(()));
    }

    #[test]
    fn names_what_is_missing() {
        let out = VIRT.replace("self-check: cpu2 sgi ok timer ok\n", "self-check: cpu2 sgi FAIL timer ok\n");
        let e = check_boot(&out, &virt3()).unwrap_err();
        assert!(e.contains("cpu2") && !e.contains("cpu1"), "{e}");

        let e = check_boot(VIRT, &BootExpect::new("QEMU virt", "GICv2", 4)).unwrap_err();
        assert!(e.contains("gic:     GICv2"), "{e}");
        let e = check_boot(VIRT, &BootExpect::new("Raspberry Pi 4", "GICv3 (ITS: yes, GICv4.1: no)", 4)).unwrap_err();
        assert!(e.contains("board:   Raspberry Pi 4"), "{e}");
        // GICv4.1 must not match the v3 line as a prefix or the other way round.
        let e = check_boot(VIRT, &BootExpect::new("QEMU virt", "GICv3 (ITS: yes, GICv4.1: yes)", 4)).unwrap_err();
        assert!(e.contains("GICv4.1: yes"), "{e}");

        let out = VIRT.replace("cpus:    4 online of 4", "cpus:    3 online of 4");
        assert!(check_boot(&out, &virt3()).unwrap_err().contains("4 online of 4"));
        let out = VIRT.replace("status 0", "status 1");
        assert!(check_boot(&out, &virt3()).unwrap_err().contains("status 1"));
        let out = VIRT.replace("ferrovisor: power off, status 0\n", "");
        assert!(check_boot(&out, &virt3()).unwrap_err().contains("power off"));
        assert!(check_boot("", &virt3()).unwrap_err().contains("banner"));
    }

    #[test]
    fn one_cpu_boot() {
        let out = "Ferrovisor 0.1.0\n  board:   QEMU virt (linux,dummy-virt)\n  entered: EL2\n  cpus:    1 online of 1\n  \
                   gic:     GICv3 (ITS: yes, GICv4.1: no)\nself-check: cpu0 sgi ok timer ok\nself-check: PASS (1/1 CPUs)\n\
                   ferrovisor: power off, status 0\n";
        assert_eq!(check_boot(out, &BootExpect::new("QEMU virt", "GICv3 (ITS: yes, GICv4.1: no)", 1)), Ok(()));
        assert!(check_boot(out, &virt3()).is_err());
    }

    #[test]
    fn bad_device_trees() {
        assert_eq!(check_bad_dt("x\nferrovisor: bad device tree: no memory node\nferrovisor: halted\n"), Ok(()));
        assert_eq!(check_bad_dt("ferrovisor: bad device tree: truncated\nferrovisor: power off, status 1\n"), Ok(()));
        assert!(check_bad_dt("ferrovisor: bad device tree: x\nferrovisor: power off, status 0\n").is_err());
        assert!(check_bad_dt("[ERROR] device tree broken\n").is_err());
    }
}
