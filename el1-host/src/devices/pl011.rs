//! An emulated PL011 UART for a guest's console: transmit only, always
//! ready, with the identification registers Linux's AMBA bus probes.
//!
//! The transmit FIFO is always empty (bytes go straight to the VM's console
//! line), so `UARTFR.TXFE` and the transmit interrupt status are always set;
//! receive is always empty.
#![cfg_attr(target_os = "none", allow(dead_code, reason = "the interrupt line is wired with the vGIC"))]

use super::bus::MmioDevice;
use super::DeviceHost;
use crate::gic::vgic::Kicks;

const DR: u64 = 0x000;
const RSR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;

const FR_RXFE: u64 = 1 << 4;
const FR_TXFE: u64 = 1 << 7;
const INT_TX: u64 = 1 << 5;

/// PeriphID0..3 (part 0x011, designer ARM, revision 1) and PCellID0..3.
const ID: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pl011 {
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    dmacr: u32,
}

impl Pl011 {
    pub const fn new() -> Self {
        // UARTCR resets with TXE and RXE set; IFLS with both at 1/2.
        Self { ilpr: 0, ibrd: 0, fbrd: 0, lcr_h: 0, cr: 0x300, ifls: 0x12, imsc: 0, dmacr: 0 }
    }

    pub fn read(&self, offset: u64) -> u64 {
        match offset {
            DR | RSR => 0,
            FR => FR_TXFE | FR_RXFE,
            ILPR => self.ilpr.into(),
            IBRD => self.ibrd.into(),
            FBRD => self.fbrd.into(),
            LCR_H => self.lcr_h.into(),
            CR => self.cr.into(),
            IFLS => self.ifls.into(),
            IMSC => self.imsc.into(),
            RIS => INT_TX,
            MIS => INT_TX & u64::from(self.imsc),
            DMACR => self.dmacr.into(),
            0xfe0..=0xffc if offset.is_multiple_of(4) => ID[((offset - 0xfe0) / 4) as usize].into(),
            _ => 0,
        }
    }

    /// Returns the byte written to the data register, if any.
    pub fn write(&mut self, offset: u64, value: u64) -> Option<u8> {
        let v = value as u32;
        match offset {
            DR => return Some(value as u8),
            ILPR => self.ilpr = v & 0xff,
            IBRD => self.ibrd = v & 0xffff,
            FBRD => self.fbrd = v & 0x3f,
            LCR_H => self.lcr_h = v & 0xff,
            CR => self.cr = v & 0xff87,
            IFLS => self.ifls = v & 0x3f,
            IMSC => self.imsc = v & 0x7ff,
            DMACR => self.dmacr = v & 0x7,
            // RSR/ECR clears errors; ICR clears interrupts: nothing is ever raised
            // but TX, which is level and stays.
            RSR | ICR => {}
            _ => {}
        }
        None
    }

    /// The interrupt line: high while an unmasked interrupt is raised.
    pub fn irq_level(&self) -> bool {
        u64::from(self.imsc) & INT_TX != 0
    }
}

/// Collects a guest's console output into lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    line: alloc::vec::Vec<u8>,
}

/// Lines longer than this are printed in pieces.
pub const MAX_LINE: usize = 200;

impl LineBuffer {
    pub const fn new() -> Self {
        Self { line: alloc::vec::Vec::new() }
    }

    /// Adds a byte; returns a finished line (without its newline) when there
    /// is one, or the first [`MAX_LINE`] bytes of a longer one. Carriage
    /// returns and other control bytes are dropped.
    pub fn push(&mut self, byte: u8) -> Option<alloc::string::String> {
        match byte {
            b'\n' => return Some(self.take()),
            // UTF-8 passes through; it is printed lossily.
            b'\t' | 0x20..=0x7e | 0x80..=0xff => self.line.push(byte),
            _ => return None,
        }
        // Bytes of any kind count: a guest writing no newline must not grow
        // the host's heap without bound.
        (self.line.len() >= MAX_LINE).then(|| self.take_piece())
    }

    /// The line so far but an unfinished UTF-8 character at its end, which
    /// starts the next piece (so a character is never cut in two).
    fn take_piece(&mut self) -> alloc::string::String {
        let cut = self.line.len() - unfinished_utf8(&self.line);
        let s = alloc::string::String::from_utf8_lossy(&self.line[..cut]).into_owned();
        self.line.drain(..cut);
        s
    }

