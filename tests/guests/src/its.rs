//! The guest's GICv3 ITS driver: LPIs (`GICR_PROPBASER`/`GICR_PENDBASER`,
//! `GICR_CTLR.EnableLPIs`), the ITS's Device and Collection tables
//! (`GITS_BASER<n>`), its command queue (`GITS_CBASER`/`CWRITER`/`CREADR`)
//! and the commands, with names from the GIC architecture specification.
//!
//! This part (register map, field decoding, command encodings) builds on the
//! development host too and carries unit tests; the driver that touches the
//! hardware is on the bare-metal target only.
//!
//! Memory for the tables is one static, 64 KiB aligned arena in the BSS
//! (zero at entry, as the pending tables must be): 64 KiB unit `k` starts
//! with CPU `k`'s pending table; unit 0 also holds the command queue, the
//! LPI property table and the ITTs; the last two units are the Device and
//! Collection tables (one 64 KiB unit each fits any ITS page size). The MMU
//! is off, so the CPU's accesses to them are not cached and the tables are
//! described to the GIC as Normal Non-cacheable.

/// The first LPI.
pub const LPI_BASE: u32 = 8192;
/// INTID bits the driver gives `GICR_PROPBASER.IDbits`: LPIs 8192-16383.
pub const LPI_ID_BITS: u32 = 14;
/// LPIs the property table describes.
pub const LPI_COUNT: u32 = (1 << LPI_ID_BITS) - LPI_BASE;

// ITS control frame.
pub const GITS_CTLR: usize = 0x0000;
pub const GITS_IIDR: usize = 0x0004;
pub const GITS_TYPER: usize = 0x0008;
pub const GITS_CBASER: usize = 0x0080;
pub const GITS_CWRITER: usize = 0x0088;
pub const GITS_CREADR: usize = 0x0090;
/// `GITS_BASER<n>` at `GITS_BASER + 8 * n`, n = 0-7.
pub const GITS_BASER: usize = 0x0100;
pub const GITS_PIDR2: usize = 0xffe8;
/// In the translation frame, 64 KiB up.
pub const GITS_TRANSLATER: usize = 0x1_0040;

pub const GITS_CTLR_ENABLED: u32 = 1 << 0;
pub const GITS_CTLR_QUIESCENT: u32 = 1 << 31;
/// `GITS_CREADR.Stalled`: a command error stopped the queue.
pub const GITS_CREADR_STALLED: u64 = 1 << 0;
/// `GITS_CWRITER`/`GITS_CREADR` `Offset` (bits [19:5]).
pub const GITS_CQ_OFFSET_MASK: u64 = 0xf_ffe0;

// Redistributor RD_base frame, LPI registers.
pub const GICR_PROPBASER: usize = 0x0070;
pub const GICR_PENDBASER: usize = 0x0078;
pub const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
/// `GICR_TYPER.PLPIS`: physical LPIs supported.
pub const GICR_TYPER_PLPIS: u64 = 1 << 0;
/// `GICD_TYPER.LPIS`.
pub const GICD_TYPER_LPIS: u32 = 1 << 17;

/// `InnerCache` value for Normal Inner Non-cacheable (`*BASER` fields).
const CACHE_NON_CACHEABLE: u64 = 1;
/// Physical address bits [51:12] and [51:16].
const PA_4K_MASK: u64 = 0x000f_ffff_ffff_f000;
const PA_64K_MASK: u64 = 0x000f_ffff_ffff_0000;
const VALID: u64 = 1 << 63;

/// `GICD_TYPER.IDbits` + 1: the INTID bits the GIC supports.
pub fn gicd_id_bits(gicd_typer: u32) -> u32 {
    ((gicd_typer >> 19) & 0x1f) + 1
}

/// `GITS_TYPER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItsTyper(pub u64);

impl ItsTyper {
    /// Physical LPIs supported.
    pub fn physical(self) -> bool {
        self.0 & 1 != 0
    }

    /// Virtual LPIs (GICv4).
    pub fn virt(self) -> bool {
        self.0 & (1 << 1) != 0
    }

    /// Bytes per ITT entry (`ITT_entry_size` + 1).
    pub fn itt_entry_size(self) -> u32 {
        ((self.0 >> 4) & 0xf) as u32 + 1
    }

    /// EventID bits (`ID_bits` + 1).
    pub fn event_id_bits(self) -> u32 {
        ((self.0 >> 8) & 0x1f) as u32 + 1
    }

