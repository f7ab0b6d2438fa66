//! Powering the board off or resetting it, with a status a harness can read:
//! the last line is always `ferrovisor: power off, status N`. With
//! `semihosting-exit` in bootargs the run ends through Arm semihosting with
//! that status; otherwise through PSCI `SYSTEM_OFF`, which el2 relays to
//! firmware or emulates.

use core::sync::atomic::{AtomicBool, Ordering};
use smccc::Hvc;

static SEMIHOSTING_EXIT: AtomicBool = AtomicBool::new(false);

pub fn set_semihosting_exit(on: bool) {
    SEMIHOSTING_EXIT.store(on, Ordering::Relaxed);
}

/// Ends the run with `status` (0: success).
pub fn power_off(status: u32) -> ! {
    crate::arch::aarch64::cpu::irq_disable();
    crate::console::print_forced(format_args!("ferrovisor: power off, status {status}\n"));
    if SEMIHOSTING_EXIT.load(Ordering::Relaxed) {
        semihosting_exit(status);
    }
    let _ = smccc::psci::system_off::<Hvc>();
    crate::arch::aarch64::cpu::halt()
}

/// Reports a fatal host error and powers off with a failure status.
pub fn fail(what: &str) -> ! {
    crate::console::print_forced(format_args!("ferrovisor: fatal: {what}\n"));
    power_off(1)
}

/// Semihosting `SYS_EXIT` with `ADP_Stopped_ApplicationExit` and the status.
fn semihosting_exit(status: u32) {
    const SYS_EXIT: u64 = 0x18;
    const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;
    let block = [ADP_STOPPED_APPLICATION_EXIT, status as u64];
    // SAFETY: only reached when bootargs ask for it, which the run command does
    // when it starts QEMU with semihosting on; `block` outlives the call.
    unsafe {
        core::arch::asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
    }
}
