//! The physical GICv3/v4.0 ITS the host drives (IHI 0069 chapters 5 and 6) and the redistributors'
//! LPI tables: table setup and the command queue (the register layout and command encodings are
//! `ferrovisor_shared::its`). Not the ITS guests see (that is `vgic::its`).
//!
//! Hardware is reached only through [`Registers`] (an ITS or redistributor frame) and
//! [`TableMemory`] (zeroed, identity-mapped memory for the tables and the command queue), so the logic
//! is tested on the dev host against a fake ITS.
//!
//! Choices:
//! - Flat tables only (`Indirect` = 0), sized for the caller's device and vPE counts up front.
//! - The command queue is 64 KiB (2048 commands); [`PhysIts::send`] waits for each batch to complete.
//! - Memory is first offered as Inner-shareable write-back; an ITS that reads the shareability back as
//!   Non-shareable gets Non-cacheable attributes and cache cleaning instead (as on non-coherent GICs).

#![cfg_attr(
    target_os = "none",
    allow(dead_code, reason = "the whole driver API, tested on the dev host; the host uses part")
)]

#[cfg(test)]
mod tests;

use core::fmt;

// The architecture's register layout and command encodings, shared with the test guests' ITS driver.
use ferrovisor_shared::gic::LPI_BASE;
use ferrovisor_shared::its::*;
pub use ferrovisor_shared::its::{Command, ItsTyper};

/// Register access to one MMIO frame (an ITS control frame, a redistributor's RD frame), by byte offset.
pub trait Registers {
    fn read32(&mut self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
    fn read64(&mut self, offset: usize) -> u64;
    fn write64(&mut self, offset: usize, value: u64);

    /// Makes the normal-memory writes made so far (commands, table entries) visible to the GIC before
    /// the next register write. A barrier (`DSB`) on hardware.
    fn memory_barrier(&mut self) {}

    /// Cleans and invalidates `[pa, pa + len)` to the point of coherency, for a GIC that does not snoop
    /// the CPUs' caches.
    fn clean_dcache(&mut self, pa: u64, len: usize) {
        let _ = (pa, len);
    }
}

/// A frame reached by volatile accesses at `base + offset`.
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// # Safety
    ///
    /// `base` is the (identity-mapped) address of a GIC register frame, mapped as Device memory and large
    /// enough for every offset used on it (64 KiB for an ITS control frame, 128 KiB for a GICv3 or
    /// 256 KiB for a GICv4 redistributor), and nothing else treats these registers as plain memory.
    pub unsafe fn new(base: u64) -> Mmio {
        Mmio { base: base as usize }
    }
}

impl Registers for Mmio {
    fn read32(&mut self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract: the frame is mapped and holds this register.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as for `read32`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        // SAFETY: as for `read32`; the GIC's 64-bit registers accept 64-bit accesses.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u64) }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        // SAFETY: as for `read64`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u64, value) }
    }

    fn memory_barrier(&mut self) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a barrier touches no memory and no registers.
        unsafe {
            core::arch::asm!("dsb sy", options(nostack, preserves_flags))
        };
        #[cfg(not(target_arch = "aarch64"))]
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn clean_dcache(&mut self, pa: u64, len: usize) {
        #[cfg(target_arch = "aarch64")]
        {
            let ctr: u64;
            // SAFETY: reading CTR_EL0 has no side effects.
            unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
            let line = 4u64 << ((ctr >> 16) & 0xf);
            let mut addr = pa & !(line - 1);
            while addr < pa.saturating_add(len as u64) {
                // SAFETY: `pa` is identity-mapped table memory (TableMemory's contract); DC CIVAC by VA
                // writes back and drops a line, changing no data.
                unsafe { core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags)) };
                addr += line;
            }
            // SAFETY: a barrier touches no memory and no registers.
            unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
        }
        #[cfg(not(target_arch = "aarch64"))]
        let _ = (pa, len);
    }
}