    /// DeviceID bits (`Devbits` + 1).
    pub fn device_id_bits(self) -> u32 {
        ((self.0 >> 13) & 0x1f) as u32 + 1
    }

    /// `PTA`: collections name a redistributor by physical address (else by
    /// `GICR_TYPER.Processor_Number`).
    pub fn pta(self) -> bool {
        self.0 & (1 << 19) != 0
    }

    /// Collections the ITS holds itself (`HCC`).
    pub fn hcc(self) -> u32 {
        ((self.0 >> 24) & 0xff) as u32
    }

    /// Collection ID bits: `CIDbits` + 1 when `CIL` is set, else 16.
    pub fn collection_id_bits(self) -> u32 {
        if self.0 & (1 << 36) != 0 {
            ((self.0 >> 32) & 0xf) as u32 + 1
        } else {
            16
        }
    }
}

/// `GITS_BASER<n>.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableType {
    Unimplemented,
    Device,
    Vpe,
    Collection,
    /// A reserved encoding.
    Reserved(u8),
}

/// `GITS_BASER<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baser(pub u64);

impl Baser {
    pub fn table_type(self) -> TableType {
        match (self.0 >> 56) & 7 {
            0 => TableType::Unimplemented,
            1 => TableType::Device,
            2 => TableType::Vpe,
            4 => TableType::Collection,
            t => TableType::Reserved(t as u8),
        }
    }

    /// Bytes per entry (`Entry_Size` + 1).
    pub fn entry_size(self) -> u32 {
        ((self.0 >> 48) & 0x1f) as u32 + 1
    }

    pub fn valid(self) -> bool {
        self.0 & VALID != 0
    }

    pub fn indirect(self) -> bool {
        self.0 & (1 << 62) != 0
    }

    /// The page size `Page_Size` selects (the reserved 0b11 reads as 64 KiB).
    pub fn page_size(self) -> usize {
        match (self.0 >> 8) & 3 {
            0 => 0x1000,
            1 => 0x4000,
            _ => 0x1_0000,
        }
    }

    /// Pages (`Size` + 1).
    pub fn pages(self) -> usize {
        (self.0 & 0xff) as usize + 1
    }

    /// This register with a valid flat table of `pages` pages of `page_size`
    /// bytes at `pa` (aligned to the page size), Normal Non-cacheable,
    /// Non-shareable; `Type` and `Entry_Size` (read-only) kept.
    pub fn with_table(self, pa: u64, page_size: usize, pages: usize) -> Self {
        let keep = self.0 & ((7 << 56) | (0x1f << 48));
        let size_code = match page_size {
            0x1000 => 0,
            0x4000 => 1,
            _ => 2,
        };
        // With 64 KiB pages, PA bits [51:48] go in [15:12]; our tables are below 2^48.
        let addr = pa & 0x0000_ffff_ffff_f000;
        Self(keep | VALID | (CACHE_NON_CACHEABLE << 59) | addr | (size_code << 8) | (pages.clamp(1, 256) as u64 - 1))
    }
}

/// `GITS_CBASER` for a valid queue of `pages` 4 KiB pages at `pa` (4 KiB aligned).
pub fn cbaser(pa: u64, pages: usize) -> u64 {
    VALID | (CACHE_NON_CACHEABLE << 59) | (pa & PA_4K_MASK) | (pages.clamp(1, 256) as u64 - 1)
}

/// `GICR_PROPBASER` for a property table at `pa` (4 KiB aligned) covering INTIDs below 2^`id_bits`.
pub fn propbaser(pa: u64, id_bits: u32) -> u64 {
    (pa & PA_4K_MASK) | (CACHE_NON_CACHEABLE << 7) | u64::from(id_bits.clamp(14, 32) - 1)
}

/// `GICR_PENDBASER` for a pending table at `pa` (64 KiB aligned); `PTZ`: it is all zeros.
pub fn pendbaser(pa: u64, zeroed: bool) -> u64 {
    (pa & PA_64K_MASK) | (CACHE_NON_CACHEABLE << 7) | if zeroed { 1 << 62 } else { 0 }
}

/// An LPI's property table byte: priority bits [7:2], bit 1 RES1, bit 0 Enable.
pub fn lpi_property(priority: u8, enabled: bool) -> u8 {
    (priority & 0xfc) | 0b10 | u8::from(enabled)
}

