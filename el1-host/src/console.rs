//! The host console: the board's UART behind a spin lock, the `log` backend
//! (level from `loglevel=` in bootargs), and `println!`.

use core::fmt::{self, Write};
use ferrovisor_shared::dt::UartDesc;
use ferrovisor_shared::uart::Uart;
use spin::Mutex;

static CONSOLE: Mutex<Option<Uart>> = Mutex::new(None);

/// Uses the UART the device tree names.
///
/// # Safety
/// `desc` must describe a UART mapped as device memory that nothing else drives.
pub unsafe fn init(desc: &UartDesc) {
    // SAFETY: our caller's promise.
    *CONSOLE.lock() = Some(unsafe { Uart::new(desc) });
}

pub fn print(args: fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints even when the lock is held (by a CPU that faulted or panicked).
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
    // SAFETY: the holder has not let go for a long time; it most likely is the
    // CPU that failed. Interleaved output beats silence.
    unsafe { CONSOLE.force_unlock() };
    print(args);
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