/// Memory for the ITS's tables, the command queue and the LPI tables.
///
/// # Safety
///
/// An implementation returns addresses of memory that is zeroed, identity mapped (the address is both
/// the physical address the GIC is given and the virtual address the CPU writes at), Normal write-back
/// cacheable, aligned as asked, at least `bytes` long, and given to nobody else for the life of the
/// program.
pub unsafe trait TableMemory {
    /// `None` when out of memory.
    fn alloc_zeroed(&mut self, bytes: usize, align: usize) -> Option<u64>;
}

/// Why the ITS or an LPI table could not be set up or used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItsError {
    /// `GITS_TYPER.Physical` or `GICR_TYPER.PLPIS` is 0.
    NoPhysicalLpis,
    /// vPEs were asked for but `GITS_TYPER.Virtual` is 0 (not a GICv4 ITS).
    NoVirtualLpis,
    /// A `GITS_TYPER` field this driver cannot work with.
    BadTyper { field: &'static str, value: u64 },
    /// More IDs were asked for than the ITS's ID width allows.
    TooManyIds { what: &'static str, wanted: u64, max: u64 },
    /// A flat table would need more than 256 pages of the largest page size its `GITS_BASER<n>` takes.
    TableTooBig { table: &'static str, bytes: usize },
    /// `GITS_BASER<n>` took none of the page sizes it was offered.
    NoPageSize { n: usize },
    /// `GITS_BASER<n>` did not keep the value written (address or Valid).
    BaserRejected { n: usize, wrote: u64, read: u64 },
    /// `GITS_CBASER` did not keep the value written.
    CbaserRejected { wrote: u64, read: u64 },
    /// The table memory allocator had no memory for this.
    OutOfMemory { what: &'static str, bytes: usize },
    /// Memory above what a table register can address.
    AddressTooHigh { what: &'static str, pa: u64 },
    /// The ITS stayed busy after being disabled (`GITS_CTLR.Quiescent` stayed 0).
    NotQuiescent,
    /// `GITS_CTLR.Enabled` did not read back as 1.
    EnableFailed,
    /// The ITS did not consume the queue up to `cwriter` in time.
    CommandTimeout { cwriter: u64, creadr: u64 },
    /// The ITS stalled on a command (`GITS_CREADR.Stalled`): `creadr` is the command's offset.
    QueueStalled { creadr: u64 },
    /// `GITS_CREADR` named an offset outside the command queue.
    CreadrOutOfRange { creadr: u64 },
    /// `GICR_CTLR.EnableLPIs` is already 1: the LPI tables can no longer be changed.
    LpisAlreadyEnabled,
    /// `GICR_CTLR.EnableLPIs` did not read back as 1.
    LpiEnableFailed,
    /// An LPI ID width outside 14 to 32 bits.
    BadLpiIdBits { id_bits: u8 },
}

impl From<TyperError> for ItsError {
    fn from(e: TyperError) -> ItsError {
        match e {
            TyperError::NoPhysicalLpis => ItsError::NoPhysicalLpis,
            TyperError::BadField { field, value } => ItsError::BadTyper { field, value },
        }
    }
}

impl fmt::Display for ItsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ItsError::NoPhysicalLpis => write!(f, "ITS: no physical LPI support"),
            ItsError::NoVirtualLpis => write!(f, "ITS: no vLPI support (GITS_TYPER.Virtual is 0), vPEs asked for"),
            ItsError::BadTyper { field, value } => write!(f, "ITS: unusable GITS_TYPER.{field} {value:#x}"),
            ItsError::TooManyIds { what, wanted, max } => {
                write!(f, "ITS: {wanted} {what} IDs asked for, the ITS has {max}")
            }
            ItsError::TableTooBig { table, bytes } => {
                write!(f, "ITS: {table} table of {bytes} bytes is too big for a flat table")
            }
            ItsError::NoPageSize { n } => write!(f, "ITS: GITS_BASER{n} took no page size offered"),
            ItsError::BaserRejected { n, wrote, read } => {
                write!(f, "ITS: GITS_BASER{n} wrote {wrote:#018x}, read back {read:#018x}")
            }
            ItsError::CbaserRejected { wrote, read } => {
                write!(f, "ITS: GITS_CBASER wrote {wrote:#018x}, read back {read:#018x}")
            }
            ItsError::OutOfMemory { what, bytes } => write!(f, "ITS: no memory for the {what} ({bytes} bytes)"),
            ItsError::AddressTooHigh { what, pa } => {
                write!(f, "ITS: {what} at {pa:#x} is above what the GIC can address")
            }
            ItsError::NotQuiescent => write!(f, "ITS: not quiescent after disabling"),
            ItsError::EnableFailed => write!(f, "ITS: GITS_CTLR.Enabled did not stick"),
            ItsError::CommandTimeout { cwriter, creadr } => {
                write!(f, "ITS: command timeout (GITS_CWRITER {cwriter:#x}, GITS_CREADR {creadr:#x})")
            }
            ItsError::QueueStalled { creadr } => write!(f, "ITS: command queue stalled at offset {creadr:#x}"),
            ItsError::CreadrOutOfRange { creadr } => write!(f, "ITS: GITS_CREADR {creadr:#x} outside the queue"),
            ItsError::LpisAlreadyEnabled => write!(f, "GICR: LPIs already enabled, tables cannot be changed"),
            ItsError::LpiEnableFailed => write!(f, "GICR: GICR_CTLR.EnableLPIs did not stick"),
            ItsError::BadLpiIdBits { id_bits } => write!(f, "GICR: LPI ID width {id_bits} outside 14..=32"),
        }
    }
}

/// Bytes in the command queue.
pub const COMMAND_QUEUE_BYTES: usize = 0x1_0000;
/// Collections set up in memory when the ITS holds fewer (`GITS_TYPER.HCC`): one per CPU.
pub const MAX_COLLECTIONS: u32 = 8;
/// ITT alignment (MAPD's ITT_addr holds bits [51:8]).
pub const ITT_ALIGN: usize = 256;
/// Default bound on register polls (quiescence, command completion).
pub const POLL_LIMIT: u32 = 10_000_000;

/// One table the ITS was given through `GITS_BASER<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItsTable {
    pub n: usize,
    pub kind: BaserType,
    pub pa: u64,
    pub bytes: usize,
    pub page: PageSize,
    pub entry_size: usize,
    /// IDs the table holds (bytes / entry size).
    pub entries: u64,
}

