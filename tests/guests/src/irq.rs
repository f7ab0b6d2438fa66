//! IRQs: the handler the IRQ vector calls, and the ways a test lets
//! interrupts in. Tests keep `PSTATE.I` set and open it only in short
//! windows ([`window`], [`wait`]) or around `WFI` ([`wfi_until`]), so where an
//! interrupt can be taken is always known.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::time;

/// What the IRQ vector calls, on the CPU that took the IRQ, with `PSTATE.I`
/// set. It acknowledges and ends the interrupt itself (see [`crate::gic`]).
pub type Handler = fn();

static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler every CPU's IRQ vector calls (`None`: an IRQ is an
/// unexpected exception that ends the test).
pub fn set_handler(handler: Option<Handler>) {
    HANDLER.store(handler.map_or(0, |h| h as usize), Ordering::SeqCst);
}

/// Called by the IRQ vector; false when no handler is installed.
pub(crate) fn dispatch() -> bool {
    let h = HANDLER.load(Ordering::SeqCst);
    if h == 0 {
        return false;
    }
    // SAFETY: HANDLER holds 0 or a `Handler` that set_handler stored.
    let handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
    handler();
    true
}

/// Clears `PSTATE.I`: IRQs are taken from here on.
pub fn unmask() {
    // SAFETY: changes PSTATE.I only; the vectors handle what comes.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
}

/// Sets `PSTATE.I`.
pub fn mask() {
    // SAFETY: changes PSTATE.I only.
    unsafe { asm!("msr daifset, #2", options(nostack)) };
}

/// Takes any IRQ pending now: unmasks, synchronizes, masks again.
pub fn window() {
    // SAFETY: as unmask and mask; an IRQ pending at the isb is taken before
    // the mask.
    unsafe { asm!("msr daifclr, #2", "isb", "msr daifset, #2", options(nostack)) };
}

/// Opens an IRQ window again and again until `done` holds or `ms` pass;
/// the microseconds it took.
pub fn wait(ms: u64, mut done: impl FnMut() -> bool) -> Option<u64> {
    time::wait_for(ms, || {
        window();
        done()
    })
}

/// Waits in `WFI` (with `PSTATE.I` set, so an interrupt that arrives after
/// the check still ends the `WFI`), taking IRQs in a window after each wake,
/// until `done` holds or, checked at each wake, `ms` pass. Only an interrupt
/// wakes the CPU: without one it waits forever.
pub fn wfi_until(ms: u64, mut done: impl FnMut() -> bool) -> Option<u64> {
    let start = time::counter();
    loop {
        window();
        if done() {
            return Some(time::us_since(start));
        }
        if time::us_since(start) > ms * 1000 {
            return None;
        }
        aarch64_cpu::asm::wfi();
    }
}
