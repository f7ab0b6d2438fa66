//! el2's console: the board's UART, write-only, behind a spin lock. el2 only
//! speaks when something is wrong (and for the few lines before the host has
//! a console of its own).

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