    /// What is left of an unfinished line, if anything.
    pub fn flush(&mut self) -> Option<alloc::string::String> {
        (!self.line.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> alloc::string::String {
        let s = alloc::string::String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        s
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that needs
/// more (0 to 3): a lead byte within its sequence's length of the end.
fn unfinished_utf8(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xc0 != 0x80 {
            let len = match b {
                0xc2..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf4 => 4,
                _ => 1,
            };
            return if len > back { back } else { 0 };
        }
    }
    0
}

/// The guest's UART on its MMIO bus: the register model, and the line its
/// output is collected into until the VM gets it.
pub struct Uart {
    state: spin::Mutex<(Pl011, LineBuffer)>,
}

/// Its interrupt (SPI 1), level-sensitive.
pub const UART_INTID: u32 = 32 + super::map::UART_SPI;

impl Uart {
    pub const fn new() -> Self {
        Self { state: spin::Mutex::new((Pl011::new(), LineBuffer::new())) }
    }

    /// What is left of an unfinished console line, if anything.
    pub fn flush(&self) -> Option<alloc::string::String> {
        self.state.lock().1.flush()
    }
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: DeviceHost + ?Sized> MmioDevice<H> for Uart {
    fn read(&self, _vm: &H, _vcpu: usize, offset: u64, _size: u8) -> u64 {
        self.state.lock().0.read(offset)
    }

    /// A byte to the data register ends up in a console line; the interrupt
    /// line follows the mask (the vCPUs to kick for its change come back).
    fn write(&self, vm: &H, _vcpu: usize, offset: u64, _size: u8, value: u64) -> Kicks {
        let mut state = self.state.lock();
        let (dev, line) = &mut *state;
        let mut text = None;
        if let Some(byte) = dev.write(offset, value) {
            text = line.push(byte);
        }
        let level = dev.irq_level();
        drop(state);
        if let Some(text) = text {
            vm.console_line(&text);
        }
        vm.vgic().set_line(0, UART_INTID, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gic::vgic::{Model, Vgic, VgicConfig};

    /// A VM with one vCPU that keeps its console lines.
    struct FakeVm {
        vgic: Vgic,
        lines: spin::Mutex<alloc::vec::Vec<alloc::string::String>>,
    }

    impl FakeVm {
        fn new() -> Self {
            let vgic = Vgic::new(VgicConfig {
                model: Model::V3,
                vcpu_mpidrs: [0].into(),
                nr_spis: 32,
                lpis: false,
                share: crate::gic::vgic::budget::Share::unlimited(),
            });
            Self { vgic: vgic.unwrap(), lines: spin::Mutex::new(alloc::vec::Vec::new()) }
        }
    }

    impl DeviceHost for FakeVm {
        fn vgic(&self) -> &Vgic {
            &self.vgic
        }

        fn console_line(&self, text: &str) {
            self.lines.lock().push(text.into());
        }
    }

    #[test]
    fn the_bus_device_hands_lines_to_the_vm() {
        let (vm, uart) = (FakeVm::new(), Uart::new());
        for &c in b"EXIT: STATUS=0\nPASS" {
            assert_eq!(uart.write(&vm, 0, DR, 1, c.into()), Kicks::default());
        }
        assert_eq!(*vm.lines.lock(), ["EXIT: STATUS=0"]);
        assert_eq!(uart.flush().as_deref(), Some("PASS"));
        assert_eq!(MmioDevice::<FakeVm>::read(&uart, &vm, 0, FR, 4), FR_TXFE | FR_RXFE);
    }

    #[test]
    fn the_bus_device_drives_spi_1() {
        // Arm IHI 0069, GICD_ISPENDR<n>: bit 1 of ISPENDR1 reads INTID 33 pending.
        let (vm, uart) = (FakeVm::new(), Uart::new());
        let pending = |vm: &FakeVm| vm.vgic.dist_read(0, 0x204, 4) & 1 << (UART_INTID - 32);
        assert_eq!(pending(&vm), 0);
        uart.write(&vm, 0, IMSC, 4, INT_TX);
        assert_ne!(pending(&vm), 0, "TX raised and unmasked: the line is high");
        uart.write(&vm, 0, IMSC, 4, 0);
        assert_eq!(pending(&vm), 0, "masked: the line is low again");
    }

    #[test]
    fn transmit_only_and_always_ready() {
        let mut u = Pl011::new();
        assert_eq!(u.read(FR) & (FR_TXFE | FR_RXFE), FR_TXFE | FR_RXFE);
        assert_eq!(u.read(FR) & (1 << 5), 0, "TXFF clear");
        assert_eq!(u.write(DR, 0x41), Some(b'A'));
        assert_eq!(u.write(CR, 0x301), None);
        assert_eq!(u.read(CR), 0x301);
        assert_eq!(u.read(DR), 0);
    }

    #[test]
    fn identifies_as_a_pl011() {
        let u = Pl011::new();
        let id: alloc::vec::Vec<u64> = (0..8).map(|i| u.read(0xfe0 + 4 * i)).collect();
        assert_eq!(id, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn transmit_interrupt_follows_the_mask() {
        let mut u = Pl011::new();
        assert!(!u.irq_level());
        u.write(IMSC, INT_TX);
        assert!(u.irq_level());
        assert_eq!(u.read(MIS), INT_TX);
        u.write(IMSC, 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn lines_are_split_and_cleaned() {
        let mut b = LineBuffer::new();
        let mut lines = alloc::vec::Vec::new();
        for &c in b"PASS: one\r\nhalf" {
            lines.extend(b.push(c));
        }
        assert_eq!(lines, ["PASS: one"]);
        assert_eq!(b.flush().as_deref(), Some("half"));
        assert_eq!(b.flush(), None);
        for _ in 0..MAX_LINE {
            lines.extend(b.push(b'x'));
        }
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].len(), MAX_LINE);
    }

    /// A guest that writes only bytes above 0x7f and never a newline (found
    /// by the fuzzing below): the host once kept them all, a heap that grew
    /// for as long as the guest wrote.
    #[test]
    fn a_line_without_end_is_printed_in_pieces_whatever_its_bytes() {
        let mut b = LineBuffer::new();
        let mut pieces = alloc::vec::Vec::new();
        for _ in 0..10 * MAX_LINE {
            pieces.extend(b.push(0xff));
            assert!(b.line.len() <= MAX_LINE);
        }
        assert_eq!(pieces.len(), 10);
        // A character is never cut: "é" (0xc3 0xa9) across the limit goes whole into the next piece.
        let mut b = LineBuffer::new();
        let text = alloc::format!("{}é.", "x".repeat(MAX_LINE - 1));
        let pieces: alloc::vec::Vec<_> = text.bytes().filter_map(|c| b.push(c)).collect();
        assert_eq!(pieces, ["x".repeat(MAX_LINE - 1)]);
        assert_eq!(b.flush().as_deref(), Some("é."));
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        /// Offsets the guest may touch in the 4 KiB frame: the registers, the
        /// ID block, anywhere.
        fn offset() -> impl Strategy<Value = u64> {
            prop_oneof![
                4 => (0u64..0x13).prop_map(|r| 4 * r),
                1 => (0x3f8u64..0x400).prop_map(|r| 4 * r),
                1 => 0u64..0x1000,
                1 => any::<u64>(),
            ]
        }

        /// The bits of each read-write register (ARM DDI 0183G, PL011 TRM
        /// §3.3): UARTILPR [7:0], UARTIBRD [15:0], UARTFBRD [5:0], UARTLCR_H
        /// [7:0], UARTCR [15:7] and [2:0] (6:3 reserved), UARTIFLS [5:0],
        /// UARTIMSC [10:0], UARTDMACR [2:0].
        const RW: [(u64, u64); 8] = [
            (ILPR, 0xff),
            (IBRD, 0xffff),
            (FBRD, 0x3f),
            (LCR_H, 0xff),
            (CR, 0xff87),
            (IFLS, 0x3f),
            (IMSC, 0x7ff),
            (DMACR, 0x7),
        ];

        proptest! {
            #![proptest_config(crate::fuzz::config(512))]

            /// Any writes and reads: each register holds what its bits took,
            /// the read-only ones never change, and the interrupt line is the
            /// OR of the masked interrupt status (TRM §2.8, UARTINTR).
            #[test]
            fn registers_follow_their_masks(
                ops in prop::collection::vec((offset(), any::<u64>(), any::<bool>()), 1..64),
            ) {
                let mut u = Pl011::new();
                let mut model: alloc::collections::BTreeMap<u64, u64> =
                    RW.iter().map(|&(off, _)| (off, u.read(off))).collect();
                for (off, value, write) in ops {
                    if write {
                        let byte = u.write(off, value);
                        prop_assert_eq!(byte, (off == DR).then_some(value as u8));
                        if let Some(&(_, mask)) = RW.iter().find(|r| r.0 == off) {
                            model.insert(off, value & mask);
                        }
                    }
                    let read = u.read(off);
                    match RW.iter().find(|r| r.0 == off) {
                        Some(_) => prop_assert_eq!(read, model[&off]),
                        None if off == FR => prop_assert_eq!(read, FR_TXFE | FR_RXFE),
                        None if off == RIS => prop_assert_eq!(read, INT_TX),
                        None if off == MIS => prop_assert_eq!(read, INT_TX & model[&IMSC]),
                        None if (0xfe0..0x1000).contains(&off) && off % 4 == 0 => {
                            prop_assert_eq!(read, u64::from(ID[(off as usize - 0xfe0) / 4]));
                        }
                        None => prop_assert_eq!(read, 0, "offset {:#x}", off),
                    }
                    prop_assert_eq!(u.irq_level(), u.read(MIS) != 0);
                }
            }

            /// Any bytes: the buffer never holds more than a line, and what
            /// it gives back is every byte kept (newlines and control bytes
            /// but tab dropped), in order, no character cut.
            #[test]
            fn console_bytes_come_back_whole_in_bounded_lines(
                text in prop_oneof![any::<String>(), "[ -~\t\n\r]{0,600}", "[\u{80}-\u{10ffff}]{0,300}"],
            ) {
                let mut b = LineBuffer::new();
                let mut out = alloc::string::String::new();
                for &c in text.as_bytes() {
                    if let Some(line) = b.push(c) {
                        prop_assert!(line.len() <= MAX_LINE && !line.contains('\n'));
                        out.push_str(&line);
                    }
                    prop_assert!(b.line.len() <= MAX_LINE);
                }
                out.extend(b.flush());
                let kept: alloc::string::String =
                    text.chars().filter(|&c| c == '\t' || c == ' ' || c.is_ascii_graphic() || !c.is_ascii()).collect();
                prop_assert_eq!(out, kept);
            }
        }
    }
}
