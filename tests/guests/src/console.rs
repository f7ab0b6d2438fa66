//! Output and results: the console UART behind a spin lock (one line per
//! lock hold, so lines from several CPUs never interleave), the
//! `PASS`/`FAIL`/`SKIP`/`INFO` lines, and the end of the run.

use core::fmt::{self, Display};
use core::sync::atomic::{AtomicBool, Ordering};

use ferrovisor_shared::console::Console;
use ferrovisor_shared::dt::UartDesc;
use spin::Mutex;

use crate::report::{Line, Outcome, Tally};
use crate::{psci, rt};

static CONSOLE: Console = Console::new();
static TALLY: Tally = Tally::new();
/// The test's name and the running sub-test's, which every line starts with.
static PREFIX: Mutex<(&str, &str)> = Mutex::new(("", ""));
static PANICKING: AtomicBool = AtomicBool::new(false);

/// # Safety
/// As [`Console::init`]: `desc` is the console UART, reachable with the MMU
/// off, and nothing else drives it.
pub(crate) unsafe fn init(desc: &UartDesc) {
    // SAFETY: our caller's promise.
    unsafe { CONSOLE.init(desc) };
}

pub fn print(args: fmt::Arguments) {
    CONSOLE.print(args);
}

/// Prints a formatted line on the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) fn set_test(name: &'static str) {
    PREFIX.lock().0 = name;
}

pub(crate) fn set_subtest(name: &'static str) {
    PREFIX.lock().1 = name;
}

fn line(label: &str, name: impl Display, forced: bool) {
    // A forced line may come from a CPU that faulted while holding the lock.
    let prefix = if forced { PREFIX.try_lock().map(|p| *p) } else { Some(*PREFIX.lock()) };
    let (test, sub) = prefix.unwrap_or(("?", "?"));
    let line = Line { label, test, sub, name };
    if forced {
        CONSOLE.print_forced(format_args!("{line}\n"));
    } else {
        CONSOLE.print(format_args!("{line}\n"));
    }
}

/// Counts a test and prints `PASS: <test>: <name>` or `FAIL: ...`; returns `pass`.
pub fn report(pass: bool, name: impl Display) -> bool {
    let outcome = Outcome::of(pass);
    TALLY.record(outcome);
    line(outcome.label(), name, false);
    pass
}

/// Counts a skipped test and prints `SKIP: <test>: <name>`.
pub fn report_skip(name: impl Display) {
    TALLY.record(Outcome::Skip);
    line(Outcome::Skip.label(), name, false);
}

/// Prints `INFO: <test>: <msg>`; counts nothing.
pub fn report_info(msg: impl Display) {
    line("INFO", msg, false);
}

/// Prints the summary and `EXIT: STATUS=N`, then powers the VM off.
pub fn exit() -> ! {
    let counts = TALLY.counts();
    CONSOLE.print_forced(format_args!("{counts}\nEXIT: STATUS={}\n", counts.exit_status()));
    power_off()
}

/// Counts and prints a failure (even if the console is held), then exits.
pub fn fail_and_exit(msg: impl Display) -> ! {
    TALLY.record(Outcome::Fail);
    line(Outcome::Fail.label(), msg, true);
    exit()
}

/// PSCI `SYSTEM_OFF`; if that returns, wait forever.
pub fn power_off() -> ! {
    let _ = psci::system_off();
    loop {
        aarch64_cpu::asm::wfi();
    }
}

pub(crate) fn panic(info: &core::panic::PanicInfo) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while reporting a panic: stop without more output.
        power_off();
    }
    TALLY.record(Outcome::Fail);
    CONSOLE.print_forced(format_args!("FAIL: panic: {}\n", info.message()));
    if let Some(loc) = info.location() {
        line("INFO", format_args!("panic at {}:{} on cpu{}", loc.file(), loc.line(), rt::cpu_index()), true);
    }
    exit()
}
