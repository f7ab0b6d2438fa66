//! el2's console: the board's UART, write-only, behind a spin lock. el2 only
//! speaks when something is wrong (and for the few lines before the host has
//! a console of its own).

use core::fmt::{self, Write};
use ferrovisor_shared::dt::UartDesc;
use ferrovisor_shared::uart::Uart;
use spin::Mutex;

static CONSOLE: Mutex<Option<Uart>> = Mutex::new(None);

/// Uses the UART the device tree names.
///
/// # Safety
/// `desc` must describe a UART that el2's page tables (or, before they are
/// on, the physical address space) reach, and that nothing else drives
/// concurrently.
pub unsafe fn init(desc: &UartDesc) {
    // SAFETY: our caller's promise.
    let mut uart = unsafe { Uart::new(desc) };
    // Firmware may leave the transmitter off (QEMU's PL011 starts disabled).
    uart.init();
    *CONSOLE.lock() = Some(uart);
}

pub fn print(args: fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints even if the lock is held (a fault while printing must still be
/// reported): waits a little, then takes the console anyway.
pub fn print_forced(args: fmt::Arguments) {
    for _ in 0..1_000_000 {
        if let Some(mut guard) = CONSOLE.try_lock() {
            if let Some(uart) = guard.as_mut() {
                let _ = uart.write_fmt(args);
            }
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder has not let go for a long time; it is most likely the
    // CPU that faulted. Interleaved output beats silence.
    unsafe { CONSOLE.force_unlock() };
    print(args);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