/// One 32-byte ITS command, four little-endian doublewords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub [u64; 4]);

/// How a command names a redistributor (`RDbase`): by physical address
/// (`GITS_TYPER.PTA` = 1) or by `GICR_TYPER.Processor_Number`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdBase {
    Address(u64),
    ProcessorNumber(u32),
}

impl RdBase {
    /// The `RDbase` field, bits [51:16] of its doubleword.
    fn field(self) -> u64 {
        match self {
            Self::Address(pa) => pa & PA_64K_MASK,
            Self::ProcessorNumber(n) => u64::from(n) << 16,
        }
    }
}

const CMD_MOVI: u64 = 0x01;
const CMD_INT: u64 = 0x03;
const CMD_CLEAR: u64 = 0x04;
const CMD_SYNC: u64 = 0x05;
const CMD_MAPD: u64 = 0x08;
const CMD_MAPC: u64 = 0x09;
const CMD_MAPTI: u64 = 0x0a;
const CMD_MAPI: u64 = 0x0b;
const CMD_INV: u64 = 0x0c;
const CMD_INVALL: u64 = 0x0d;
const CMD_DISCARD: u64 = 0x0f;

fn dev_event(cmd: u64, device: u32, event: u32) -> [u64; 4] {
    [cmd | (u64::from(device) << 32), u64::from(event), 0, 0]
}

impl Command {
    /// The command number (DW0 bits [7:0]).
    pub fn number(self) -> u8 {
        self.0[0] as u8
    }

    /// `MAPD`: `device`'s ITT at `itt` (256-byte aligned) for EventIDs below 2^`event_bits`, or unmaps it.
    pub fn mapd(device: u32, event_bits: u32, itt: u64, valid: bool) -> Self {
        let v = if valid { VALID } else { 0 };
        Self([
            CMD_MAPD | (u64::from(device) << 32),
            u64::from(event_bits.clamp(1, 32) - 1),
            v | (itt & 0x000f_ffff_ffff_ff00),
            0,
        ])
    }

    /// `MAPC`: collection `icid` targets `rd`, or is unmapped.
    pub fn mapc(icid: u16, rd: RdBase, valid: bool) -> Self {
        let v = if valid { VALID } else { 0 };
        Self([CMD_MAPC, 0, v | rd.field() | u64::from(icid), 0])
    }

    /// `MAPTI`: `device`'s `event` is LPI `intid` in collection `icid`.
    pub fn mapti(device: u32, event: u32, intid: u32, icid: u16) -> Self {
        let mut c = dev_event(CMD_MAPTI, device, event);
        c[1] |= u64::from(intid) << 32;
        c[2] = u64::from(icid);
        Self(c)
    }

    /// `MAPI`: `device`'s `event` is LPI `event` in collection `icid`.
    pub fn mapi(device: u32, event: u32, icid: u16) -> Self {
        let mut c = dev_event(CMD_MAPI, device, event);
        c[2] = u64::from(icid);
        Self(c)
    }

    /// `MOVI`: `device`'s `event` moves to collection `icid`.
    pub fn movi(device: u32, event: u32, icid: u16) -> Self {
        let mut c = dev_event(CMD_MOVI, device, event);
        c[2] = u64::from(icid);
        Self(c)
    }

    /// `DISCARD`: removes `device`'s `event` mapping and its pending state.
    pub fn discard(device: u32, event: u32) -> Self {
        Self(dev_event(CMD_DISCARD, device, event))
    }

    /// `INV`: the redistributor rereads the LPI's property table byte.
    pub fn inv(device: u32, event: u32) -> Self {
        Self(dev_event(CMD_INV, device, event))
    }

    /// `INVALL`: rereads every property of collection `icid`'s LPIs.
    pub fn invall(icid: u16) -> Self {
        Self([CMD_INVALL, 0, u64::from(icid), 0])
    }

    /// `INT`: makes `device`'s `event` pending, as a write to `GITS_TRANSLATER` would.
    pub fn int(device: u32, event: u32) -> Self {
        Self(dev_event(CMD_INT, device, event))
    }

    /// `CLEAR`: removes `device`'s `event`'s pending state.
    pub fn clear(device: u32, event: u32) -> Self {
        Self(dev_event(CMD_CLEAR, device, event))
    }

