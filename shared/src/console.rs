//! A write-only console over one of [`crate::uart`]'s drivers, behind a spin
//! lock, as both el2 and the host use it.

use crate::dt::UartDesc;
use crate::uart::Uart;
use core::fmt::{self, Write};
use spin::Mutex;

pub struct Console(Mutex<Option<Uart>>);

impl Console {
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Starts writing to the UART `desc` describes, enabling its transmitter
    /// if firmware left it off.
    ///
    /// # Safety
    /// `desc` must describe a UART mapped as device memory (or reachable with
    /// the MMU off) that nothing else drives.
    pub unsafe fn init(&self, desc: &UartDesc) {
        // SAFETY: our caller's promise.
        let mut uart = unsafe { Uart::new(desc) };
        uart.init();
        *self.0.lock() = Some(uart);
    }

    pub fn print(&self, args: fmt::Arguments) {
        if let Some(uart) = self.0.lock().as_mut() {
            let _ = uart.write_fmt(args);
        }
    }

    /// Prints even when the lock is held (by a CPU that faulted while
    /// printing): waits a little, then takes the console anyway.
    pub fn print_forced(&self, args: fmt::Arguments) {
        for _ in 0..1_000_000 {
            if let Some(mut guard) = self.0.try_lock() {
                if let Some(uart) = guard.as_mut() {
                    let _ = uart.write_fmt(args);
                }
                return;
            }
            core::hint::spin_loop();
        }
        // SAFETY: the holder has not let go for a long time; it is most likely
        // the CPU that failed. Interleaved output beats silence.
        unsafe { self.0.force_unlock() };
        self.print(args);
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

/// The binary's console: el2 and the host each link their own copy of this
/// crate, so each has its own.
static CONSOLE: Console = Console::new();

/// Starts the binary's console on the UART `desc` describes.
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

/// `println!` to the binary's console (bare metal only: on the development
/// host the name is std's).
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
