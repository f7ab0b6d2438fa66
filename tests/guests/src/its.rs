//! The guest's GICv3 ITS driver: LPIs (`GICR_PROPBASER`/`GICR_PENDBASER`,
//! `GICR_CTLR.EnableLPIs`), the ITS's Device and Collection tables
//! (`GITS_BASER<n>`), its command queue (`GITS_CBASER`/`CWRITER`/`CREADR`)
//! and the commands, with names from the GIC architecture specification.
//!
//! The register map, field decoding and command encodings are the ones the
//! host's ITS driver uses too (`ferrovisor_shared::its`, re-exported here);
//! the driver that touches the hardware is on the bare-metal target only.
//!
//! Memory for the tables is one static, 64 KiB aligned arena in the BSS
//! (zero at entry, as the pending tables must be): 64 KiB unit `k` starts
//! with CPU `k`'s pending table; unit 0 also holds the command queue, the
//! LPI property table and the ITTs; the last two units are the Device and
//! Collection tables (one 64 KiB unit each fits any ITS page size). The MMU
//! is off, so the CPU's accesses to them are not cached and the tables are
//! described to the GIC as Normal Non-cacheable.

/// INTID bits the driver gives `GICR_PROPBASER.IDbits`: LPIs 8192-16383.
pub const LPI_ID_BITS: u32 = 14;
/// LPIs the property table describes.
pub const LPI_COUNT: u32 = (1 << LPI_ID_BITS) - LPI_BASE;

pub use ferrovisor_shared::gic::{GICD_TYPER_ID_BITS_SHIFT, GICD_TYPER_LPIS, LPI_BASE};
pub use ferrovisor_shared::its::*;