/// The physical ITS.
pub struct PhysIts<R> {
    regs: R,
    typer: ItsTyper,
    queue_pa: u64,
    /// Our next write offset in the queue (== the last `GITS_CWRITER` written once `send` returns).
    cwriter: usize,
    /// Whether the ITS snoops caches (shareability read back as written).
    coherent: bool,
    tables: [Option<ItsTable>; GITS_BASER_COUNT],
    poll_limit: u32,
}

impl<R: Registers> PhysIts<R> {
    /// Disables the ITS, gives it flat tables for `max_devices` DeviceIDs (0 to `max_devices` - 1),
    /// [`MAX_COLLECTIONS`] collections when it holds fewer itself, and `max_vpes` vPEs (0 for none), a
    /// 64 KiB command queue, and enables it.
    ///
    /// # Errors
    ///
    /// [`ItsError::NoPhysicalLpis`] or [`ItsError::BadTyper`] for a `GITS_TYPER` this driver cannot
    /// use, [`ItsError::NoVirtualLpis`] if `max_vpes` > 0 on an ITS without vLPIs,
    /// [`ItsError::TooManyIds`] if `max_devices` or `max_vpes` exceed the ID widths,
    /// [`ItsError::NotQuiescent`] if the ITS does not go idle, the table errors
    /// ([`ItsError::TableTooBig`], [`ItsError::NoPageSize`], [`ItsError::BaserRejected`],
    /// [`ItsError::OutOfMemory`], [`ItsError::AddressTooHigh`]), [`ItsError::CbaserRejected`] and
    /// [`ItsError::EnableFailed`].
    pub fn init(mut regs: R, mem: &mut impl TableMemory, max_devices: u32, max_vpes: u32) -> Result<Self, ItsError> {
        let typer = ItsTyper::decode(regs.read64(GITS_TYPER))?;
        let max_dev_ids = 1u64 << typer.dev_bits;
        if u64::from(max_devices) > max_dev_ids {
            return Err(ItsError::TooManyIds { what: "device", wanted: max_devices.into(), max: max_dev_ids });
        }
        if max_vpes > 0 && !typer.virtual_lpis {
            return Err(ItsError::NoVirtualLpis);
        }
        // vPEIDs are 16 bits in the commands.
        if max_vpes > 1 << 16 {
            return Err(ItsError::TooManyIds { what: "vPE", wanted: max_vpes.into(), max: 1 << 16 });
        }

        let mut its = PhysIts {
            regs,
            typer,
            queue_pa: 0,
            cwriter: 0,
            coherent: true,
            tables: [None; GITS_BASER_COUNT],
            poll_limit: POLL_LIMIT,
        };
        its.disable()?;

        for n in 0..GITS_BASER_COUNT {
            let current = its.regs.read64(gits_baser(n));
            let kind = BaserType::from_baser(current);
            let entries: u64 = match kind {
                BaserType::Devices => max_devices.into(),
                BaserType::Collections if u32::from(typer.hcc) < MAX_COLLECTIONS => MAX_COLLECTIONS.into(),
                BaserType::Vpes if max_vpes > 0 => max_vpes.into(),
                BaserType::Collections | BaserType::Vpes => {
                    // Not needed: make sure no stale table from an earlier boot stage stays in use.
                    its.regs.write64(gits_baser(n), current & !BASER_VALID);
                    continue;
                }
                BaserType::Unimplemented | BaserType::Reserved(_) => continue,
            };
            its.tables[n] = Some(its.setup_table(mem, n, current, kind, entries)?);
        }

        its.setup_queue(mem)?;
        let ctlr = its.regs.read32(GITS_CTLR);
        its.regs.write32(GITS_CTLR, ctlr | CTLR_ENABLED);
        if its.regs.read32(GITS_CTLR) & CTLR_ENABLED == 0 {
            return Err(ItsError::EnableFailed);
        }
        Ok(its)
    }

