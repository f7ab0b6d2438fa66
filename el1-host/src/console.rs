//! The host console: the board's UART behind a spin lock, the `log` backend
//! (level from `loglevel=` in bootargs), and `println!`.

use core::fmt;
use ferrovisor_shared::console::Console;
use ferrovisor_shared::dt::UartDesc;

static CONSOLE: Console = Console::new();

/// Uses the UART the device tree names.
///
/// # Safety
/// As [`Console::init`].
pub unsafe fn init(desc: &UartDesc) {
    // SAFETY: our caller's promise.
    unsafe { CONSOLE.init(desc) };
}

pub fn print(args: fmt::Arguments) {
    CONSOLE.print(args);
}

/// Prints even when the lock is held (by a CPU that faulted or panicked).
pub fn print_forced(args: fmt::Arguments) {
    CONSOLE.print_forced(args);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            print(format_args!(
                "[{:<5} cpu{}] {}\n",
                record.level(),
                crate::arch::aarch64::cpu::current(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger with the level `loglevel=` in `bootargs` names.
pub fn init_log(bootargs: &str) {
    let level = crate::bootargs::log_level(bootargs);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
