//! How a VM ended and what the board's power-off status is once all have:
//! the kvm-unit-tests convention (a guest prints `EXIT: STATUS=N`, 1 is a
//! pass, 77 a skip, anything else a failure), and for guests that print none
//! (Linux, bare-metal programs) a clean `SYSTEM_OFF` is a pass.

use alloc::string::String;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// PSCI `SYSTEM_OFF`.
    SystemOff,
    /// Stopped by the hypervisor for what the guest did.
    Stopped(String),
}

/// A VM's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Skip,
    /// With the status the board should end with.
    Fail(u32),
}

/// The `N` of an `EXIT: STATUS=N` line.
pub fn parse_exit_line(line: &str) -> Option<u32> {
    line.trim().strip_prefix("EXIT: STATUS=")?.trim().parse().ok()
}

/// The verdict for a VM that ended for `reason` having printed `status`.
pub fn verdict(reason: &EndReason, status: Option<u32>) -> Verdict {
    match (reason, status) {
        (EndReason::Stopped(_), _) => Verdict::Fail(1),
        (EndReason::SystemOff, None | Some(1)) => Verdict::Pass,
        (EndReason::SystemOff, Some(77)) => Verdict::Skip,
        // 0 would read as success to a harness; any other failure keeps its code.
        (EndReason::SystemOff, Some(0)) => Verdict::Fail(1),
        (EndReason::SystemOff, Some(n)) => Verdict::Fail(n),
    }
}

/// The board's power-off status for all VMs' verdicts: the first failure's
/// code, else 77 if every VM skipped, else 0. No VMs at all is a failure.
pub fn board_status(verdicts: impl IntoIterator<Item = Verdict>) -> u32 {
    let (mut any, mut all_skip) = (false, true);
    for v in verdicts {
        any = true;
        match v {
            Verdict::Fail(n) => return n,
            Verdict::Pass => all_skip = false,
            Verdict::Skip => {}
        }
    }
    match (any, all_skip) {
        (false, _) => 1,
        (true, true) => 77,
        (true, false) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_lines() {
        assert_eq!(parse_exit_line("EXIT: STATUS=1"), Some(1));
        assert_eq!(parse_exit_line("EXIT: STATUS=77 "), Some(77));
        assert_eq!(parse_exit_line("PASS: EXIT: STATUS=1"), None);
        assert_eq!(parse_exit_line("EXIT: STATUS=x"), None);
    }

    #[test]
    fn verdicts_follow_kvm_unit_tests() {
        let off = EndReason::SystemOff;
        assert_eq!(verdict(&off, Some(1)), Verdict::Pass);
        assert_eq!(verdict(&off, None), Verdict::Pass);
        assert_eq!(verdict(&off, Some(77)), Verdict::Skip);
        assert_eq!(verdict(&off, Some(3)), Verdict::Fail(3));
        assert_eq!(verdict(&off, Some(0)), Verdict::Fail(1));
        assert_eq!(verdict(&EndReason::Stopped("x".into()), Some(1)), Verdict::Fail(1));
    }

    #[test]
    fn board_status_combines() {
        use Verdict::*;
        assert_eq!(board_status([Pass, Pass]), 0);
        assert_eq!(board_status([Skip, Skip]), 77);
        assert_eq!(board_status([Skip, Pass]), 0);
        assert_eq!(board_status([Pass, Fail(3), Fail(5)]), 3);
        assert_eq!(board_status([]), 1);
    }
}