    fn disable(&mut self) -> Result<(), ItsError> {
        let ctlr = self.regs.read32(GITS_CTLR);
        if ctlr & CTLR_ENABLED != 0 {
            self.regs.write32(GITS_CTLR, ctlr & !CTLR_ENABLED);
        }
        for _ in 0..self.poll_limit {
            if self.regs.read32(GITS_CTLR) & CTLR_QUIESCENT != 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(ItsError::NotQuiescent)
    }

    fn setup_table(
        &mut self,
        mem: &mut impl TableMemory,
        n: usize,
        current: u64,
        kind: BaserType,
        entries: u64,
    ) -> Result<ItsTable, ItsError> {
        let entry_size = baser_entry_size(current);
        let off = gits_baser(n);
        let needed = entries.saturating_mul(entry_size as u64).max(1);
        let too_big =
            ItsError::TableTooBig { table: kind.name(), bytes: usize::try_from(needed).unwrap_or(usize::MAX) };

        // The smallest page size the register takes (Page_Size may be read-only) with which the table
        // fits in 256 pages.
        let mut chosen = None;
        let mut any_fits = false;
        for page in PageSize::ALL {
            let pages = needed.div_ceil(page.bytes() as u64);
            if pages > BASER_MAX_PAGES as u64 {
                continue;
            }
            any_fits = true;
            self.regs.write64(off, baser(current, false, 0, page, 1, attr::WB_RAWA, attr::INNER_SHAREABLE));
            if PageSize::from_baser(self.regs.read64(off)) == Some(page) {
                chosen = Some((page, pages as usize));
                break;
            }
        }
        let (page, pages) = match chosen {
            Some(c) => c,
            None if any_fits => return Err(ItsError::NoPageSize { n }),
            None => return Err(too_big),
        };
        let bytes = pages * page.bytes();
        let what = kind.name();
        let pa = mem.alloc_zeroed(bytes, page.bytes()).ok_or(ItsError::OutOfMemory { what, bytes })?;
        let pa_field = baser_pa_field(pa, page).ok_or(ItsError::AddressTooHigh { what, pa })?;

        let mut wrote = baser(current, true, pa_field, page, pages, attr::WB_RAWA, attr::INNER_SHAREABLE);
        self.regs.write64(off, wrote);
        let mut read = self.regs.read64(off);
        if shareability(read) != attr::INNER_SHAREABLE {
            self.coherent = false;
            wrote = baser(current, true, pa_field, page, pages, attr::NON_CACHEABLE, attr::NON_SHAREABLE);
            self.regs.write64(off, wrote);
            read = self.regs.read64(off);
            self.regs.clean_dcache(pa, bytes);
        }
        let must_keep = BASER_VALID | BASER_INDIRECT | field(47, 12) | BASER_SIZE | field(9, 8);
        if (read ^ wrote) & must_keep != 0 {
            return Err(ItsError::BaserRejected { n, wrote, read });
        }
        let entries = (bytes / entry_size) as u64;
        Ok(ItsTable { n, kind, pa, bytes, page, entry_size, entries })
    }

    fn setup_queue(&mut self, mem: &mut impl TableMemory) -> Result<(), ItsError> {
        let bytes = COMMAND_QUEUE_BYTES;
        let what = "command queue";
        let pa = mem.alloc_zeroed(bytes, bytes).ok_or(ItsError::OutOfMemory { what, bytes })?;
        if pa & !CBASER_PA != 0 {
            return Err(ItsError::AddressTooHigh { what, pa });
        }
        let mut wrote = cbaser(pa, bytes, attr::WB_RAWA, attr::INNER_SHAREABLE);
        self.regs.write64(GITS_CBASER, wrote);
        let mut read = self.regs.read64(GITS_CBASER);
        if shareability(read) != attr::INNER_SHAREABLE {
            self.coherent = false;
            wrote = cbaser(pa, bytes, attr::NON_CACHEABLE, attr::NON_SHAREABLE);
            self.regs.write64(GITS_CBASER, wrote);
            read = self.regs.read64(GITS_CBASER);
        }
        if (read ^ wrote) & (CBASER_VALID | CBASER_PA | CBASER_SIZE) != 0 {
            return Err(ItsError::CbaserRejected { wrote, read });
        }
        self.queue_pa = pa;
        self.cwriter = 0;
        self.regs.write64(GITS_CWRITER, 0);
        Ok(())
    }

    /// Bounds every register poll to `limit` reads (default [`POLL_LIMIT`]).
    pub fn set_poll_limit(&mut self, limit: u32) {
        self.poll_limit = limit.max(1);
    }

    /// Writes `cmds` to the command queue and waits until the ITS has consumed them all. More commands
    /// than the queue holds go in several rounds; a full queue waits for the ITS to make room.
    ///
    /// # Errors
    ///
    /// [`ItsError::QueueStalled`] if the ITS stalled on a command (it waits for software: the queue
    /// stays as it is), [`ItsError::CommandTimeout`] if it made no progress within the poll bound,
    /// [`ItsError::CreadrOutOfRange`] if `GITS_CREADR` names an offset outside the queue. Commands
    /// before the failing point may have been executed.
    pub fn send(&mut self, cmds: &[Command]) -> Result<(), ItsError> {
        let mut creadr = self.creadr()?;
        for cmd in cmds {
            let next = (self.cwriter + COMMAND_BYTES) % COMMAND_QUEUE_BYTES;
            // Full: one slot always stays empty, so that CWRITER == CREADR means empty.
            while next == creadr {
                self.publish();
                let full_at = creadr;
                creadr = self.wait(|c| c != full_at)?;
            }
            self.write_command(self.cwriter, cmd);
            self.cwriter = next;
        }
        if cmds.is_empty() {
            return Ok(());
        }
        self.publish();
        let target = self.cwriter;
        self.wait(|c| c == target)?;
        Ok(())
    }

    fn write_command(&mut self, offset: usize, cmd: &Command) {
        let slot = self.queue_pa + offset as u64;
        for (i, word) in cmd.0.iter().enumerate() {
            // SAFETY: `offset` is a multiple of 32 below COMMAND_QUEUE_BYTES (kept so by `send`'s modular
            // arithmetic), so the 32 bytes lie inside the queue TableMemory gave us: ours alone,
            // identity mapped, 64 KiB aligned.
            unsafe { core::ptr::write_volatile((slot + 8 * i as u64) as *mut u64, word.to_le()) };
        }
        if !self.coherent {
            self.regs.clean_dcache(slot, COMMAND_BYTES);
        }
    }

    fn publish(&mut self) {
        self.regs.memory_barrier();
        self.regs.write64(GITS_CWRITER, self.cwriter as u64);
    }

    /// `GITS_CREADR`'s offset.
    fn creadr(&mut self) -> Result<usize, ItsError> {
        let raw = self.regs.read64(GITS_CREADR);
        if raw & CREADR_STALLED != 0 {
            return Err(ItsError::QueueStalled { creadr: raw & CQ_OFFSET });
        }
        let offset = raw & CQ_OFFSET;
        if raw & !(CQ_OFFSET | CREADR_STALLED) != 0 || offset >= COMMAND_QUEUE_BYTES as u64 {
            return Err(ItsError::CreadrOutOfRange { creadr: raw });
        }
        Ok(offset as usize)
    }

    /// Polls `GITS_CREADR` until `done` holds for its offset.
    fn wait(&mut self, done: impl Fn(usize) -> bool) -> Result<usize, ItsError> {
        let mut last = 0;
        for _ in 0..self.poll_limit {
            last = self.creadr()?;
            if done(last) {
                return Ok(last);
            }
            core::hint::spin_loop();
        }
        Err(ItsError::CommandTimeout { cwriter: self.cwriter as u64, creadr: last as u64 })
    }

    /// The RDbase value the command constructors take for a redistributor: with `GITS_TYPER.PTA` = 1
    /// its RD frame's physical address >> 16, else its `processor_number` (`GICR_TYPER.Processor_Number`).
    /// The constructors place it at DW2[51:16].
    pub fn rdbase(&self, cpu_rd_frame_pa: u64, processor_number: u16) -> u64 {
        if self.typer.pta {
            cpu_rd_frame_pa >> 16
        } else {
            processor_number.into()
        }
    }

    /// `GITS_TYPER`, decoded.
    pub fn typer(&self) -> ItsTyper {
        self.typer
    }

    /// Bytes of an ITT for 2^`event_bits` events, rounded up to [`ITT_ALIGN`] (ITTs are 256-byte
    /// aligned); `usize::MAX` for an `event_bits` above 32, so that no allocation succeeds.
    pub fn itt_bytes(&self, event_bits: u8) -> usize {
        if event_bits > 32 {
            return usize::MAX;
        }
        let bytes = (1u64 << event_bits) * u64::from(self.typer.itt_entry_size);
        usize::try_from(bytes.next_multiple_of(ITT_ALIGN as u64)).unwrap_or(usize::MAX)
    }

    /// The tables given through `GITS_BASER<n>`, by n.
    pub fn tables(&self) -> &[Option<ItsTable>; GITS_BASER_COUNT] {
        &self.tables
    }

    /// Collection IDs usable with MAPC: the ITS's own (`HCC`) or the collection table's.
    pub fn collections(&self) -> u32 {
        let in_memory = self
            .tables
            .iter()
            .flatten()
            .find(|t| t.kind == BaserType::Collections)
            .map_or(0, |t| u32::try_from(t.entries).unwrap_or(u32::MAX));
        in_memory.max(self.typer.hcc.into()).min(1 << self.typer.cid_bits.min(16))
    }

    /// Whether the ITS snoops the CPUs' caches (else ITTs and vPE tables given to it later need
    /// cleaning to the point of coherency).
    pub fn coherent(&self) -> bool {
        self.coherent
    }

    /// The register frame, for what this driver does not cover.
    pub fn regs(&mut self) -> &mut R {
        &mut self.regs
    }
}

/// The redistributors' LPI tables (IHI 0069 §5.1): sizes and the `GICR_*BASER` values naming them.
pub struct LpiTables;

/// `GICR_PROPBASER` / `GICR_VPROPBASER` table alignment.
pub const PROP_TABLE_ALIGN: usize = 0x1000;
/// `GICR_PENDBASER` / `GICR_VPENDBASER` table alignment.
pub const PEND_TABLE_ALIGN: usize = 0x1_0000;

impl LpiTables {
    /// Bytes of an LPI configuration (property) table for INTIDs of `id_bits` bits: one byte per LPI,
    /// 2^`id_bits` - 8192. 0 for `id_bits` below 14 (no LPIs), `usize::MAX` above 32.
    pub fn prop_table_bytes(id_bits: u8) -> usize {
        match id_bits {
            0..=13 => 0,
            14..=32 => usize::try_from((1u64 << id_bits) - u64::from(LPI_BASE)).unwrap_or(usize::MAX),
            _ => usize::MAX,
        }
    }

