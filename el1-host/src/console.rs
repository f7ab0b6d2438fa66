//! The host console: the board's UART behind a spin lock, the `log` backend
//! (level from `loglevel=` in bootargs), and `println!`.

pub use ferrovisor_shared::console::{init, print, print_forced};

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
