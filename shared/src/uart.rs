//! Write-only console drivers: the PL011 and the Raspberry Pi's mini UART
//! (BCM2835 auxiliary UART), on an MMIO base the device tree gives.
//!
//! They neither program the baud rate nor take interrupts: firmware (or
//! QEMU) has set the line up, and they only push bytes. They work at EL2 or
//! EL1, with the MMU on or off, as long as the base is mapped as device
//! memory (or the MMU is off). Register access goes through [`Mmio`], so a
//! fake backend can test them on the host.
//!
//! Waiting for room in the transmitter is bounded: a UART that never makes
//! room (clock off, not enabled) loses bytes instead of hanging its caller.

use core::fmt;

use crate::dt::{UartDesc, UartKind};

/// Polls of the status register before a byte is given up.
pub const SPIN_LIMIT: u32 = 1 << 20;

/// 32-bit register access at byte offsets from a device's base.
pub trait Mmio {
    fn read32(&self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
}

/// Volatile access to real device registers.
#[derive(Debug)]
pub struct RawMmio {
    base: usize,
}

impl RawMmio {
    /// # Safety
    /// `base` is the address (as the current translation regime sees it) of
    /// a device's register window, mapped as device memory or accessed with
    /// the MMU off, covering every offset the driver uses; nothing else
    /// assumes exclusive access to those registers.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    pub fn base(&self) -> usize {
        self.base
    }
}