/// `GICD_TYPER.IDbits` + 1: the INTID bits the GIC supports.
pub fn gicd_id_bits(gicd_typer: u32) -> u32 {
    ((gicd_typer >> GICD_TYPER_ID_BITS_SHIFT) & 0x1f) + 1
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

    /// The tables are Normal Non-cacheable (the MMU is off) and Non-shareable.
    const CACHE: u64 = attr::NON_CACHEABLE;
    const SHARE: u64 = attr::NON_SHAREABLE;
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
        Table { table: BaserType, baser: u64 },
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
                    write!(
                        f,
                        "{} table: GITS_BASER {baser:#x} did not keep a 64 KiB flat table in any page size",
                        table.name()
                    )
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
        /// Each CPU's (device-tree index) RDbase value, as the commands take it.
        rdbase: [Option<u64>; MAX_CPUS],
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
            let typer = ItsTyper::from_bits(read64(base + GITS_TYPER));
            let a = arena();
            for lpi in 0..LPI_COUNT as usize {
                write8_mem(a + PROP_OFFSET + lpi, lpi_config(gic::DEFAULT_PRIORITY, false));
            }
            let mut rdbase = [None; MAX_CPUS];
            for (cpu, slot) in rdbase.iter_mut().enumerate().take(smp::count()) {
                let mpidr = smp::mpidr_of(cpu).unwrap_or(u64::MAX) & crate::cpus::MPIDR_AFFINITY_MASK;
                let (rd, rtyper) =
                    gic.redistributors().find(|(_, t)| t.mpidr() == mpidr).ok_or(ItsError::Redistributor { cpu })?;
                if rtyper.0 & GICR_TYPER_PLPIS == 0 {
                    return Err(ItsError::Redistributor { cpu });
                }
                // With PTA, the RD frame's address in 64 KiB units, else GICR_TYPER.Processor_Number.
                *slot = Some(if typer.pta { rd as u64 >> 16 } else { u64::from(rtyper.processor_number()) });
                let ctlr = read32(rd + gic::GICR_CTLR);
                if ctlr & GICR_CTLR_ENABLE_LPIS == 0 {
                    write64(rd + GICR_PROPBASER, propbaser((a + PROP_OFFSET) as u64, LPI_ID_BITS as u8, CACHE, SHARE));
                    write64(rd + GICR_PENDBASER, pendbaser((a + cpu * UNIT) as u64, true, CACHE, SHARE));
                    dsb();
                    write32(rd + gic::GICR_CTLR, ctlr | GICR_CTLR_ENABLE_LPIS);
                }
            }

            let ctlr = read32(base + GITS_CTLR);
            write32(base + GITS_CTLR, ctlr & !CTLR_ENABLED);
            // Disabling waits for the ITS to finish what it was doing.
            time::wait_for(COMMAND_TIMEOUT_MS, || read32(base + GITS_CTLR) & CTLR_QUIESCENT != 0);
            for (table, offset) in [(BaserType::Devices, DEVICE_TABLE), (BaserType::Collections, COLLECTION_TABLE)] {
                set_table(base, table, (a + offset) as u64)?;
            }
            let cq = cbaser((a + CMDQ_OFFSET) as u64, CMDQ_SIZE, CACHE, SHARE);
            write64(base + GITS_CBASER, cq);
            let got = read64(base + GITS_CBASER);
            if got & (CBASER_VALID | CBASER_PA) != cq & (CBASER_VALID | CBASER_PA) {
                return Err(ItsError::Queue { cbaser: got });
            }
            // Writing CBASER resets CREADR; CWRITER is ours to set.
            write64(base + GITS_CWRITER, 0);
            dsb();
            write32(base + GITS_CTLR, read32(base + GITS_CTLR) | CTLR_ENABLED);
            Ok(Its { base, typer, rdbase, write: Mutex::new(0) })
        }

        /// The control frame's base address.
        pub fn base(&self) -> usize {
            self.base
        }

        pub fn typer(&self) -> ItsTyper {
            self.typer
        }

        /// CPU `cpu`'s redistributor as `MAPC`/`SYNC` name it (the RDbase value [`Command`] takes).
        pub fn rdbase(&self, cpu: usize) -> Option<u64> {
            self.rdbase.get(cpu).copied().flatten()
        }

        /// The address of ITT slot `slot` (4 KiB, 256-byte aligned), for `MAPD`.
        pub fn itt(&self, slot: usize) -> u64 {
            (arena() + ITT_OFFSET + (slot % ITT_SLOTS) * ITT_SLOT_SIZE) as u64
        }

        /// The EventID bits a device's ITT slot has room for.
        pub fn itt_event_bits(&self) -> u8 {
            let entries = ITT_SLOT_SIZE as u32 / u32::from(self.typer.itt_entry_size).next_power_of_two();
            (31 - entries.leading_zeros()).min(u32::from(self.typer.id_bits)) as u8
        }

        /// Queues `cmd`, advances `GITS_CWRITER` and waits until `GITS_CREADR` reaches it.
        ///
        /// # Errors
        /// The queue stalled on a command error, or the ITS did not read it in time.
        pub fn send(&self, cmd: Command) -> Result<(), ItsError> {
            self.send_batch(&[cmd])
        }

        /// The most commands [`Its::send_batch`] takes at once (the queue
        /// less one slot: a full queue would read as empty).
        pub const BATCH: usize = CMDQ_SIZE / COMMAND_BYTES - 1;

        /// Queues `cmds` (at most [`Its::BATCH`]), advances `GITS_CWRITER`
        /// once past them all and waits until `GITS_CREADR` reaches it.
        ///
        /// # Errors
        /// As [`Its::send`]; more commands than [`Its::BATCH`] are not sent.
        pub fn send_batch(&self, cmds: &[Command]) -> Result<(), ItsError> {
            if cmds.len() > Self::BATCH {
                return Err(ItsError::Timeout { creadr: 0, cwriter: cmds.len() as u64 });
            }
            let mut write = self.write.lock();
            for cmd in cmds {
                let slot = arena() + CMDQ_OFFSET + *write;
                for (i, dw) in cmd.0.iter().enumerate() {
                    // SAFETY: `slot` is a 32-byte aligned command slot inside the
                    // arena's queue, which only this (locked) function writes.
                    unsafe { core::ptr::write_volatile((slot + 8 * i) as *mut u64, *dw) };
                }
                *write = (*write + COMMAND_BYTES) % CMDQ_SIZE;
            }
            let cwriter = *write as u64;
            dsb();
            write64(self.base + GITS_CWRITER, cwriter);
            let mut creadr = 0;
            let done = time::wait_for(COMMAND_TIMEOUT_MS, || {
                creadr = read64(self.base + GITS_CREADR);
                creadr & CREADR_STALLED != 0 || creadr & CQ_OFFSET == cwriter
            });
            if creadr & CREADR_STALLED != 0 {
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
                write8_mem(arena() + PROP_OFFSET + (intid - LPI_BASE) as usize, lpi_config(priority, enabled));
                dsb();
            }
        }
    }

    fn write8_mem(addr: usize, v: u8) {
        // SAFETY: callers pass an address inside the arena's property table.
        unsafe { core::ptr::write_volatile(addr as *mut u8, v) };
    }

    /// Points the `GITS_BASER<n>` of type `table` at the 64 KiB at `pa`, as
    /// Linux does: in the page size the register reads (64 KiB on KVM and
    /// QEMU), else in the first of 64, 16 and 4 KiB it keeps.
    fn set_table(its: usize, table: BaserType, pa: u64) -> Result<(), ItsError> {
        let reg = (0..GITS_BASER_COUNT)
            .map(|n| its + gits_baser(n))
            .find(|&r| BaserType::from_baser(read64(r)) == table)
            .ok_or(ItsError::Table { table, baser: 0 })?;
        let presented = PageSize::from_baser(read64(reg));
        let others =
            [PageSize::Size64K, PageSize::Size16K, PageSize::Size4K].into_iter().filter(|&p| Some(p) != presented);
        let mut last = 0;
        for page in presented.into_iter().chain(others) {
            let pages = UNIT / page.bytes();
            let pa_field = baser_pa_field(pa, page).ok_or(ItsError::Table { table, baser: last })?;
            write64(reg, baser(read64(reg), true, pa_field, page, pages, CACHE, SHARE));
            let got = read64(reg);
            last = got;
            let kept_pages = (got & BASER_SIZE) as usize + 1 == pages;
            if got & (BASER_VALID | BASER_INDIRECT) == BASER_VALID
                && PageSize::from_baser(got) == Some(page)
                && kept_pages
            {
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
    fn gicd_typer() {
        assert_eq!(gicd_id_bits(15 << 19), 16);
        assert_eq!(gicd_id_bits(0x1f << 19 | GICD_TYPER_LPIS), 32);
    }
}