    /// `SYNC`: earlier commands' effects reach redistributor `rd`.
    pub fn sync(rd: RdBase) -> Self {
        Self([CMD_SYNC, 0, rd.field(), 0])
    }
}

#[cfg(target_os = "none")]
pub use driver::*;

#[cfg(target_os = "none")]
mod driver {
    use core::arch::asm;
    use core::cell::UnsafeCell;
    use core::fmt;

    use ferrovisor_shared::boot::MAX_CPUS;
    use ferrovisor_shared::dt::GicDesc;
    use spin::{Mutex, Once};

    use super::*;
    use crate::gic::{self, read32, read64, write32, write64, Gic, GicError, Version};
    use crate::{rt, smp, time};

    /// How long a command may take to be consumed.
    const COMMAND_TIMEOUT_MS: u64 = 1000;
    const UNIT: usize = 0x1_0000;
    const ARENA_SIZE: usize = (MAX_CPUS + 2) * UNIT;
    const CMDQ_OFFSET: usize = 0x1000;
    const CMDQ_SIZE: usize = 0x1000;
    const PROP_OFFSET: usize = 0x2000;
    const ITT_OFFSET: usize = 0x4000;
    /// Bytes of each ITT slot.
    pub const ITT_SLOT_SIZE: usize = 0x1000;
    /// ITT slots, one per mapped device.
    pub const ITT_SLOTS: usize = 4;
    const DEVICE_TABLE: usize = MAX_CPUS * UNIT;
    const COLLECTION_TABLE: usize = (MAX_CPUS + 1) * UNIT;

    #[repr(C, align(65536))]
    struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

    // SAFETY: the CPU writes the arena only through the driver (the
    // property table and the command queue under the queue's lock, the
    // rest once during `init`), and otherwise the GIC reads it.
    unsafe impl Sync for Arena {}