impl Mmio for RawMmio {
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract: base + offset is an aligned device register.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: `new`'s contract: base + offset is an aligned device register.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}

/// Polls `ready` until it returns true, at most [`SPIN_LIMIT`] times.
fn wait(mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..SPIN_LIMIT {
        if ready() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// An Arm PrimeCell PL011.
#[derive(Debug)]
pub struct Pl011<M: Mmio = RawMmio> {
    regs: M,
}

impl<M: Mmio> Pl011<M> {
    pub const DR: usize = 0x00;
    pub const FR: usize = 0x18;
    pub const CR: usize = 0x30;
    /// FR: transmit FIFO full.
    pub const FR_TXFF: u32 = 1 << 5;
    /// FR: still transmitting.
    pub const FR_BUSY: u32 = 1 << 3;
    /// CR: UART enable.
    pub const CR_UARTEN: u32 = 1 << 0;
    /// CR: transmit enable.
    pub const CR_TXE: u32 = 1 << 8;

    pub const fn new(regs: M) -> Self {
        Self { regs }
    }

    /// Enables the UART and its transmitter if firmware left them off; the
    /// baud rate and line settings stay as they are.
    pub fn init(&mut self) {
        let cr = self.regs.read32(Self::CR);
        let want = Self::CR_UARTEN | Self::CR_TXE;
        if cr & want != want {
            self.regs.write32(Self::CR, cr | want);
        }
    }

    /// Sends one byte once the FIFO has room (drops it if it never does).
    pub fn put(&mut self, byte: u8) {
        if wait(|| self.regs.read32(Self::FR) & Self::FR_TXFF == 0) {
            self.regs.write32(Self::DR, u32::from(byte));
        }
    }

    /// Waits until the last byte has left the shift register.
    pub fn flush(&mut self) {
        wait(|| self.regs.read32(Self::FR) & Self::FR_BUSY == 0);
    }
}

/// The BCM2835 auxiliary mini UART; `base` is its `AUX_MU_IO` register
/// (0xfe21_5040 on the Pi 4).
#[derive(Debug)]
pub struct MiniUart<M: Mmio = RawMmio> {
    regs: M,
}

impl<M: Mmio> MiniUart<M> {
    pub const IO: usize = 0x00;
    pub const LSR: usize = 0x14;
    pub const CNTL: usize = 0x20;
    /// LSR: the transmitter can accept a byte.
    pub const LSR_TX_EMPTY: u32 = 1 << 5;
    /// LSR: the transmitter is idle.
    pub const LSR_TX_IDLE: u32 = 1 << 6;
    /// CNTL: transmitter enable.
    pub const CNTL_TX_ENABLE: u32 = 1 << 1;

    pub const fn new(regs: M) -> Self {
        Self { regs }
    }

    /// Enables the transmitter if firmware left it off; the baud rate stays.
    /// (The aux block itself must already be enabled, as the Pi firmware
    /// does with `enable_uart=1`.)
    pub fn init(&mut self) {
        let cntl = self.regs.read32(Self::CNTL);
        if cntl & Self::CNTL_TX_ENABLE == 0 {
            self.regs.write32(Self::CNTL, cntl | Self::CNTL_TX_ENABLE);
        }
    }

    /// Sends one byte once the transmitter has room (drops it if it never does).
    pub fn put(&mut self, byte: u8) {
        if wait(|| self.regs.read32(Self::LSR) & Self::LSR_TX_EMPTY != 0) {
            self.regs.write32(Self::IO, u32::from(byte));
        }
    }

    /// Waits until the last byte has been sent.
    pub fn flush(&mut self) {
        wait(|| self.regs.read32(Self::LSR) & Self::LSR_TX_IDLE != 0);
    }
}

/// Either console UART.
#[derive(Debug)]
pub enum Uart<M: Mmio = RawMmio> {
    Pl011(Pl011<M>),
    MiniUart(MiniUart<M>),
}

impl Uart<RawMmio> {
    /// The driver for the UART `desc` describes, at its physical address.
    ///
    /// # Safety
    /// As [`RawMmio::new`] for `desc.base`: its registers are reachable at
    /// that address now (MMU off, or identity-mapped as device memory) and
    /// for as long as the driver is used.
    pub unsafe fn new(desc: &UartDesc) -> Self {
        // SAFETY: the caller's contract is RawMmio::new's.
        let regs = unsafe { RawMmio::new(desc.base as usize) };
        Self::with_regs(desc.kind, regs)
    }
}

impl<M: Mmio> Uart<M> {
    pub fn with_regs(kind: UartKind, regs: M) -> Self {
        match kind {
            UartKind::Pl011 => Self::Pl011(Pl011::new(regs)),
            UartKind::MiniUart => Self::MiniUart(MiniUart::new(regs)),
        }
    }

    pub fn init(&mut self) {
        match self {
            Self::Pl011(u) => u.init(),
            Self::MiniUart(u) => u.init(),
        }
    }

    pub fn put(&mut self, byte: u8) {
        match self {
            Self::Pl011(u) => u.put(byte),
            Self::MiniUart(u) => u.put(byte),
        }
    }

    /// Sends `bytes`, turning each `\n` into `\r\n`.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
    }

    /// Waits until everything written has been sent.
    pub fn flush(&mut self) {
        match self {
            Self::Pl011(u) => u.flush(),
            Self::MiniUart(u) => u.flush(),
        }
    }
}

impl<M: Mmio> fmt::Write for Uart<M> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;
    use std::cell::Cell;

    /// Registers that read back what was written, except `status`, which
    /// reads as `busy` for the first `busy_reads` reads and `ready` after.
    struct Fake {
        regs: [u32; 16],
        status: usize,
        busy: u32,
        ready: u32,
        busy_reads: Cell<u32>,
        writes: Vec<(usize, u32)>,
    }

    impl Fake {
        fn new(status: usize, busy: u32, ready: u32, busy_reads: u32) -> Self {
            Self { regs: [0; 16], status, busy, ready, busy_reads: Cell::new(busy_reads), writes: Vec::new() }
        }

        fn sent(&self, data: usize) -> Vec<u8> {
            self.writes.iter().filter(|(o, _)| *o == data).map(|(_, v)| *v as u8).collect()
        }
    }

    impl Mmio for Fake {
        fn read32(&self, offset: usize) -> u32 {
            if offset == self.status {
                let left = self.busy_reads.get();
                if left > 0 {
                    self.busy_reads.set(left - 1);
                    return self.busy;
                }
                return self.ready;
            }
            self.regs[offset / 4]
        }

        fn write32(&mut self, offset: usize, value: u32) {
            self.regs[offset / 4] = value;
            self.writes.push((offset, value));
        }
    }

    fn uart_regs(u: &Uart<Fake>) -> &Fake {
        match u {
            Uart::Pl011(p) => &p.regs,
            Uart::MiniUart(m) => &m.regs,
        }
    }

    #[test]
    fn pl011_waits_for_room_and_translates_newlines() {
        let fake = Fake::new(Pl011::<Fake>::FR, Pl011::<Fake>::FR_TXFF, 0, 5);
        let mut u = Uart::with_regs(UartKind::Pl011, fake);
        write!(u, "hi\n{}", 7).unwrap();
        let f = uart_regs(&u);
        assert_eq!(f.sent(Pl011::<Fake>::DR), b"hi\r\n7");
        assert_eq!(f.busy_reads.get(), 0, "the busy status was polled through");
    }

    #[test]
    fn mini_uart_waits_for_tx_empty() {
        let fake = Fake::new(MiniUart::<Fake>::LSR, 0, MiniUart::<Fake>::LSR_TX_EMPTY, 3);
        let mut u = Uart::with_regs(UartKind::MiniUart, fake);
        u.write_bytes(b"a\nb");
        assert_eq!(uart_regs(&u).sent(MiniUart::<Fake>::IO), b"a\r\nb");
    }

    #[test]
    fn a_dead_uart_drops_bytes_instead_of_hanging() {
        let fake = Fake::new(Pl011::<Fake>::FR, Pl011::<Fake>::FR_TXFF, 0, u32::MAX);
        let mut u = Uart::with_regs(UartKind::Pl011, fake);
        u.put(b'x');
        assert!(uart_regs(&u).writes.is_empty());
    }

    #[test]
    fn raw_mmio_drives_a_register_window() {
        let mut regs = [0u32; 16];
        let desc = UartDesc { kind: UartKind::Pl011, base: regs.as_mut_ptr() as u64, size: 64 };
        // SAFETY: `regs` stands in for the device: aligned, 64 bytes, alive
        // and otherwise untouched while `u` is used.
        let mut u = unsafe { Uart::new(&desc) };
        u.init();
        u.write_bytes(b"ok\n");
        u.flush();
        assert_eq!(regs[Pl011::<RawMmio>::DR / 4], u32::from(b'\n'));
        assert_eq!(regs[Pl011::<RawMmio>::CR / 4], 0x101);
    }

    #[test]
    fn init_enables_only_what_is_off() {
        let mut p = Pl011::new(Fake::new(0x3c, 0, 0, 0));
        p.regs.regs[Pl011::<Fake>::CR / 4] = Pl011::<Fake>::CR_UARTEN | 0x300;
        p.regs.writes.clear();
        p.init();
        assert!(p.regs.writes.is_empty(), "already enabled: no write");
        p.regs.regs[Pl011::<Fake>::CR / 4] = 0x80;
        p.init();
        assert_eq!(p.regs.writes, [(Pl011::<Fake>::CR, 0x80 | 0x101)]);

        let mut m = MiniUart::new(Fake::new(0x3c, 0, 0, 0));
        m.init();
        assert_eq!(m.regs.writes, [(MiniUart::<Fake>::CNTL, MiniUart::<Fake>::CNTL_TX_ENABLE)]);
    }
}
