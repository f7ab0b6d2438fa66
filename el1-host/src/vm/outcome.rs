//! How a VM ended and what the board's power-off status is once all have:
//! the kvm-unit-tests convention (a guest prints `EXIT: STATUS=N`, 1 is a
//! pass, 77 a skip, anything else a failure), and for guests that print none
//! (Linux, bare-metal programs) a clean `SYSTEM_OFF` is a pass.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

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

/// The verdicts of the VMs that ended and how many are still to end: the
/// board powers off when the count reaches zero. Start-up holds one count
/// while it creates VMs ([`Tally::hold`]), so that a VM that ends before the
/// next one is published is not taken for the last.
pub struct Tally {
    verdicts: spin::Mutex<Vec<Verdict>>,
    left: AtomicUsize,
}

impl Tally {
    pub const fn new() -> Self {
        Self { verdicts: spin::Mutex::new(Vec::new()), left: AtomicUsize::new(0) }
    }

    /// One more VM (or start-up itself) to wait for.
    pub fn hold(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    /// A VM the configuration asked for could not start: the board's status
    /// reports a failure even if the others pass.
    pub fn refused(&self) {
        self.verdicts.lock().push(Verdict::Fail(1));
    }

    /// A VM ended with `verdict`; the board's status once it was the last.
    pub fn ended(&self, verdict: Verdict) -> Option<u32> {
        self.verdicts.lock().push(verdict);
        self.release()
    }

    /// Start-up is done (or a hold is given back); the board's status if
    /// nothing is left to wait for.
    pub fn release(&self) -> Option<u32> {
        (self.left.fetch_sub(1, Ordering::AcqRel) == 1).then(|| board_status(self.verdicts.lock().iter().copied()))
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_end_gives_the_board_status_once() {
        let t = Tally::new();
        t.hold(); // start-up
        t.hold(); // vm a
        assert_eq!(t.ended(Verdict::Pass), None, "start-up still holds the board");
        t.hold(); // vm b
        t.refused(); // vm c
        assert_eq!(t.release(), None, "vm b still runs");
        assert_eq!(t.ended(Verdict::Pass), Some(1), "the refused VM fails the board");
        let t = Tally::new();
        t.hold();
        t.hold();
        assert_eq!(t.ended(Verdict::Skip), None);
        assert_eq!(t.release(), Some(77));
    }

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
