//! What depends on the board: the console guessed before the device tree is
//! read, and the Raspberry Pi's watchdog, its only way to power off or reset
//! (its firmware has no PSCI).

use crate::arch::boot;
use core::sync::atomic::{AtomicU64, Ordering};
use ferrovisor_shared::dt::{UartDesc, UartKind};

/// Base of the Raspberry Pi's power-management watchdog, 0 if none.
static WATCHDOG: AtomicU64 = AtomicU64::new(0);

/// Records the device tree's watchdog (boot CPU, at boot).
pub(super) fn set_watchdog(base: Option<u64>) {
    WATCHDOG.store(base.unwrap_or(0), Ordering::Relaxed);
}

/// A console for errors found before the device tree could be read: guessed
/// from where the loader put us (QEMU virt loads at 1 GiB and up, with its
/// PL011 at 0x0900_0000; the Raspberry Pi 4 loads at 0x8_0000, PL011 at
/// 0xfe20_1000).
pub(super) fn fallback_console() -> UartDesc {
    let base = if boot::image_start() >= 0x4000_0000 { 0x0900_0000 } else { 0xfe20_1000 };
    UartDesc { kind: UartKind::Pl011, base, size: 0x1000 }
}

/// The BCM2711 power-management watchdog.
pub(super) struct Watchdog(usize);

impl Watchdog {
    const PASSWORD: u32 = 0x5a00_0000;
    const RSTC: usize = 0x1c;
    const RSTS: usize = 0x20;
    const WDOG: usize = 0x24;

    /// Resets the SoC in about 150 µs, with `partition` bits in RSTS.
    pub(super) fn reset(&self, partition: u32) {
        let reg = |off: usize| (self.0 + off) as *mut u32;
        // SAFETY: the base comes from the device tree's watchdog node, which
        // el2 maps as device memory; these are its documented registers.
        unsafe {
            let rsts = reg(Self::RSTS).read_volatile();
            reg(Self::RSTS).write_volatile(Self::PASSWORD | (rsts & 0xfffffaaa) | partition);
            reg(Self::WDOG).write_volatile(Self::PASSWORD | 10);
            let rstc = reg(Self::RSTC).read_volatile();
            reg(Self::RSTC).write_volatile(Self::PASSWORD | (rstc & !0x30) | 0x20);
        }
        for _ in 0..10_000_000 {
            core::hint::spin_loop();
        }
    }
}

pub(super) fn watchdog() -> Option<Watchdog> {
    match WATCHDOG.load(Ordering::Relaxed) {
        0 => None,
        base => Some(Watchdog(base as usize)),
    }
}