    /// Bytes of an LPI pending table for INTIDs of `id_bits` bits: one bit per INTID (the first 1 KiB,
    /// for INTIDs below 8192, is IMPLEMENTATION DEFINED), rounded up to 64 KiB, the alignment it needs.
    /// `usize::MAX` for `id_bits` above 32.
    pub fn pend_table_bytes(id_bits: u8) -> usize {
        if id_bits > 32 {
            return usize::MAX;
        }
        let bytes = ((1u64 << id_bits) / 8).next_multiple_of(PEND_TABLE_ALIGN as u64);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Checks an LPI INTID width (`GICD_TYPER.IDbits` + 1, or a vPE's) before it is used for tables.
    ///
    /// # Errors
    ///
    /// [`ItsError::BadLpiIdBits`] outside 14 to 32 bits (no LPIs below 14; the architecture's maximum).
    pub fn check_id_bits(id_bits: u8) -> Result<(), ItsError> {
        if (14..=32).contains(&id_bits) {
            Ok(())
        } else {
            Err(ItsError::BadLpiIdBits { id_bits })
        }
    }

    /// `GICR_PROPBASER` for a configuration table at `pa` (4 KiB aligned) covering INTIDs of `id_bits`
    /// bits (14 to 32): Inner-shareable, write-back cacheable.
    pub fn propbaser(pa: u64, id_bits: u8) -> u64 {
        propbaser(pa, id_bits, attr::WB_RAWA, attr::INNER_SHAREABLE)
    }

    /// `GICR_PENDBASER` for a pending table at `pa` (64 KiB aligned): Inner-shareable, write-back
    /// cacheable; `zeroed` sets PTZ (the table is known to be all zeros, so the GIC need not scan it).
    pub fn pendbaser(pa: u64, zeroed: bool) -> u64 {
        pendbaser(pa, zeroed, attr::WB_RAWA, attr::INNER_SHAREABLE)
    }

    /// `GICR_VPROPBASER` (GICv4.0) for a vPE's virtual LPI configuration table at `pa`, vINTIDs of
    /// `id_bits` bits.
    pub fn vpropbaser(pa: u64, id_bits: u8) -> u64 {
        Self::propbaser(pa, id_bits)
    }

    /// `GICR_VPENDBASER` for a vPE's virtual LPI pending table at `pa` (64 KiB aligned). With `valid`
    /// (making the vPE resident) PendingLast and IDAI are set too: the table may hold pending vLPIs and
    /// its IMPLEMENTATION DEFINED area is not to be trusted, always correct, at worst slower.
    pub fn vpendbaser(pa: u64, valid: bool) -> u64 {
        let flags = if valid { VPENDBASER_VALID | VPENDBASER_PENDING_LAST | VPENDBASER_IDAI } else { 0 };
        (pa & PENDBASER_PA) | xbaser_attrs(attr::WB_RAWA, attr::INNER_SHAREABLE) | flags
    }

    /// One byte of the LPI configuration table: Priority [7:2], bit 1 RES1, Enable bit 0.
    pub fn lpi_config(priority: u8, enabled: bool) -> u8 {
        lpi_config(priority, enabled)
    }
}

/// How the redistributor took the LPI tables' attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coherency {
    /// Inner shareable, as written.
    Shareable,
    /// It does not snoop: the tables were switched to Non-cacheable attributes, and the caller must clean
    /// configuration-table changes to the point of coherency.
    NonShareable,
}

/// [`enable_lpis_on`] the redistributor whose RD frame is at `rd_frame`.
///
/// # Errors
///
/// As [`enable_lpis_on`].
///
/// # Safety
///
/// `rd_frame` is a redistributor's RD frame, identity mapped as Device memory (as for [`Mmio::new`]),
/// and the tables `propbaser` and `pendbaser` name are memory given to the GIC for good (as from a
/// [`TableMemory`]).
pub unsafe fn enable_lpis(rd_frame: u64, propbaser: u64, pendbaser: u64) -> Result<Coherency, ItsError> {
    // SAFETY: our caller's promise about `rd_frame`.
    let mut rd = unsafe { Mmio::new(rd_frame) };
    enable_lpis_on(&mut rd, propbaser, pendbaser)
}

/// Programs one redistributor's LPI tables (`GICR_PROPBASER` and `GICR_PENDBASER`, values from
/// [`LpiTables`]) and sets `GICR_CTLR.EnableLPIs`. `rd` is the CPU's RD frame.
///
/// # Errors
///
/// [`ItsError::NoPhysicalLpis`] if `GICR_TYPER.PLPIS` is 0, [`ItsError::LpisAlreadyEnabled`] if
/// EnableLPIs is already 1 (the tables cannot be reprogrammed then), [`ItsError::LpiEnableFailed`] if
/// it does not read back as 1.
pub fn enable_lpis_on(rd: &mut impl Registers, propbaser: u64, pendbaser: u64) -> Result<Coherency, ItsError> {
    if rd.read64(GICR_TYPER) & GICR_TYPER_PLPIS == 0 {
        return Err(ItsError::NoPhysicalLpis);
    }
    if rd.read32(GICR_CTLR) & GICR_CTLR_ENABLE_LPIS != 0 {
        return Err(ItsError::LpisAlreadyEnabled);
    }
    let mut coherency = Coherency::Shareable;
    for (offset, value) in [(GICR_PROPBASER, propbaser), (GICR_PENDBASER, pendbaser)] {
        rd.write64(offset, value);
        if shareability(value) != attr::NON_SHAREABLE && shareability(rd.read64(offset)) == attr::NON_SHAREABLE {
            coherency = Coherency::NonShareable;
            rd.write64(offset, (value & !XBASER_ATTRS) | xbaser_attrs(attr::NON_CACHEABLE, attr::NON_SHAREABLE));
        }
    }
    rd.memory_barrier();
    let ctlr = rd.read32(GICR_CTLR);
    rd.write32(GICR_CTLR, ctlr | GICR_CTLR_ENABLE_LPIS);
    if rd.read32(GICR_CTLR) & GICR_CTLR_ENABLE_LPIS == 0 {
        return Err(ItsError::LpiEnableFailed);
    }
    Ok(coherency)
}
