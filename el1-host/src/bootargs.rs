//! The host's own options in `/chosen/bootargs`.

use log::LevelFilter;

/// `loglevel=off|error|warn|info|debug|trace`; `info` when absent or unknown.
pub fn log_level(bootargs: &str) -> LevelFilter {
    bootargs
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("loglevel="))
        .next_back()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// `semihosting-exit`: end the run through Arm semihosting with the exit
/// status (for QEMU started with `-semihosting-config enable=on`).
pub fn semihosting_exit(bootargs: &str) -> bool {
    bootargs.split_ascii_whitespace().any(|w| w == "semihosting-exit")
}

/// `vlpi=software`: inject guests' LPIs by software even on a GICv4 (for
/// comparing the two ways; direct injection is the default where it works).
pub fn software_vlpi(bootargs: &str) -> bool {
    bootargs.split_ascii_whitespace().any(|w| w == "vlpi=software")
}

/// `fastpath=off`: el2 finishes none of the guests' exits the host can
/// handle that it did not before issue 16 (the constant GIC registers, the
/// virtual timer's interrupt; the flag
/// [`ferrovisor_shared::vcpu::CONFIG_NO_FASTPATH`]), so that
/// `scripts/bench --fastpath off` measures the host's paths.
pub fn fastpath_off(bootargs: &str) -> bool {
    bootargs.split_ascii_whitespace().any(|w| w == "fastpath=off")
}

/// `buildcheck`: before the VMs start, build a small VM failing at each
/// step in turn and check that every failure gave back all it took
/// (`vm::buildcheck`).
pub fn build_check(bootargs: &str) -> bool {
    bootargs.split_ascii_whitespace().any(|w| w == "buildcheck")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_level() {
        assert_eq!(log_level(""), LevelFilter::Info);
        assert_eq!(log_level("loglevel=debug"), LevelFilter::Debug);
        assert_eq!(log_level("a loglevel=warn b loglevel=error"), LevelFilter::Error);
        assert_eq!(log_level("loglevel=loud"), LevelFilter::Info);
        assert_eq!(log_level("LOGLEVEL=trace"), LevelFilter::Info);
    }

    #[test]
    fn finds_semihosting_exit() {
        assert!(semihosting_exit("loglevel=info semihosting-exit"));
        assert!(!semihosting_exit("semihosting-exit=1"));
        assert!(!semihosting_exit(""));
    }

    #[test]
    fn finds_software_vlpi() {
        assert!(software_vlpi("loglevel=info vlpi=software"));
        assert!(!software_vlpi("vlpi=direct"));
        assert!(!software_vlpi(""));
        assert!(fastpath_off("loglevel=info fastpath=off"));
        assert!(!fastpath_off("fastpath=on"));
        assert!(!fastpath_off("fastpath"));
        assert!(!fastpath_off(""));
        assert!(build_check("loglevel=info buildcheck"));
        assert!(!build_check("buildcheck=1"));
    }
}
