//! Result counting and the exit status, in kvm-unit-tests' terms: every
//! `PASS`, `FAIL` and `SKIP` line is a test; the run ends with
//! `SUMMARY: N tests, M unexpected failures, K skipped` and
//! `EXIT: STATUS=S`, S = (code << 1) | 1 with code 0 for a pass and 1 for a
//! failure, or 77 when every test was skipped.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

/// `EXIT: STATUS=` when every test was skipped (or none ran).
pub const STATUS_SKIP: u32 = 77;

/// The status for exit code `code`: (code << 1) | 1.
pub const fn status_for(code: u32) -> u32 {
    (code << 1) | 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl Outcome {
    pub fn of(pass: bool) -> Self {
        if pass {
            Self::Pass
        } else {
            Self::Fail
        }
    }

    /// The line's leading word.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        }
    }
}

/// Counters every CPU adds to.
#[derive(Debug, Default)]
pub struct Tally {
    tests: AtomicU32,
    failures: AtomicU32,
    skipped: AtomicU32,
}

impl Tally {
    pub const fn new() -> Self {
        Self { tests: AtomicU32::new(0), failures: AtomicU32::new(0), skipped: AtomicU32::new(0) }
    }

    pub fn record(&self, outcome: Outcome) {
        self.tests.fetch_add(1, Ordering::SeqCst);
        match outcome {
            Outcome::Pass => {}
            Outcome::Fail => {
                self.failures.fetch_add(1, Ordering::SeqCst);
            }
            Outcome::Skip => {
                self.skipped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            tests: self.tests.load(Ordering::SeqCst),
            failures: self.failures.load(Ordering::SeqCst),
            skipped: self.skipped.load(Ordering::SeqCst),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub tests: u32,
    pub failures: u32,
    pub skipped: u32,
}

impl Counts {
    /// The number `EXIT: STATUS=` prints.
    pub fn exit_status(&self) -> u32 {
        if self.failures > 0 {
            status_for(1)
        } else if self.skipped == self.tests {
            STATUS_SKIP
        } else {
            status_for(0)
        }
    }
}

/// The `SUMMARY:` line (without the newline).
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SUMMARY: {} tests, {} unexpected failures, {} skipped", self.tests, self.failures, self.skipped)
    }
}

/// `<label>: <prefix>: <name>`, leaving out empty prefix parts.
pub struct Line<'a, T: fmt::Display> {
    pub label: &'a str,
    pub test: &'a str,
    pub sub: &'a str,
    pub name: T,
}

impl<T: fmt::Display> fmt::Display for Line<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.label)?;
        for part in [self.test, self.sub] {
            if !part.is_empty() {
                write!(f, "{part}: ")?;
            }
        }
        write!(f, "{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(outcomes: &[Outcome]) -> Counts {
        let t = Tally::new();
        for &o in outcomes {
            t.record(o);
        }
        t.counts()
    }

    #[test]
    fn statuses() {
        use Outcome::*;
        assert_eq!(tally(&[Pass, Pass, Skip]).exit_status(), 1);
        assert_eq!(tally(&[Pass, Fail, Skip]).exit_status(), 3);
        assert_eq!(tally(&[Skip, Fail]).exit_status(), 3);
        assert_eq!(tally(&[Skip, Skip]).exit_status(), 77);
        assert_eq!(tally(&[]).exit_status(), 77, "nothing ran counts as skipped");
        assert_eq!(tally(&[Pass]).exit_status(), 1);
    }

    #[test]
    fn summary_counts_skips_as_tests() {
        use Outcome::*;
        let c = tally(&[Pass, Fail, Skip, Skip]);
        assert_eq!(c, Counts { tests: 4, failures: 1, skipped: 2 });
        assert_eq!(c.to_string(), "SUMMARY: 4 tests, 1 unexpected failures, 2 skipped");
    }

    #[test]
    fn lines() {
        let l = Line { label: Outcome::of(true).label(), test: "selftest", sub: "setup", name: "smp=4" };
        assert_eq!(l.to_string(), "PASS: selftest: setup: smp=4");
        let l = Line { label: Outcome::of(false).label(), test: "psci", sub: "", name: format_args!("x {}", 1) };
        assert_eq!(l.to_string(), "FAIL: psci: x 1");
        assert_eq!(Line { label: "SKIP", test: "", sub: "", name: "n" }.to_string(), "SKIP: n");
    }
}