    static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));

    fn arena() -> usize {
        ARENA.0.get() as usize
    }

    fn dsb() {
        // SAFETY: a barrier.
        unsafe { asm!("dsb sy", options(nostack)) };
    }

    /// What can stop the ITS driver.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ItsError {
        /// The GIC driver did not start.
        Gic(GicError),
        /// A GICv2, or a GICv3 node without an `arm,gic-v3-its` child.
        NoIts,
        /// `GICD_TYPER.LPIS` is clear or `IDbits` is below 14.
        NoLpis { gicd_typer: u32 },
        /// CPU `cpu`'s redistributor is missing or has no `PLPIS`.
        Redistributor { cpu: usize },
        /// No `GITS_BASER<n>` of this type, or it refused every page size.
        Table { table: TableType, baser: u64 },
        /// `GITS_CBASER` did not keep the queue.
        Queue { cbaser: u64 },
        /// `GITS_CREADR.Stalled`: the command at `creadr` failed.
        Stalled { creadr: u64 },
        /// `GITS_CREADR` did not reach `GITS_CWRITER` in time.
        Timeout { creadr: u64, cwriter: u64 },
    }

    impl fmt::Display for ItsError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Gic(e) => write!(f, "GIC set-up: {e}"),
                Self::NoIts => f.write_str("the device tree has no GICv3 ITS (arm,gic-v3-its)"),
                Self::NoLpis { gicd_typer } => {
                    write!(f, "GICD_TYPER {gicd_typer:#x}: no LPIs (LPIS clear or IDbits below 14)")
                }
                Self::Redistributor { cpu } => write!(f, "cpu{cpu}: no redistributor with GICR_TYPER.PLPIS"),
                Self::Table { table, baser } => {
                    write!(f, "{table:?} table: GITS_BASER {baser:#x} did not take a 64 KiB flat table")
                }
                Self::Queue { cbaser } => write!(f, "GITS_CBASER reads {cbaser:#x} after set-up"),
                Self::Stalled { creadr } => write!(f, "command queue stalled (GITS_CREADR {creadr:#x})"),
                Self::Timeout { creadr, cwriter } => write!(
                    f,
                    "GITS_CREADR {creadr:#x} did not reach GITS_CWRITER {cwriter:#x} in {COMMAND_TIMEOUT_MS} ms"
                ),
            }
        }
    }

    /// The ITS's control frame base from the device tree, if there is one.
    pub fn base() -> Option<usize> {
        match rt::env().board.gic()? {
            GicDesc::V3 { its: Some(its), .. } => Some(its.base as usize),
            _ => None,
        }
    }

    /// The ITS, set up by [`init`].
    pub struct Its {
        base: usize,
        typer: ItsTyper,
        /// Each CPU's (device-tree index) `RDbase` as commands name it.
        rdbase: [Option<RdBase>; MAX_CPUS],
        /// The next command's offset in the queue.
        write: Mutex<usize>,
    }

    static ITS: Once<Result<Its, ItsError>> = Once::new();

    /// Sets up, once: the GIC ([`gic::init`]), LPIs on every CPU's
    /// redistributor (one property table with every LPI disabled, one
    /// zeroed pending table each, `EnableLPIs`), the ITS's Device and
    /// Collection tables and command queue, and `GITS_CTLR.Enabled`.
    ///
    /// # Errors
    /// No GICv3 or no ITS in the device tree, no LPI support, a
    /// redistributor missing, or a table register that did not keep its value.
    pub fn init() -> Result<&'static Its, ItsError> {
        let gic = gic::init().map_err(ItsError::Gic)?;
        ITS.call_once(|| Its::setup(gic)).as_ref().map_err(|e| *e)
    }

    impl Its {
        fn setup(gic: &Gic) -> Result<Its, ItsError> {
            let base = match (gic.version(), self::base()) {
                (Version::V3, Some(b)) => b,
                _ => return Err(ItsError::NoIts),
            };
            let gicd_typer = read32(gic.gicd() + gic::GICD_TYPER);
            if gicd_typer & GICD_TYPER_LPIS == 0 || gicd_id_bits(gicd_typer) < LPI_ID_BITS {
                return Err(ItsError::NoLpis { gicd_typer });
            }
            let typer = ItsTyper(read64(base + GITS_TYPER));
            let a = arena();
            for lpi in 0..LPI_COUNT as usize {
                write8_mem(a + PROP_OFFSET + lpi, lpi_property(gic::DEFAULT_PRIORITY, false));
            }
            let mut rdbase = [None; MAX_CPUS];
            for (cpu, slot) in rdbase.iter_mut().enumerate().take(smp::count()) {
                let mpidr = smp::mpidr_of(cpu).unwrap_or(u64::MAX) & crate::cpus::MPIDR_AFFINITY_MASK;
                let (rd, rtyper) =
                    gic.redistributors().find(|(_, t)| t.mpidr() == mpidr).ok_or(ItsError::Redistributor { cpu })?;
                if rtyper.0 & GICR_TYPER_PLPIS == 0 {
                    return Err(ItsError::Redistributor { cpu });
                }
                *slot = Some(if typer.pta() {
                    RdBase::Address(rd as u64)
                } else {
                    RdBase::ProcessorNumber(rtyper.processor_number())
                });
                let ctlr = read32(rd + gic::GICR_CTLR);
                if ctlr & GICR_CTLR_ENABLE_LPIS == 0 {
                    write64(rd + GICR_PROPBASER, propbaser((a + PROP_OFFSET) as u64, LPI_ID_BITS));
                    write64(rd + GICR_PENDBASER, pendbaser((a + cpu * UNIT) as u64, true));
                    dsb();
                    write32(rd + gic::GICR_CTLR, ctlr | GICR_CTLR_ENABLE_LPIS);
                }
            }

            let ctlr = read32(base + GITS_CTLR);
            write32(base + GITS_CTLR, ctlr & !GITS_CTLR_ENABLED);
            // Disabling waits for the ITS to finish what it was doing.
            time::wait_for(COMMAND_TIMEOUT_MS, || read32(base + GITS_CTLR) & GITS_CTLR_QUIESCENT != 0);
            for (table, offset) in [(TableType::Device, DEVICE_TABLE), (TableType::Collection, COLLECTION_TABLE)] {
                set_table(base, table, (a + offset) as u64)?;
            }
            let cq = cbaser((a + CMDQ_OFFSET) as u64, CMDQ_SIZE / 0x1000);
            write64(base + GITS_CBASER, cq);
            let got = read64(base + GITS_CBASER);
            if got & (VALID | PA_4K_MASK) != cq & (VALID | PA_4K_MASK) {
                return Err(ItsError::Queue { cbaser: got });
            }
            // Writing CBASER resets CREADR; CWRITER is ours to set.
            write64(base + GITS_CWRITER, 0);
            dsb();
            write32(base + GITS_CTLR, read32(base + GITS_CTLR) | GITS_CTLR_ENABLED);
            Ok(Its { base, typer, rdbase, write: Mutex::new(0) })
        }

        /// The control frame's base address.
        pub fn base(&self) -> usize {
            self.base
        }

        pub fn typer(&self) -> ItsTyper {
            self.typer
        }

        /// CPU `cpu`'s redistributor as `MAPC`/`SYNC` name it.
        pub fn rdbase(&self, cpu: usize) -> Option<RdBase> {
            self.rdbase.get(cpu).copied().flatten()
        }

        /// The address of ITT slot `slot` (4 KiB, 256-byte aligned), for `MAPD`.
        pub fn itt(&self, slot: usize) -> u64 {
            (arena() + ITT_OFFSET + (slot % ITT_SLOTS) * ITT_SLOT_SIZE) as u64
        }

        /// The EventID bits a device's ITT slot has room for.
        pub fn itt_event_bits(&self) -> u32 {
            let entries = ITT_SLOT_SIZE as u32 / self.typer.itt_entry_size().next_power_of_two();
            (31 - entries.leading_zeros()).min(self.typer.event_id_bits())
        }

        /// Queues `cmd`, advances `GITS_CWRITER` and waits until `GITS_CREADR` reaches it.
        ///
        /// # Errors
        /// The queue stalled on a command error, or the ITS did not read it in time.
        pub fn send(&self, cmd: Command) -> Result<(), ItsError> {
            let mut write = self.write.lock();
            let slot = arena() + CMDQ_OFFSET + *write;
            for (i, dw) in cmd.0.iter().enumerate() {
                // SAFETY: `slot` is a 32-byte aligned command slot inside the
                // arena's queue, which only this (locked) function writes.
                unsafe { core::ptr::write_volatile((slot + 8 * i) as *mut u64, *dw) };
            }
            *write = (*write + 32) % CMDQ_SIZE;
            let cwriter = *write as u64;
            dsb();
            write64(self.base + GITS_CWRITER, cwriter);
            let mut creadr = 0;
            let done = time::wait_for(COMMAND_TIMEOUT_MS, || {
                creadr = read64(self.base + GITS_CREADR);
                creadr & GITS_CREADR_STALLED != 0 || creadr & GITS_CQ_OFFSET_MASK == cwriter
            });
            if creadr & GITS_CREADR_STALLED != 0 {
                Err(ItsError::Stalled { creadr })
            } else if done.is_none() {
                Err(ItsError::Timeout { creadr, cwriter })
            } else {
                Ok(())
            }
        }

        /// Sends each command in turn, stopping at the first error.
        ///
        /// # Errors
        /// As [`Its::send`].
        pub fn send_all(&self, cmds: &[Command]) -> Result<(), ItsError> {
            cmds.iter().try_for_each(|&c| self.send(c))
        }

        /// Writes LPI `intid`'s property table byte; the ITS sees it after `INV` or `INVALL`.
        pub fn set_lpi_property(&self, intid: u32, priority: u8, enabled: bool) {
            if (LPI_BASE..LPI_BASE + LPI_COUNT).contains(&intid) {
                let _queue = self.write.lock();
                write8_mem(arena() + PROP_OFFSET + (intid - LPI_BASE) as usize, lpi_property(priority, enabled));
                dsb();
            }
        }
    }

    fn write8_mem(addr: usize, v: u8) {
        // SAFETY: callers pass an address inside the arena's property table.
        unsafe { core::ptr::write_volatile(addr as *mut u8, v) };
    }

    /// Points the `GITS_BASER<n>` of type `table` at the 64 KiB at `pa`, as
    /// one 64 KiB page, four 16 KiB or sixteen 4 KiB ones, whichever it keeps.
    fn set_table(its: usize, table: TableType, pa: u64) -> Result<(), ItsError> {
        let reg = (0..8)
            .map(|n| its + GITS_BASER + 8 * n)
            .find(|&r| Baser(read64(r)).table_type() == table)
            .ok_or(ItsError::Table { table, baser: 0 })?;
        let mut last = 0;
        for page in [0x1_0000, 0x4000, 0x1000] {
            let want = Baser(read64(reg)).with_table(pa, page, UNIT / page);
            write64(reg, want.0);
            let got = Baser(read64(reg));
            last = got.0;
            if got.valid() && got.page_size() == page && got.pages() == UNIT / page && !got.indirect() {
                return Ok(());
            }
        }
        Err(ItsError::Table { table, baser: last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_typer() {
        // QEMU's: Physical, ITT_entry_size 16, ID_bits 16, Devbits 16, PTA, CIL with CIDbits 16.
        let t = ItsTyper(1 | (15 << 4) | (15 << 8) | (15 << 13) | (1 << 19) | (15 << 32) | (1 << 36));
        assert!(t.physical() && !t.virt() && t.pta());
        assert_eq!((t.itt_entry_size(), t.event_id_bits(), t.device_id_bits()), (16, 16, 16));
        assert_eq!((t.hcc(), t.collection_id_bits()), (0, 16));
        let t = ItsTyper((7 << 4) | (3 << 24) | (7 << 32));
        assert!(!t.physical() && !t.pta());
        assert_eq!((t.itt_entry_size(), t.event_id_bits(), t.device_id_bits()), (8, 1, 1));
        assert_eq!((t.hcc(), t.collection_id_bits()), (3, 16), "CIDbits counts only with CIL");
    }

    #[test]
    fn baser() {
        let device = Baser((1 << 56) | (7 << 48));
        assert_eq!((device.table_type(), device.entry_size(), device.valid()), (TableType::Device, 8, false));
        assert_eq!(Baser(4 << 56).table_type(), TableType::Collection);
        assert_eq!(Baser(3 << 56).table_type(), TableType::Reserved(3));
        let t = device.with_table(0x4012_0000, 0x1_0000, 1);
        assert_eq!(t.0, (1 << 63) | (1 << 59) | (1 << 56) | (7 << 48) | 0x4012_0000 | (2 << 8));
        assert!(t.valid() && !t.indirect());
        assert_eq!((t.page_size(), t.pages()), (0x1_0000, 1));
        let t = device.with_table(0x4012_0000, 0x1000, 16);
        assert_eq!((t.page_size(), t.pages(), t.0 & 0x3ff), (0x1000, 16, 15));
    }

    #[test]
    fn lpi_registers() {
        assert_eq!(propbaser(0x4008_2000, 14), 0x4008_2000 | (1 << 7) | 13);
        assert_eq!(pendbaser(0x4009_0000, true), 0x4009_0000 | (1 << 7) | (1 << 62));
        assert_eq!(cbaser(0x4008_1000, 1), (1 << 63) | (1 << 59) | 0x4008_1000);
        assert_eq!(lpi_property(0xa0, true), 0xa3);
        assert_eq!(lpi_property(0x43, false), 0x42);
        assert_eq!(gicd_id_bits(15 << 19), 16);
    }

    #[test]
    fn commands() {
        let c = Command::mapd(2, 5, 0x4008_4100, true);
        assert_eq!(c.0, [0x8 | (2 << 32), 4, (1 << 63) | 0x4008_4100, 0]);
        assert_eq!(c.number(), 8);
        assert_eq!(Command::mapd(2, 5, 0x4008_4100, false).0[2], 0x4008_4100);
        assert_eq!(Command::mapc(3, RdBase::Address(0x080e_0000), true).0, [0x9, 0, (1 << 63) | 0x080e_0000 | 3, 0]);
        assert_eq!(Command::mapc(3, RdBase::ProcessorNumber(2), true).0[2], (1 << 63) | (2 << 16) | 3);
        assert_eq!(Command::mapti(7, 20, 8195, 1).0, [0xa | (7 << 32), 20 | (8195 << 32), 1, 0]);
        assert_eq!(Command::mapi(7, 8200, 2).0, [0xb | (7 << 32), 8200, 2, 0]);
        assert_eq!(Command::movi(7, 20, 3).0, [0x1 | (7 << 32), 20, 3, 0]);
        assert_eq!(Command::discard(7, 20).0, [0xf | (7 << 32), 20, 0, 0]);
        assert_eq!(Command::inv(7, 20).0, [0xc | (7 << 32), 20, 0, 0]);
        assert_eq!(Command::invall(5).0, [0xd, 0, 5, 0]);
        assert_eq!(Command::int(7, 20).0, [0x3 | (7 << 32), 20, 0, 0]);
        assert_eq!(Command::clear(7, 20).0, [0x4 | (7 << 32), 20, 0, 0]);
        assert_eq!(Command::sync(RdBase::ProcessorNumber(1)).0, [0x5, 0, 1 << 16, 0]);
    }
}
