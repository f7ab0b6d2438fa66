//! Guest-triggered log lines, rate-limited per VM and per kind of event: a
//! guest decides how often it does something wrong, never how much the host
//! prints. Each kind may print a burst of [`BURST`] lines per window; the
//! rest are counted, the next line printed says how many were left out, and
//! the VM's statistics give the totals when it ends.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// What a guest did that the host reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// A data access outside its memory map.
    Unmapped,
    /// A data abort without a syndrome to emulate (ISV = 0).
    NoSyndrome,
    /// An instruction fetch outside its RAM.
    InstAbort,
    /// An access to a system register the host does not emulate.
    UnknownSysReg,
    /// A trapped instruction of a class the host does not handle.
    UnknownClass,
    /// A refusal of something past the VM's share of a host resource.
    OverShare,
}

pub const EVENTS: usize = 6;
const NAMES: [&str; EVENTS] = ["unmapped", "no-syndrome", "inst-abort", "sysreg", "class", "share"];

/// Lines each kind may print per window.
pub const BURST: u32 = 5;

#[derive(Default)]
struct Limit {
    /// Start of the current window (counter ticks).
    window_start: AtomicU64,
    printed: AtomicU32,
    /// Left out since the last line printed.
    pending: AtomicU64,
    total: AtomicU64,
}

#[derive(Default)]
pub struct LogLimiter {
    kinds: [Limit; EVENTS],
}

impl LogLimiter {
    /// Whether a line for `event` may be printed at `now`, windows being
    /// `window` long (both in counter ticks); if so, how many of its kind
    /// were left out since the last one printed.
    ///
    /// Lock-free: two vCPUs starting a new window at once may each print
    /// their burst, so a window prints at most `BURST` lines per vCPU.
    pub fn admit(&self, event: GuestEvent, now: u64, window: u64) -> Option<Suppressed> {
        let l = &self.kinds[event as usize];
        let start = l.window_start.load(Relaxed);
        if now.saturating_sub(start) >= window && l.window_start.compare_exchange(start, now, Relaxed, Relaxed).is_ok()
        {
            l.printed.store(0, Relaxed);
        }
        if l.printed.fetch_add(1, Relaxed) < BURST {
            Some(Suppressed(l.pending.swap(0, Relaxed)))
        } else {
            // Saturates rather than wrapping round to "may print" again.
            l.printed.store(BURST, Relaxed);
            l.pending.fetch_add(1, Relaxed);
            l.total.fetch_add(1, Relaxed);
            None
        }
    }

    /// Lines of `event`'s kind left out in all.
    #[cfg_attr(target_os = "none", allow(dead_code, reason = "the board reads the totals through `report`"))]
    pub fn suppressed(&self, event: GuestEvent) -> u64 {
        self.kinds[event as usize].total.load(Relaxed)
    }

    /// The totals left out, for the VM's statistics: `log lines suppressed
    /// N` and the kinds with any.
    pub fn report(&self) -> SuppressedReport<'_> {
        SuppressedReport(self)
    }
}

/// How many lines of a kind were left out before this one; shown after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar lines suppressed before this one)"),
        }
    }
}

pub struct SuppressedReport<'a>(&'a LogLimiter);

impl fmt::Display for SuppressedReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: u64 = self.0.kinds.iter().map(|k| k.total.load(Relaxed)).sum();
        write!(f, "log lines suppressed {all}")?;
        let mut sep = " (";
        for (name, k) in NAMES.iter().zip(&self.0.kinds) {
            let n = k.total.load(Relaxed);
            if n > 0 {
                write!(f, "{sep}{name} {n}")?;
                sep = ", ";
            }
        }
        if sep == ", " {
            write!(f, ")")?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use alloc::format;

    const WINDOW: u64 = 1000;

    fn printed(l: &LogLimiter, event: GuestEvent, now: u64, n: usize) -> usize {
        (0..n).filter(|_| l.admit(event, now, WINDOW).is_some()).count()
    }

    #[test]
    fn a_burst_then_nothing_until_the_next_window() {
        let l = LogLimiter::default();
        assert_eq!(printed(&l, GuestEvent::Unmapped, WINDOW, 10_000), BURST as usize);
        assert_eq!(l.suppressed(GuestEvent::Unmapped), 10_000 - u64::from(BURST));
        assert_eq!(printed(&l, GuestEvent::Unmapped, WINDOW + WINDOW / 2, 100), 0, "same window");
        // The first line of the next window says how many were left out.
        assert_eq!(l.admit(GuestEvent::Unmapped, 2 * WINDOW, WINDOW), Some(Suppressed(10_000 - 5 + 100)));
        assert_eq!(l.admit(GuestEvent::Unmapped, 2 * WINDOW, WINDOW), Some(Suppressed(0)));
    }

    #[test]
    fn kinds_are_limited_apart() {
        let l = LogLimiter::default();
        assert_eq!(printed(&l, GuestEvent::UnknownSysReg, WINDOW, 50), BURST as usize);
        assert_eq!(
            printed(&l, GuestEvent::UnknownClass, WINDOW, 50),
            BURST as usize,
            "a flood of one kind hides no other"
        );
        assert_eq!(l.suppressed(GuestEvent::Unmapped), 0);
    }

    /// Any number of events over any time prints at most a burst per
    /// window, and every event is either printed or counted.
    #[test]
    fn bounded_over_a_long_flood() {
        let l = LogLimiter::default();
        let (events, per_tick) = (200_000u64, 20);
        let mut lines = 0;
        for i in 0..events {
            lines += u64::from(l.admit(GuestEvent::NoSyndrome, i / per_tick, WINDOW).is_some());
        }
        let windows = events / per_tick / WINDOW + 1;
        assert!(lines <= windows * u64::from(BURST), "{lines} lines in {windows} windows");
        assert_eq!(lines + l.suppressed(GuestEvent::NoSyndrome), events);
    }

    #[test]
    fn the_report_names_the_kinds_with_suppressed_lines() {
        let l = LogLimiter::default();
        assert_eq!(format!("{}", l.report()), "log lines suppressed 0");
        printed(&l, GuestEvent::Unmapped, WINDOW, 8);
        printed(&l, GuestEvent::UnknownSysReg, WINDOW, 6);
        assert_eq!(format!("{}", l.report()), "log lines suppressed 4 (unmapped 3, sysreg 1)");
        assert_eq!(format!("{}", Suppressed(0)), "");
        assert_eq!(format!("{}", Suppressed(7)), " (7 similar lines suppressed before this one)");
    }

    #[test]
    fn vcpus_at_once_print_at_most_a_burst_each() {
        use std::sync::Arc;
        let l = Arc::new(LogLimiter::default());
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || printed(&l, GuestEvent::InstAbort, WINDOW, 5_000))
            })
            .collect();
        let lines: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!((BURST as usize..=4 * BURST as usize).contains(&lines), "{lines}");
        assert_eq!(lines as u64 + l.suppressed(GuestEvent::InstAbort), 20_000);
    }
}
