//! The emulated ITS (GICv3 Interrupt Translation Service, IHI 0069 chapters
//! 5 and 6) one VM sees: its registers, command queue and translation
//! tables, as plain logic. The caller holds the lock, gives guest memory
//! through [`GuestMemory`] and applies the returned [`Effect`]s to the vGIC.
//!
//! Choices the architecture leaves to the implementation:
//! - Device, collection and interrupt translation tables are kept in host
//!   memory. Their in-memory formats are IMPLEMENTATION DEFINED, so the
//!   memory the guest gives through `GITS_BASER0` (devices), `GITS_BASER1`
//!   (collections) and MAPD's ITT address is never written, and a guest
//!   cannot corrupt or grow our state beyond the bounds below. The one
//!   architected format, the level-1 entries of an indirect device table,
//!   is read (at MAPD) to see whether the DeviceID has a level-2 table.
//! - `GITS_BASER<n>.Page_Size` resets to 64 KiB (as on QEMU and KVM) and
//!   takes 4, 16 or 64 KiB; the tables are sized in the page size chosen.
//!   Only the device table can be Indirect.
//! - `GITS_TYPER.HCC` is 0 with a collection table in `GITS_BASER1` (Linux
//!   then needs no other path for more vCPUs than held collections).
//! - `GITS_TYPER.PTA` is 0: MAPC and SYNC name a vCPU index
//!   (`GICR_TYPER.Processor_Number`).
//! - A command with bad parameters is dropped and counted, and the queue
//!   goes on. A command that cannot be read from guest memory, or a
//!   `GITS_CWRITER` beyond the queue, stalls the queue (`GITS_CREADR.Stalled`)
//!   until `GITS_CWRITER.Retry` or a `GITS_CBASER` write.
//! - Commands complete within the `GITS_CWRITER` write, so SYNC only checks
//!   its target.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::budget::Share;
use super::{GIC_IIDR, MAX_VCPUS};
use ferrovisor_shared::gic::PIDR2_ARCHREV_SHIFT;

pub use ferrovisor_shared::gic::LPI_BASE;
use ferrovisor_shared::its::{
    field, gits_baser, BASER_ENTRY_SIZE_SHIFT, BASER_INDIRECT, BASER_INNER_CACHE_SHIFT, BASER_OUTER_CACHE_SHIFT,
    BASER_PAGE_SIZE_SHIFT, BASER_SHAREABILITY_SHIFT, BASER_SIZE, BASER_TYPE_SHIFT, BASER_VALID,
    CBASER_INNER_CACHE_SHIFT, CBASER_OUTER_CACHE_SHIFT, CBASER_PA, CBASER_SHAREABILITY_SHIFT, CBASER_SIZE,
    CBASER_VALID, COMMAND_BYTES, CQ_OFFSET, CREADR_STALLED, CTLR_ENABLED, CTLR_QUIESCENT, CWRITER_RETRY, OP_CLEAR,
    OP_DISCARD, OP_INT, OP_INV, OP_INVALL, OP_MAPC, OP_MAPD, OP_MAPI, OP_MAPTI, OP_MOVALL, OP_MOVI, OP_SYNC,
};
pub use ferrovisor_shared::its::{
    GITS_BASER0, GITS_CBASER, GITS_CREADR, GITS_CTLR, GITS_CWRITER, GITS_PIDR2, GITS_TYPER,
};
#[cfg(test)]
pub use ferrovisor_shared::its::{GITS_IIDR, GITS_TRANSLATER};

/// The collection table's register.
pub const GITS_BASER1: usize = gits_baser(1);
/// Both frames (control and translation).
pub const ITS_SIZE: u64 = 0x2_0000;

/// DeviceID width (`GITS_TYPER.Devbits` + 1).
pub const DEVICE_ID_BITS: u32 = 16;
/// EventID width (`GITS_TYPER.IDbits` + 1), the largest MAPD Size + 1.
pub const EVENT_ID_BITS: u32 = 16;
/// ICID width (`GITS_TYPER.CIDbits` + 1, with CIL == 1).
pub const ICID_BITS: u32 = 8;
/// Most devices mapped at once: a bound on host memory, below 2^Devbits.
pub const MAX_DEVICES: usize = 4096;
/// Most events mapped at once over all devices: a bound on host memory.
pub const MAX_ITES: usize = 1 << 16;
/// Bytes per entry reported for ITTs, device and collection tables.
const ENTRY_SIZE: u64 = 8;
/// A level-1 entry of an indirect table: Valid [63], PA of one page of
/// level-2 entries [51:N] (IHI 0069, `GITS_BASER<n>.Indirect`).
const LEVEL1_ENTRY_SIZE: u64 = 8;
const LEVEL1_VALID: u64 = 1 << 63;
const COMMAND_SIZE: u64 = COMMAND_BYTES as u64;

/// Valid, InnerCache, OuterCache, Physical_Address[51:12], Shareability, Size.
const CBASER_RW: u64 = CBASER_VALID
    | 7 << CBASER_INNER_CACHE_SHIFT
    | 7 << CBASER_OUTER_CACHE_SHIFT
    | CBASER_PA
    | 3 << CBASER_SHAREABILITY_SHIFT
    | CBASER_SIZE;

/// Valid, InnerCache, OuterCache, Physical_Address[47:12] (with 64 KiB
/// pages [15:12] hold PA[51:48]), Shareability, Page_Size, Size. Indirect
/// (a two-level table) is writable for the device table only.
const BASER_RW: u64 = BASER_VALID
    | 7 << BASER_INNER_CACHE_SHIFT
    | 7 << BASER_OUTER_CACHE_SHIFT
    | field(47, 12)
    | 3 << BASER_SHAREABILITY_SHIFT
    | BASER_PAGE_SIZE
    | BASER_SIZE;
const BASER_PAGE_SIZE: u64 = 3 << BASER_PAGE_SIZE_SHIFT;
/// Page_Size 0b10. Also the reset value, as on QEMU's and KVM's ITS
/// (KVM's is fixed at 64 KiB).
const BASER_PAGE_64K: u64 = 2 << BASER_PAGE_SIZE_SHIFT;
const BASER_TYPE_DEVICES: u64 = 1;
const BASER_TYPE_COLLECTIONS: u64 = 4;

/// A [`decode`] failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The command number (DW0 bits [7:0]) is none we implement (VMAPP,
    /// VSYNC... or reserved).
    Unknown(u8),
}

/// One ITS command, fields named as in IHI 0069 §6.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Clear {
        device_id: u32,
        event_id: u32,
    },
    Discard {
        device_id: u32,
        event_id: u32,
    },
    Int {
        device_id: u32,
        event_id: u32,
    },
    Inv {
        device_id: u32,
        event_id: u32,
    },
    Invall {
        icid: u16,
    },
    /// `rdbase` is the target vCPU index (PTA == 0).
    Mapc {
        icid: u16,
        rdbase: u64,
        valid: bool,
    },
    /// `size` is the EventID width minus one; `itt_addr` keeps bits [51:8].
    Mapd {
        device_id: u32,
        size: u8,
        itt_addr: u64,
        valid: bool,
    },
    Mapi {
        device_id: u32,
        event_id: u32,
        icid: u16,
    },
    Mapti {
        device_id: u32,
        event_id: u32,
        pintid: u32,
        icid: u16,
    },
    /// The pending LPIs of redistributor `from` move to `to` (vCPU indices).
    Movall {
        from: u64,
        to: u64,
    },
    Movi {
        device_id: u32,
        event_id: u32,
        icid: u16,
    },
    Sync {
        rdbase: u64,
    },
}

/// Decodes one command (four little-endian doublewords DW0..DW3). Reserved
/// fields are ignored.
///
/// # Errors
///
/// [`CommandError::Unknown`] for a command number we do not implement.
pub fn decode(cmd: &[u64; 4]) -> Result<Command, CommandError> {
    let [dw0, dw1, dw2, dw3] = *cmd;
    let device_id = (dw0 >> 32) as u32;
    let event_id = dw1 as u32;
    let icid = dw2 as u16;
    let rdbase = (dw2 & field(51, 16)) >> 16;
    let valid = dw2 & (1 << 63) != 0;
    Ok(match dw0 as u8 {
        OP_MOVI => Command::Movi { device_id, event_id, icid },
        OP_INT => Command::Int { device_id, event_id },
        OP_CLEAR => Command::Clear { device_id, event_id },
        OP_SYNC => Command::Sync { rdbase },
        OP_MAPD => Command::Mapd { device_id, size: (dw1 & 0x1f) as u8, itt_addr: dw2 & field(51, 8), valid },
        OP_MAPC => Command::Mapc { icid, rdbase, valid },
        OP_MAPTI => Command::Mapti { device_id, event_id, pintid: (dw1 >> 32) as u32, icid },
        OP_MAPI => Command::Mapi { device_id, event_id, icid },
        OP_INV => Command::Inv { device_id, event_id },
        OP_INVALL => Command::Invall { icid },
        OP_DISCARD => Command::Discard { device_id, event_id },
        OP_MOVALL => Command::Movall { from: rdbase, to: (dw3 & field(51, 16)) >> 16 },
        other => return Err(CommandError::Unknown(other)),
    })
}

/// The guest's memory as the ITS reaches it (by IPA).
#[allow(clippy::result_unit_err, reason = "the only failure is \"not guest memory\"")]
pub trait GuestMemory {
    /// Fills `buf` from guest memory at `ipa`.
    ///
    /// # Errors
    ///
    /// Any byte of `ipa..ipa + buf.len()` is not guest RAM.
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), ()>;
    /// Writes `buf` to guest memory at `ipa`.
    ///
    /// # Errors
    ///
    /// Any byte of `ipa..ipa + buf.len()` is not guest RAM.
    fn write(&self, ipa: u64, buf: &[u8]) -> Result<(), ()>;
}

/// What the vGIC must do after a command or translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    SetPending {
        vcpu: usize,
        intid: u32,
    },
    ClearPending {
        vcpu: usize,
        intid: u32,
    },
    /// The LPI now belongs to `to`; a pending state moves with it.
    Move {
        intid: u32,
        from: usize,
        to: usize,
    },
    /// Re-read the LPI's configuration (priority, enable) from memory.
    Invalidate {
        vcpu: usize,
        intid: u32,
    },
    /// Re-read the configuration of every LPI of `vcpu`.
    InvalidateAll {
        vcpu: usize,
    },
    /// Every LPI of `from` now belongs to `to`, its pending state with it
    /// (`MOVALL`).
    MoveAll {
        from: usize,
        to: usize,
    },
}

/// Why a command was dropped or the queue stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    UnknownCommand,
    /// DeviceID beyond Devbits or the device table (`GITS_BASER0`).
    DeviceOutOfRange,
    /// MAPD of a DeviceID whose level-1 entry (indirect device table) is
    /// not Valid or not in guest memory.
    NoLevel2Table,
    UnmappedDevice,
    /// EventID beyond the device's MAPD Size, or a MAPD Size beyond IDbits.
    EventOutOfRange,
    UnmappedEvent,
    /// ICID beyond CIDbits or the collection table (`GITS_BASER1`).
    BadCollection,
    UnmappedCollection,
    /// pINTID not an LPI this VM has.
    BadIntid,
    /// MAPC or SYNC naming no vCPU.
    BadTarget,
    /// [`MAX_DEVICES`] or [`MAX_ITES`] reached.
    TableFull,
    /// The VM's share of the host's interrupt state is all in use
    /// (`budget::Share`).
    ShareSpent,
    /// A command could not be read from guest memory (the queue stalled).
    QueueOutsideMemory,
    /// `GITS_CWRITER` beyond the queue (the queue stalled).
    WriterOutOfRange,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::UnknownCommand,
        DropReason::DeviceOutOfRange,
        DropReason::NoLevel2Table,
        DropReason::UnmappedDevice,
        DropReason::EventOutOfRange,
        DropReason::UnmappedEvent,
        DropReason::BadCollection,
        DropReason::UnmappedCollection,
        DropReason::BadIntid,
        DropReason::BadTarget,
        DropReason::TableFull,
        DropReason::ShareSpent,
        DropReason::QueueOutsideMemory,
        DropReason::WriterOutOfRange,
    ];
}

/// An ITS configuration that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItsError {
    BadVcpuCount(usize),
    /// LPI INTID width outside 14..=32.
    BadLpiIdBits(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ite {
    intid: u32,
    icid: u16,
}

#[derive(Debug)]
struct Device {
    event_bits: u32,
    events: BTreeMap<u32, Ite>,
}

/// One VM's ITS.
#[derive(Debug)]
pub struct Its {
    nr_vcpus: usize,
    lpi_id_bits: u32,
    enabled: bool,
    cbaser: u64,
    /// Byte offsets into the queue, multiples of 32, `creadr` < queue size.
    cwriter: u64,
    creadr: u64,
    stalled: bool,
    baser: [u64; 2],
    devices: BTreeMap<u32, Device>,
    /// ICID -> vCPU.
    collections: Vec<Option<usize>>,
    nr_ites: usize,
    drops: [u64; DropReason::ALL.len()],
    /// Effects of the last buffered write.
    scratch: Vec<Effect>,
    /// What devices and ITEs are charged to: the VM's share of the host's.
    budget: Arc<Share>,
}

impl Drop for Its {
    fn drop(&mut self) {
        self.budget.give(self.nr_ites + self.devices.len());
    }
}

impl Its {
    /// An ITS for `nr_vcpus` vCPUs whose LPIs are INTIDs
    /// `LPI_BASE..1 << lpi_id_bits` (`GICD_TYPER.IDbits` + 1).
    ///
    /// # Errors
    ///
    /// [`ItsError::BadVcpuCount`] for 0 or more than [`MAX_VCPUS`] vCPUs,
    /// [`ItsError::BadLpiIdBits`] for an INTID width outside 14..=32.
    pub fn new(nr_vcpus: usize, lpi_id_bits: u32) -> Result<Its, ItsError> {
        Self::with_share(nr_vcpus, lpi_id_bits, Share::unlimited())
    }

    /// [`Its::new`], its devices and translations charged to `share`.
    ///
    /// # Errors
    /// As [`Its::new`].
    pub fn with_share(nr_vcpus: usize, lpi_id_bits: u32, share: Arc<Share>) -> Result<Its, ItsError> {
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
            return Err(ItsError::BadVcpuCount(nr_vcpus));
        }
        if !(14..=32).contains(&lpi_id_bits) {
            return Err(ItsError::BadLpiIdBits(lpi_id_bits));
        }
        let baser_ro =
            |kind: u64| (kind << BASER_TYPE_SHIFT) | ((ENTRY_SIZE - 1) << BASER_ENTRY_SIZE_SHIFT) | BASER_PAGE_64K;
        Ok(Its {
            nr_vcpus,
            lpi_id_bits,
            enabled: false,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            stalled: false,
            baser: [baser_ro(BASER_TYPE_DEVICES), baser_ro(BASER_TYPE_COLLECTIONS)],
            devices: BTreeMap::new(),
            collections: alloc::vec![None; 1 << ICID_BITS],
            nr_ites: 0,
            drops: [0; DropReason::ALL.len()],
            scratch: Vec::new(),
            budget: share,
        })
    }

    /// Back to the state after [`Its::new`] (a VM reset); the drop counts stay.
    pub fn reset(&mut self) {
        if let Ok(mut fresh) = Its::with_share(self.nr_vcpus, self.lpi_id_bits, self.budget.clone()) {
            fresh.drops = self.drops;
            // The old state's entries go back to the budget as it is dropped.
            *self = fresh;
        }
    }

    /// The entries of the VM's share its devices and translations draw on.
    pub fn share_entries(&self) -> usize {
        self.budget.translation_entries()
    }

    /// Commands dropped (or stalls) for `reason` since creation.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn typer() -> u64 {
        let physical = 1;
        let itt_entry_size = (ENTRY_SIZE - 1) << 4;
        let id_bits = u64::from(EVENT_ID_BITS - 1) << 8;
        let devbits = u64::from(DEVICE_ID_BITS - 1) << 13;
        let cid_bits = u64::from(ICID_BITS - 1) << 32;
        let cil = 1 << 36;
        physical | itt_entry_size | id_bits | devbits | cid_bits | cil
    }

    /// A guest read of `size` (4 or 8) bytes at `offset` into the ITS frames;
    /// RAZ for anything else.
    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            return 0;
        }
        let word = self.reg64((offset & !7) as usize) >> ((offset & 4) * 8);
        if size == 4 {
            word & 0xffff_ffff
        } else {
            word
        }
    }

    /// A guest write of `size` (4 or 8) bytes at `offset` into the ITS
    /// frames: processes the command queue when the write asks for it and
    /// returns what the vGIC must do. Writes to `GITS_TRANSLATER` are ignored
    /// here: the DeviceID comes from the device model, which calls
    /// [`Its::translate`].
    pub fn mmio_write<M: GuestMemory + ?Sized>(&mut self, mem: &M, offset: u64, size: u8, value: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.write_into(mem, offset, size, value, &mut effects);
        effects
    }

    /// [`Its::mmio_write`] into a buffer the ITS keeps, sparing an
    /// allocation on every command-queue write (the path of a guest `INT`).
    pub fn mmio_write_buffered<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        offset: u64,
        size: u8,
        value: u64,
    ) -> &[Effect] {
        let mut effects = core::mem::take(&mut self.scratch);
        effects.clear();
        self.write_into(mem, offset, size, value, &mut effects);
        self.scratch = effects;
        &self.scratch
    }

    fn write_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        offset: u64,
        size: u8,
        value: u64,
        effects: &mut Vec<Effect>,
    ) {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            return;
        }
        let aligned = (offset & !7) as usize;
        let (shift, mask) = if size == 4 { ((offset & 4) * 8, 0xffff_ffffu64) } else { (0, u64::MAX) };
        let old = self.reg64(aligned);
        let new = (old & !(mask << shift)) | ((value & mask) << shift);
        match aligned {
            GITS_CTLR => {
                let was = self.enabled;
                self.enabled = new & u64::from(CTLR_ENABLED) != 0;
                if self.enabled && !was {
                    self.process(mem, effects);
                }
            }
            GITS_CBASER if !self.enabled => {
                self.cbaser = new & CBASER_RW;
                self.creadr = 0;
                self.cwriter = 0;
                self.stalled = false;
            }
            GITS_CWRITER => {
                self.cwriter = new & CQ_OFFSET;
                if new & CWRITER_RETRY != 0 {
                    self.stalled = false;
                }
                self.process(mem, effects);
            }
            GITS_BASER0 | GITS_BASER1 if !self.enabled => {
                let n = (aligned - GITS_BASER0) / 8;
                // The collection table (256 entries of 8 bytes) always fits
                // one page: Indirect is RAZ/WI there, as on KVM.
                let rw = if aligned == GITS_BASER0 { BASER_RW | BASER_INDIRECT } else { BASER_RW };
                let mut value = (self.baser[n] & !rw) | (new & rw);
                // IHI 0069, `GITS_BASER<n>.Page_Size`: 0b11 is reserved and treated
                // as 0b10; it reads back as what it is treated as (KVM's
                // read-back too), so the guest sees the size in use.
                if value & BASER_PAGE_SIZE == BASER_PAGE_SIZE {
                    value = (value & !BASER_PAGE_SIZE) | BASER_PAGE_64K;
                }
                self.baser[n] = value;
            }
            _ => {}
        }
    }

    fn reg64(&self, aligned: usize) -> u64 {
        match aligned {
            GITS_CTLR => {
                let quiescent = if self.enabled { 0 } else { u64::from(CTLR_QUIESCENT) };
                u64::from(self.enabled) | quiescent | (u64::from(GIC_IIDR) << 32)
            }
            GITS_TYPER => Its::typer(),
            GITS_CBASER => self.cbaser,
            GITS_CWRITER => self.cwriter,
            GITS_CREADR => self.creadr | if self.stalled { CREADR_STALLED } else { 0 },
            GITS_BASER0 => self.baser[0],
            GITS_BASER1 => self.baser[1],
            // BASER2..7 are RAZ/WI (Type 0, unimplemented).
            GITS_PIDR2 => 3 << PIDR2_ARCHREV_SHIFT,
            _ => 0,
        }
    }

    /// The vCPU and LPI a write of `event_id` to `GITS_TRANSLATER` by
    /// device `device_id` makes pending; `None` (the write is ignored) when
    /// the ITS is disabled or the event, its device or its collection is not
    /// mapped.
    pub fn translate(&self, device_id: u32, event_id: u32) -> Option<(usize, u32)> {
        if !self.enabled {
            return None;
        }
        let ite = self.ite(device_id, event_id).ok()?;
        Some((self.target(ite.icid).ok()?, ite.intid))
    }

    fn count(&mut self, reason: DropReason) {
        let n = &mut self.drops[reason as usize];
        *n = n.saturating_add(1);
    }

    fn queue_size(&self) -> u64 {
        ((self.cbaser & 0xff) + 1) * 4096
    }

    /// Runs the commands between `GITS_CREADR` and `GITS_CWRITER`. Ends:
    /// each step moves `creadr` one command nearer `cwriter`, both being
    /// 32-byte aligned and inside the queue.
    fn process<M: GuestMemory + ?Sized>(&mut self, mem: &M, effects: &mut Vec<Effect>) {
        if !self.enabled || self.stalled || self.cbaser & CBASER_VALID == 0 {
            return;
        }
        let size = self.queue_size();
        if self.cwriter >= size {
            self.stalled = true;
            self.count(DropReason::WriterOutOfRange);
            return;
        }
        let base = self.cbaser & CBASER_PA;
        while self.creadr != self.cwriter {
            let mut raw = [0u8; COMMAND_SIZE as usize];
            if mem.read(base + self.creadr, &mut raw).is_err() {
                self.stalled = true;
                self.count(DropReason::QueueOutsideMemory);
                return;
            }
            let mut words = [0u64; 4];
            for (word, bytes) in words.iter_mut().zip(raw.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(bytes);
                *word = u64::from_le_bytes(b);
            }
            let result = match decode(&words) {
                Ok(cmd) => self.execute(mem, cmd, effects),
                Err(CommandError::Unknown(_)) => Err(DropReason::UnknownCommand),
            };
            if let Err(reason) = result {
                self.count(reason);
            }
            self.creadr = (self.creadr + COMMAND_SIZE) % size;
        }
    }

    /// Bytes per page of a `GITS_BASER<n>` value (Page_Size; 0b11 cannot
    /// be stored, and would be treated as 64 KiB).
    fn page_bytes(baser: u64) -> u64 {
        match (baser >> 8) & 3 {
            0 => 0x1000,
            1 => 0x4000,
            _ => 0x1_0000,
        }
    }

    /// IDs a table described by a `GITS_BASER<n>` value covers: (Size + 1)
    /// pages of entries when flat; when Indirect, (Size + 1) pages of 8-byte
    /// level-1 entries, each naming one page of entries (IHI 0069, `GITS_BASER<n>.Indirect`).
    fn table_entries(baser: u64) -> u64 {
        if baser & BASER_VALID == 0 {
            return 0;
        }
        let page = Its::page_bytes(baser);
        let pages = (baser & 0xff) + 1;
        if baser & BASER_INDIRECT != 0 {
            pages * (page / LEVEL1_ENTRY_SIZE) * (page / ENTRY_SIZE)
        } else {
            pages * page / ENTRY_SIZE
        }
    }

    /// With an indirect device table, whether the level-1 entry covering
    /// `device_id` is Valid in guest memory (an entry outside guest memory
    /// is not). Always true for a flat table.
    fn level2_valid<M: GuestMemory + ?Sized>(&self, mem: &M, device_id: u32) -> bool {
        let baser = self.baser[0];
        if baser & BASER_INDIRECT == 0 {
            return true;
        }
        let page = Its::page_bytes(baser);
        // 64 KiB pages keep PA[51:48] in bits [15:12].
        let base = if page == 0x1_0000 {
            (baser & field(47, 16)) | ((baser & field(15, 12)) << 36)
        } else {
            baser & field(47, 12)
        };
        let index = u64::from(device_id) / (page / ENTRY_SIZE);
        let Some(ipa) = base.checked_add(index * LEVEL1_ENTRY_SIZE) else { return false };
        let mut entry = [0u8; LEVEL1_ENTRY_SIZE as usize];
        mem.read(ipa, &mut entry).is_ok() && u64::from_le_bytes(entry) & LEVEL1_VALID != 0
    }

    fn ite(&self, device_id: u32, event_id: u32) -> Result<Ite, DropReason> {
        let device = self.devices.get(&device_id).ok_or(DropReason::UnmappedDevice)?;
        if u64::from(event_id) >> device.event_bits != 0 {
            return Err(DropReason::EventOutOfRange);
        }
        device.events.get(&event_id).copied().ok_or(DropReason::UnmappedEvent)
    }

    fn check_icid(&self, icid: u16) -> Result<(), DropReason> {
        if usize::from(icid) >= self.collections.len() || u64::from(icid) >= Its::table_entries(self.baser[1]) {
            return Err(DropReason::BadCollection);
        }
        Ok(())
    }

    fn target(&self, icid: u16) -> Result<usize, DropReason> {
        self.check_icid(icid)?;
        self.collections[usize::from(icid)].ok_or(DropReason::UnmappedCollection)
    }

    fn execute<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        cmd: Command,
        effects: &mut Vec<Effect>,
    ) -> Result<(), DropReason> {
        match cmd {
            Command::Mapd { device_id, size, itt_addr: _, valid } => {
                let limit = Its::table_entries(self.baser[0]).min(1 << DEVICE_ID_BITS);
                if u64::from(device_id) >= limit {
                    return Err(DropReason::DeviceOutOfRange);
                }
                // Unmapping needs no level-2 table: only new mappings are checked.
                if valid && !self.level2_valid(mem, device_id) {
                    return Err(DropReason::NoLevel2Table);
                }
                let event_bits = u32::from(size) + 1;
                if valid && event_bits > EVENT_ID_BITS {
                    return Err(DropReason::EventOutOfRange);
                }
                let exists = self.devices.contains_key(&device_id);
                if valid && !exists {
                    if self.devices.len() >= MAX_DEVICES {
                        return Err(DropReason::TableFull);
                    }
                    if !self.budget.take(1) {
                        return Err(DropReason::ShareSpent);
                    }
                }
                // A new ITT (or none) replaces the old one: its LPIs stop being pending.
                if let Some(old) = self.devices.remove(&device_id) {
                    self.nr_ites -= old.events.len();
                    self.budget.give(old.events.len() + usize::from(!valid));
                    for ite in old.events.values() {
                        if let Ok(vcpu) = self.target(ite.icid) {
                            effects.push(Effect::ClearPending { vcpu, intid: ite.intid });
                        }
                    }
                }
                if valid {
                    self.devices.insert(device_id, Device { event_bits, events: BTreeMap::new() });
                }
            }
            Command::Mapc { icid, rdbase, valid } => {
                self.check_icid(icid)?;
                let vcpu = if valid {
                    match usize::try_from(rdbase) {
                        Ok(v) if v < self.nr_vcpus => Some(v),
                        _ => return Err(DropReason::BadTarget),
                    }
                } else {
                    None
                };
                self.collections[usize::from(icid)] = vcpu;
            }
            Command::Mapi { device_id, event_id, icid } => self.map(device_id, event_id, event_id, icid)?,
            Command::Mapti { device_id, event_id, pintid, icid } => self.map(device_id, event_id, pintid, icid)?,
            Command::Movi { device_id, event_id, icid } => {
                let ite = self.ite(device_id, event_id)?;
                let to = self.target(icid)?;
                if let Ok(from) = self.target(ite.icid) {
                    if from != to {
                        effects.push(Effect::Move { intid: ite.intid, from, to });
                    }
                }
                if let Some(e) = self.devices.get_mut(&device_id).and_then(|d| d.events.get_mut(&event_id)) {
                    e.icid = icid;
                }
            }
            Command::Discard { device_id, event_id } => {
                let ite = self.ite(device_id, event_id)?;
                let vcpu = self.target(ite.icid)?;
                if let Some(d) = self.devices.get_mut(&device_id) {
                    d.events.remove(&event_id);
                    self.nr_ites -= 1;
                    self.budget.give(1);
                }
                effects.push(Effect::ClearPending { vcpu, intid: ite.intid });
            }
            Command::Int { device_id, event_id } => {
                let ite = self.ite(device_id, event_id)?;
                effects.push(Effect::SetPending { vcpu: self.target(ite.icid)?, intid: ite.intid });
            }
            Command::Clear { device_id, event_id } => {
                let ite = self.ite(device_id, event_id)?;
                effects.push(Effect::ClearPending { vcpu: self.target(ite.icid)?, intid: ite.intid });
            }
            Command::Inv { device_id, event_id } => {
                let ite = self.ite(device_id, event_id)?;
                effects.push(Effect::Invalidate { vcpu: self.target(ite.icid)?, intid: ite.intid });
            }
            Command::Invall { icid } => effects.push(Effect::InvalidateAll { vcpu: self.target(icid)? }),
            Command::Movall { from, to } => {
                let vcpu = |rd: u64| usize::try_from(rd).ok().filter(|&v| v < self.nr_vcpus);
                let (Some(from), Some(to)) = (vcpu(from), vcpu(to)) else { return Err(DropReason::BadTarget) };
                if from != to {
                    effects.push(Effect::MoveAll { from, to });
                }
            }
            Command::Sync { rdbase } => {
                if rdbase >= self.nr_vcpus as u64 {
                    return Err(DropReason::BadTarget);
                }
            }
        }
        Ok(())
    }

    /// MAPTI (and MAPI with `intid` == `event_id`). Mapping a mapped event
    /// again replaces its translation.
    fn map(&mut self, device_id: u32, event_id: u32, intid: u32, icid: u16) -> Result<(), DropReason> {
        let device = self.devices.get(&device_id).ok_or(DropReason::UnmappedDevice)?;
        if u64::from(event_id) >> device.event_bits != 0 {
            return Err(DropReason::EventOutOfRange);
        }
        self.check_icid(icid)?;
        if intid < LPI_BASE || u64::from(intid) >> self.lpi_id_bits != 0 {
            return Err(DropReason::BadIntid);
        }
        let new = !device.events.contains_key(&event_id);
        if new {
            if self.nr_ites >= MAX_ITES {
                return Err(DropReason::TableFull);
            }
            if !self.budget.take(1) {
                return Err(DropReason::ShareSpent);
            }
        }
        if let Some(d) = self.devices.get_mut(&device_id) {
            d.events.insert(event_id, Ite { intid, icid });
            if new {
                self.nr_ites += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use core::cell::RefCell;
    use ferrovisor_shared::its::Command as Cmd;

    const QUEUE: u64 = 0x8000_0000;
    const RAM_SIZE: u64 = 0x2_0000;

    /// Fake guest RAM of `size` bytes at IPA `base` (also the vGIC's LPI tests').
    pub(in crate::gic::vgic) struct Ram {
        base: u64,
        bytes: RefCell<Vec<u8>>,
    }

    impl Ram {
        pub(in crate::gic::vgic) fn at(base: u64, size: u64) -> Ram {
            Ram { base, bytes: RefCell::new(alloc::vec![0; size as usize]) }
        }
        fn new() -> Ram {
            Ram::at(QUEUE, RAM_SIZE)
        }
        fn range(&self, ipa: u64, len: usize) -> Result<core::ops::Range<usize>, ()> {
            let start = ipa.checked_sub(self.base).ok_or(())?;
            let end = start.checked_add(len as u64).ok_or(())?;
            if end > self.bytes.borrow().len() as u64 {
                return Err(());
            }
            Ok(start as usize..end as usize)
        }
    }

    impl GuestMemory for Ram {
        fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), ()> {
            let r = self.range(ipa, buf.len())?;
            buf.copy_from_slice(&self.bytes.borrow()[r]);
            Ok(())
        }
        fn write(&self, ipa: u64, buf: &[u8]) -> Result<(), ()> {
            let r = self.range(ipa, buf.len())?;
            self.bytes.borrow_mut()[r].copy_from_slice(buf);
            Ok(())
        }
    }

    // The shared encoders (`ferrovisor_shared::its::Command`), as the raw doublewords the queue holds, with the
    // argument order the tests below were written in. `mapd` takes the Size field (EventID bits - 1), `mapc`
    // the RDbase field (here a vCPU index, as the emulated ITS has PTA = 0).
    pub(in crate::gic::vgic) fn mapd(dev: u32, size: u8, itt: u64, v: bool) -> [u64; 4] {
        Cmd::mapd(dev, itt, size + 1, v).0
    }
    pub(in crate::gic::vgic) fn mapc(icid: u16, vcpu: u64, v: bool) -> [u64; 4] {
        Cmd::mapc(icid, vcpu, v).0
    }
    pub(in crate::gic::vgic) fn mapti(dev: u32, ev: u32, intid: u32, icid: u16) -> [u64; 4] {
        Cmd::mapti(dev, ev, intid, icid).0
    }
    pub(in crate::gic::vgic) fn mapi(dev: u32, ev: u32, icid: u16) -> [u64; 4] {
        Cmd::mapi(dev, ev, icid).0
    }
    pub(in crate::gic::vgic) fn movi(dev: u32, ev: u32, icid: u16) -> [u64; 4] {
        Cmd::movi(dev, ev, icid).0
    }
    pub(in crate::gic::vgic) fn int(dev: u32, ev: u32) -> [u64; 4] {
        Cmd::int(dev, ev).0
    }
    pub(in crate::gic::vgic) fn clear(dev: u32, ev: u32) -> [u64; 4] {
        Cmd::clear(dev, ev).0
    }
    pub(in crate::gic::vgic) fn inv(dev: u32, ev: u32) -> [u64; 4] {
        Cmd::inv(dev, ev).0
    }
    pub(in crate::gic::vgic) fn invall(icid: u16) -> [u64; 4] {
        Cmd::invall(icid).0
    }
    pub(in crate::gic::vgic) fn discard(dev: u32, ev: u32) -> [u64; 4] {
        Cmd::discard(dev, ev).0
    }

    struct Vm {
        its: Its,
        ram: Ram,
    }

    impl Vm {
        /// 4 vCPUs, 16-bit LPI INTIDs, a one-page queue at QUEUE, device and
        /// collection tables of one 4 KiB page (512 entries), enabled.
        fn new() -> Vm {
            Self::with(Its::new(4, 16).unwrap())
        }
        /// As `new`, with `its`.
        fn with(its: Its) -> Vm {
            let mut vm = Vm { its, ram: Ram::new() };
            assert!(vm.write(GITS_CBASER as u64, 8, CBASER_VALID | QUEUE).is_empty());
            vm.write(GITS_BASER0 as u64, 8, BASER_VALID | 0x9000_0000);
            vm.write(GITS_BASER1 as u64, 8, BASER_VALID | 0x9100_0000);
            vm.write(GITS_CTLR as u64, 4, 1);
            vm
        }
        /// Through the buffered write the hypervisor uses.
        fn write(&mut self, off: u64, size: u8, value: u64) -> Vec<Effect> {
            self.its.mmio_write_buffered(&self.ram, off, size, value).to_vec()
        }
        /// Puts `cmds` at CWRITER and moves CWRITER past them.
        fn run(&mut self, cmds: &[[u64; 4]]) -> Vec<Effect> {
            let size = self.its.queue_size();
            let mut w = self.its.mmio_read(GITS_CWRITER as u64, 8);
            for cmd in cmds {
                // The random test may have moved the queue out of RAM.
                let base = self.its.cbaser & CBASER_PA;
                for (i, word) in cmd.iter().enumerate() {
                    let _ = self.ram.write(base + w + 8 * i as u64, &word.to_le_bytes());
                }
                w = (w + 32) % size;
            }
            self.write(GITS_CWRITER as u64, 8, w)
        }
    }

    #[test]
    fn buffered_and_plain_writes_agree() {
        let cmds = [mapd(5, 3, 0, true), mapc(2, 3, true), mapti(5, 7, 8200, 2), int(5, 7), movi(5, 7, 2)];
        let (mut a, mut b) = (Vm::new(), Vm::new());
        let buffered = a.run(&cmds);
        for (n, cmd) in cmds.iter().enumerate() {
            for (i, word) in cmd.iter().enumerate() {
                let _ = b.ram.write(QUEUE + 32 * n as u64 + 8 * i as u64, &word.to_le_bytes());
            }
        }
        // `b` goes through the plain write, from its own queue copy.
        let plain = b.its.mmio_write(&b.ram, GITS_CWRITER as u64, 8, 5 * 32);
        assert_eq!(buffered, plain);
        assert!(!plain.is_empty());
    }

    #[test]
    fn a_spent_share_refuses_new_devices_and_entries_and_gets_them_back() {
        static HOST: super::super::budget::Budget = super::super::budget::Budget::new();
        HOST.set_limit(4);
        // Three for devices and translations, one for LPIs.
        let share = Share::reserve(&HOST, 4).unwrap();
        let mut vm = Vm::with(Its::with_share(4, 16, share.clone()).unwrap());
        vm.run(&[mapd(1, 3, 0, true), mapd(2, 3, 0, true), mapc(0, 0, true), mapti(1, 0, 8192, 0)]);
        assert_eq!(share.used(), (3, 0));
        vm.run(&[mapti(1, 1, 8193, 0), mapd(3, 3, 0, true)]);
        assert_eq!(vm.its.drops(DropReason::ShareSpent), 2);
        assert_eq!(vm.its.drops(DropReason::TableFull), 0, "the table itself has room");
        // Remapping a device keeps its unit, its entries go back.
        vm.run(&[mapd(1, 3, 0, true)]);
        assert_eq!(share.used(), (2, 0));
        vm.run(&[mapd(2, 3, 0, false)]);
        assert_eq!(share.used(), (1, 0));
        vm.its.reset();
        assert_eq!(share.used(), (0, 0), "reset gives everything back");
        vm.run(&[mapd(1, 3, 0, true)]);
        drop(vm);
        assert_eq!(share.used(), (0, 0), "so does the end of the VM");
        assert_eq!(HOST.used(), 4, "the share stays reserved while it lives");
        drop(share);
        assert_eq!(HOST.used(), 0);
    }

    #[test]
    fn decodes_each_command() {
        assert_eq!(
            decode(&mapd(0x1234_5678, 15, 0x000f_ffff_ffff_ff00, true)),
            Ok(Command::Mapd { device_id: 0x1234_5678, size: 15, itt_addr: 0x000f_ffff_ffff_ff00, valid: true })
        );
        // Bits outside ITT_addr [51:8] and Size [4:0] are not part of them.
        assert_eq!(
            decode(&[0x08, 0xffff_ffff_ffff_ffe3, 0x7ff0_0000_0000_00ff, 0]),
            Ok(Command::Mapd { device_id: 0, size: 3, itt_addr: 0, valid: false })
        );
        assert_eq!(decode(&mapc(0xbeef, 63, true)), Ok(Command::Mapc { icid: 0xbeef, rdbase: 63, valid: true }));
        assert_eq!(
            decode(&[0x09, 0, 0x000f_ffff_ffff_0000, 0]),
            Ok(Command::Mapc { icid: 0, rdbase: 0xf_ffff_ffff, valid: false })
        );
        assert_eq!(
            decode(&mapti(7, 0xdead_beef, 0x2000, 9)),
            Ok(Command::Mapti { device_id: 7, event_id: 0xdead_beef, pintid: 0x2000, icid: 9 })
        );
        assert_eq!(decode(&mapi(7, 8, 9)), Ok(Command::Mapi { device_id: 7, event_id: 8, icid: 9 }));
        assert_eq!(decode(&movi(1, 2, 3)), Ok(Command::Movi { device_id: 1, event_id: 2, icid: 3 }));
        assert_eq!(decode(&discard(1, 2)), Ok(Command::Discard { device_id: 1, event_id: 2 }));
        assert_eq!(decode(&int(u32::MAX, 5)), Ok(Command::Int { device_id: u32::MAX, event_id: 5 }));
        assert_eq!(decode(&clear(1, 2)), Ok(Command::Clear { device_id: 1, event_id: 2 }));
        assert_eq!(decode(&inv(1, 2)), Ok(Command::Inv { device_id: 1, event_id: 2 }));
        assert_eq!(decode(&[0x0d, 0, 0xffff_ffff_ffff_0042, 0]), Ok(Command::Invall { icid: 0x42 }));
        assert_eq!(decode(&[0x05, 0, 3 << 16 | 0xffff, 0]), Ok(Command::Sync { rdbase: 3 }));
        assert_eq!(decode(&[0x0e, 0, 2 << 16 | 0xffff, 3 << 16 | 0xffff]), Ok(Command::Movall { from: 2, to: 3 }));
        for unknown in [0x00, 0x02, 0x06, 0x07, 0x10, 0x29, 0xff] {
            assert_eq!(decode(&[unknown, 0, 0, 0]), Err(CommandError::Unknown(unknown as u8)));
        }
    }

    #[test]
    fn registers() {
        let mut vm = Vm { its: Its::new(2, 16).unwrap(), ram: Ram::new() };
        let its = &vm.its;
        assert_eq!(its.mmio_read(GITS_CTLR as u64, 4), u64::from(CTLR_QUIESCENT));
        assert_eq!(its.mmio_read(GITS_IIDR as u64, 4), u64::from(GIC_IIDR));
        let typer = its.mmio_read(GITS_TYPER as u64, 8);
        assert_eq!(typer & 1, 1, "Physical");
        assert_eq!((typer >> 4) & 0xf, 7, "ITT_entry_size");
        assert_eq!((typer >> 8) & 0x1f, 15, "IDbits");
        assert_eq!((typer >> 13) & 0x1f, 15, "Devbits");
        assert_eq!((typer >> 19) & 1, 0, "PTA");
        assert_eq!((typer >> 24) & 0xff, 0, "HCC");
        assert_eq!((typer >> 32) & 0xf, 7, "CIDbits");
        assert_eq!((typer >> 36) & 1, 1, "CIL");
        assert_eq!(its.mmio_read(GITS_TYPER as u64 + 4, 4), typer >> 32);
        assert_eq!(its.mmio_read(GITS_PIDR2 as u64, 4), 0x30);
        assert_eq!(its.mmio_read(GITS_BASER0 as u64, 8), 1 << 56 | 7 << 48 | BASER_PAGE_64K);
        assert_eq!(its.mmio_read(GITS_BASER1 as u64, 8), 4 << 56 | 7 << 48 | BASER_PAGE_64K);
        assert_eq!(its.mmio_read(GITS_BASER0 as u64 + 16, 8), 0);
        // RO fields keep their values; RW ones take the write, Page_Size 0b11 reads as 0b10.
        vm.write(GITS_BASER0 as u64, 8, u64::MAX);
        let rw_64k = (BASER_RW & !BASER_PAGE_SIZE) | BASER_PAGE_64K;
        assert_eq!(vm.its.mmio_read(GITS_BASER0 as u64, 8), rw_64k | BASER_INDIRECT | 1 << 56 | 7 << 48);
        vm.write(GITS_BASER1 as u64, 8, u64::MAX);
        assert_eq!(vm.its.mmio_read(GITS_BASER1 as u64, 8), rw_64k | 4 << 56 | 7 << 48, "no Indirect collections");
        vm.write(GITS_BASER0 as u64 + 4, 4, 0);
        assert_eq!(vm.its.mmio_read(GITS_BASER0 as u64, 8), 0xffff_feff | 1 << 56 | 7 << 48);
        vm.write(GITS_CBASER as u64, 8, u64::MAX);
        assert_eq!(vm.its.mmio_read(GITS_CBASER as u64, 8), CBASER_RW);
        vm.write(GITS_CREADR as u64, 8, 0x40);
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 0);
        vm.write(GITS_CTLR as u64, 4, 1);
        assert_eq!(vm.its.mmio_read(GITS_CTLR as u64, 4), 1);
        // CBASER and BASERs are frozen while enabled.
        vm.write(GITS_CBASER as u64, 8, 0);
        assert_eq!(vm.its.mmio_read(GITS_CBASER as u64, 8), CBASER_RW);
        // Misaligned or odd sizes: RAZ/WI.
        assert_eq!(vm.its.mmio_read(GITS_TYPER as u64 + 2, 4), 0);
        assert_eq!(vm.its.mmio_read(GITS_TYPER as u64, 2), 0);
        assert!(Its::new(0, 16).is_err() && Its::new(65, 16).is_err() && Its::new(1, 13).is_err());
    }

    #[test]
    fn movall_moves_one_redistributors_lpis() {
        let mut vm = Vm::new();
        let e = vm.run(&[[0x0e, 0, 1 << 16, 2 << 16], [0x0e, 0, 2 << 16, 2 << 16]]);
        assert_eq!(e, [Effect::MoveAll { from: 1, to: 2 }], "a move to itself does nothing");
        assert_eq!(DropReason::ALL.iter().map(|&r| vm.its.drops(r)).sum::<u64>(), 0);
    }

    #[test]
    fn mapped_event_interrupts_its_vcpu() {
        let mut vm = Vm::new();
        let e = vm.run(&[mapd(5, 3, 0x9200_0000, true), mapc(2, 3, true), mapti(5, 7, 8200, 2), int(5, 7)]);
        assert_eq!(e, [Effect::SetPending { vcpu: 3, intid: 8200 }]);
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 4 * 32);
        assert_eq!(vm.its.translate(5, 7), Some((3, 8200)));
        assert_eq!(vm.its.translate(5, 6), None);
        assert_eq!(vm.its.translate(6, 7), None);
        // MAPI: the EventID is the LPI.
        let e = vm.run(&[
            mapd(6, 15, 0, true),
            mapi(6, 8300, 2),
            int(6, 8300),
            clear(6, 8300),
            inv(6, 8300),
            invall(2),
            [0x05, 0, 3 << 16, 0],
        ]);
        assert_eq!(
            e,
            [
                Effect::SetPending { vcpu: 3, intid: 8300 },
                Effect::ClearPending { vcpu: 3, intid: 8300 },
                Effect::Invalidate { vcpu: 3, intid: 8300 },
                Effect::InvalidateAll { vcpu: 3 },
            ]
        );
        assert_eq!(DropReason::ALL.iter().map(|&r| vm.its.drops(r)).sum::<u64>(), 0);
        // An EventID below 8192 is no LPI for MAPI.
        assert!(vm.run(&[mapi(5, 9, 2), int(5, 9)]).is_empty());
        assert_eq!(vm.its.drops(DropReason::BadIntid), 1);
        assert_eq!(vm.its.drops(DropReason::UnmappedEvent), 1);
        vm.write(GITS_CTLR as u64, 4, 0);
        assert_eq!(vm.its.translate(5, 7), None, "disabled");
    }

    #[test]
    fn discard_then_int_gives_nothing() {
        let mut vm = Vm::new();
        vm.run(&[mapd(1, 4, 0, true), mapc(0, 1, true), mapti(1, 2, 9000, 0)]);
        assert_eq!(vm.run(&[discard(1, 2)]), [Effect::ClearPending { vcpu: 1, intid: 9000 }]);
        assert!(vm.run(&[int(1, 2)]).is_empty());
        assert_eq!(vm.its.drops(DropReason::UnmappedEvent), 1);
        assert_eq!(vm.its.translate(1, 2), None);
        assert_eq!(vm.its.nr_ites, 0);
    }

    #[test]
    fn movi_moves() {
        let mut vm = Vm::new();
        vm.run(&[mapd(1, 4, 0, true), mapc(0, 0, true), mapc(1, 2, true), mapti(1, 3, 8192, 0)]);
        assert_eq!(vm.run(&[movi(1, 3, 1)]), [Effect::Move { intid: 8192, from: 0, to: 2 }]);
        assert_eq!(vm.its.translate(1, 3), Some((2, 8192)));
        assert_eq!(vm.run(&[int(1, 3)]), [Effect::SetPending { vcpu: 2, intid: 8192 }]);
        // To an unmapped collection: dropped, mapping unchanged.
        assert!(vm.run(&[movi(1, 3, 5)]).is_empty());
        assert_eq!(vm.its.drops(DropReason::UnmappedCollection), 1);
        assert_eq!(vm.its.translate(1, 3), Some((2, 8192)));
    }

    #[test]
    fn bad_commands_are_dropped_and_counted() {
        let mut vm = Vm::new();
        let e = vm.run(&[
            int(1, 0),               // unmapped device
            mapd(512, 0, 0, true),   // beyond the one-page device table
            mapd(1, 16, 0, true),    // 17 EventID bits
            mapd(1, 1, 0, true),     // events 0..4
            mapti(1, 4, 8192, 0),    // event out of range
            mapti(1, 3, 8191, 0),    // not an LPI
            mapti(1, 3, 1 << 16, 0), // beyond 16 INTID bits
            mapti(1, 3, 8192, 256),  // ICID beyond CIDbits
            mapc(0, 4, true),        // no vCPU 4
            mapti(1, 3, 8192, 0),    // fine
            int(1, 3),               // collection 0 unmapped
            [0x05, 0, 9 << 16, 0],   // SYNC to no vCPU
            [0x0e, 0, 0, 9 << 16],   // MOVALL to no vCPU
            int(1, 2),               // unmapped event
        ]);
        assert!(e.is_empty());
        let expect = [
            (DropReason::UnmappedDevice, 1),
            (DropReason::DeviceOutOfRange, 1),
            (DropReason::EventOutOfRange, 2),
            (DropReason::BadIntid, 2),
            (DropReason::BadCollection, 1),
            (DropReason::BadTarget, 3),
            (DropReason::UnmappedCollection, 1),
            (DropReason::UnknownCommand, 0),
            (DropReason::UnmappedEvent, 1),
        ];
        for (reason, n) in expect {
            assert_eq!(vm.its.drops(reason), n, "{reason:?}");
        }
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 14 * 32, "the queue went on");
        // Unmapping the device clears its pending LPIs once the collection is mapped.
        vm.run(&[mapc(0, 1, true)]);
        assert_eq!(vm.run(&[mapd(1, 0, 0, false)]), [Effect::ClearPending { vcpu: 1, intid: 8192 }]);
        assert!(vm.run(&[int(1, 3)]).is_empty());
        assert_eq!(vm.its.drops(DropReason::UnmappedDevice), 2);
    }

    #[test]
    fn queue_wraps_around() {
        let mut vm = Vm::new();
        vm.run(&[mapd(1, 15, 0, true), mapc(0, 1, true)]);
        for ev in 0..125 {
            vm.run(&[mapti(1, ev, 8192 + ev, 0)]);
        }
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 4096 - 32);
        let e = vm.run(&[int(1, 0), int(1, 1), int(1, 124)]);
        assert_eq!(
            e,
            [
                Effect::SetPending { vcpu: 1, intid: 8192 },
                Effect::SetPending { vcpu: 1, intid: 8193 },
                Effect::SetPending { vcpu: 1, intid: 8192 + 124 },
            ]
        );
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 64);
    }

    #[test]
    fn queue_outside_memory_stalls() {
        let mut vm = Vm { its: Its::new(1, 16).unwrap(), ram: Ram::new() };
        // 32 pages from the last queue page: only the first 32 are RAM.
        vm.write(GITS_CBASER as u64, 8, CBASER_VALID | (QUEUE + RAM_SIZE - 0x1000) | 31);
        vm.write(GITS_CTLR as u64, 4, 1);
        vm.write(GITS_CWRITER as u64, 8, 0x2000);
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 0x1000 | CREADR_STALLED);
        assert_eq!(vm.its.drops(DropReason::QueueOutsideMemory), 1);
        assert_eq!(vm.its.drops(DropReason::UnknownCommand), 128, "zeroes in the RAM page");
        // Stays stalled until Retry, which stalls again at the same place.
        vm.write(GITS_CWRITER as u64, 8, 0x2000);
        assert_eq!(vm.its.drops(DropReason::QueueOutsideMemory), 1);
        vm.write(GITS_CWRITER as u64, 8, 0x2000 | CWRITER_RETRY);
        assert_eq!(vm.its.drops(DropReason::QueueOutsideMemory), 2);
        // CWRITER beyond the queue stalls too.
        let mut vm = Vm::new();
        vm.write(GITS_CWRITER as u64, 8, 0x1000);
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), CREADR_STALLED);
        assert_eq!(vm.its.drops(DropReason::WriterOutOfRange), 1);
        // A disabled ITS runs nothing; enabling it runs the queue.
        let mut vm = Vm::new();
        vm.write(GITS_CTLR as u64, 4, 0);
        assert!(vm.run(&[mapd(1, 0, 0, true), mapc(0, 0, true), mapti(1, 0, 8192, 0), int(1, 0)]).is_empty());
        assert_eq!(vm.its.mmio_read(GITS_CREADR as u64, 8), 0);
        assert_eq!(vm.write(GITS_CTLR as u64, 4, 1), [Effect::SetPending { vcpu: 0, intid: 8192 }]);
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Cmd([u64; 4]),
            Write { off: u64, size: u8, value: u64 },
        }

        fn command() -> impl Strategy<Value = [u64; 4]> {
            prop_oneof![any::<[u64; 4]>(), small_command()]
        }

        /// Implemented commands (the mapping ones most), or any number up to
        /// 0x11, on a few
        /// devices, events, LPIs, collections and vCPUs, so that sequences map
        /// and then use them.
        fn small_command() -> impl Strategy<Value = [u64; 4]> {
            let op = prop_oneof![
                2 => prop::sample::select(&[OP_MAPD, OP_MAPC, OP_MAPTI, OP_MAPI][..]).prop_map(u64::from),
                2 => prop::sample::select(
                    &[OP_MOVI, OP_INT, OP_CLEAR, OP_SYNC, OP_INV, OP_INVALL, OP_MOVALL, OP_DISCARD][..]
                )
                .prop_map(u64::from),
                1 => 0u64..0x12,
            ];
            (op, 0u64..4, 0u64..8, 8190u64..8200, 0u64..5, 0u64..20, 0u64..6, any::<bool>()).prop_map(
                |(op, dev, ev, intid, icid, size, rd, v)| {
                    [op | dev << 32, ev | intid << 32 | size, icid | rd << 16 | u64::from(v) << 63, 0]
                },
            )
        }

        fn op() -> impl Strategy<Value = Op> {
            let off = prop_oneof![
                Just(GITS_CTLR as u64),
                Just(GITS_CBASER as u64),
                Just(GITS_CBASER as u64 + 4),
                Just(GITS_CWRITER as u64),
                Just(GITS_CREADR as u64),
                Just(GITS_BASER0 as u64),
                Just(GITS_BASER1 as u64),
                0u64..ITS_SIZE,
            ];
            let value = prop_oneof![any::<u64>(), (0u64..0x1000).prop_map(|v| v & !0x1e), Just(CBASER_VALID | QUEUE)];
            prop_oneof![
                4 => command().prop_map(Op::Cmd),
                1 => (off, prop_oneof![Just(4u8), Just(8u8), any::<u8>()], value)
                    .prop_map(|(off, size, value)| Op::Write { off, size, value }),
            ]
        }

        /// Guest memory that counts what the ITS does with it.
        struct Counting<'a> {
            ram: &'a Ram,
            reads: core::cell::Cell<usize>,
            writes: core::cell::Cell<usize>,
        }

        impl GuestMemory for Counting<'_> {
            fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), ()> {
                self.reads.set(self.reads.get() + 1);
                self.ram.read(ipa, buf)
            }
            fn write(&self, ipa: u64, buf: &[u8]) -> Result<(), ()> {
                self.writes.set(self.writes.get() + 1);
                self.ram.write(ipa, buf)
            }
        }

        /// A guest programming the ITS from scratch: any register writes
        /// (queues and tables inside, across the end of, or far outside its
        /// RAM, any sizes, Indirect device tables), words anywhere in RAM
        /// (commands, level-1 entries), commands at `GITS_CWRITER`.
        #[derive(Clone, Debug)]
        enum Step {
            Write { off: u64, size: u8, value: u64 },
            Poke { at: u64, words: [u64; 4] },
            Cmd([u64; 4]),
        }

        fn step() -> impl Strategy<Value = Step> {
            let off = prop_oneof![
                Just(GITS_CTLR as u64),
                Just(GITS_CBASER as u64),
                Just(GITS_CBASER as u64 + 4),
                Just(GITS_CWRITER as u64),
                Just(GITS_CWRITER as u64 + 4),
                Just(GITS_BASER0 as u64),
                Just(GITS_BASER0 as u64 + 4),
                Just(GITS_BASER1 as u64),
                0u64..ITS_SIZE,
            ];
            // Addresses: in RAM, its last pages, just past it, or anywhere.
            let pa = prop_oneof![
                (0u64..RAM_SIZE / 0x1000).prop_map(|p| QUEUE + p * 0x1000),
                Just(QUEUE + RAM_SIZE - 0x1000),
                Just(QUEUE + RAM_SIZE),
                any::<u64>().prop_map(|a| a & CBASER_PA),
            ];
            let baser_bits =
                (any::<bool>(), 0u64..4, 0u64..0x100, any::<bool>()).prop_map(|(indirect, page, size, valid)| {
                    u64::from(indirect) << 62 | page << 8 | size | u64::from(valid) << 63
                });
            let value = prop_oneof![
                2 => (pa.clone(), 0u64..0x100, any::<bool>())
                    .prop_map(|(pa, size, valid)| pa | size | u64::from(valid) << 63),
                2 => (pa, baser_bits).prop_map(|(pa, bits)| (pa & field(47, 16)) | bits),
                2 => (0u64..0x200).prop_map(|w| w << 5 | w & 1),
                1 => (0u64..0x8000).prop_map(|w| w << 5),
                1 => 0u64..4,
                2 => any::<u64>(),
            ];
            prop_oneof![
                3 => (off, prop_oneof![4 => Just(8u8), 2 => Just(4u8), 1 => any::<u8>()], value)
                    .prop_map(|(off, size, value)| Step::Write { off, size, value }),
                1 => (0u64..RAM_SIZE / 32, any::<[u64; 4]>(), any::<bool>()).prop_map(|(slot, mut words, valid)| {
                    // Half of them look like valid level-1 entries.
                    if valid {
                        words = words.map(|w| w | LEVEL1_VALID);
                    }
                    Step::Poke { at: QUEUE + slot * 32, words }
                }),
                6 => small_command().prop_map(Step::Cmd),
                2 => any::<[u64; 4]>().prop_map(Step::Cmd),
            ]
        }
        proptest! {
            #![proptest_config(crate::fuzz::config(256))]

            #[test]
            fn decode_never_panics(cmd in any::<[u64; 4]>()) {
                let _ = decode(&cmd);
            }

            #[test]
            fn random_commands_and_writes(ops in proptest::collection::vec(op(), 1..64)) {
                let mut vm = Vm::new();
                for op in ops {
                    let effects = match op {
                        Op::Cmd(cmd) => vm.run(&[cmd]),
                        Op::Write { off, size, value } => vm.write(off, size, value),
                    };
                    let its = &vm.its;
                    let size = ((its.mmio_read(GITS_CBASER as u64, 8) & 0xff) + 1) * 4096;
                    let creadr = its.mmio_read(GITS_CREADR as u64, 8);
                    prop_assert!(creadr & CQ_OFFSET < size && creadr & !(CQ_OFFSET | CREADR_STALLED) == 0);
                    for e in effects {
                        let vcpus = match e {
                            Effect::SetPending { vcpu, intid }
                            | Effect::ClearPending { vcpu, intid }
                            | Effect::Invalidate { vcpu, intid } => {
                                prop_assert!((LPI_BASE..1 << 16).contains(&intid));
                                [vcpu, vcpu]
                            }
                            Effect::Move { from, to, .. } | Effect::MoveAll { from, to } => [from, to],
                            Effect::InvalidateAll { vcpu } => [vcpu, vcpu],
                        };
                        prop_assert!(vcpus.iter().all(|&v| v < 4));
                    }
                    let ites: usize = its.devices.values().map(|d| d.events.len()).sum();
                    prop_assert_eq!(ites, its.nr_ites);
                }
            }

            /// However the ITS is programmed, no panic, and: one `GITS_CWRITER`
            /// write reads guest memory at most twice per queue slot (the
            /// command, and a level-1 entry for a MAPD) and never writes it;
            /// `GITS_CREADR` stays a slot inside the queue; each command run is
            /// done or counted at most once, an unknown one exactly once
            /// (IHI 0069 §6.3: the ITS may drop a command it cannot run, and
            /// goes on); effects name vCPUs and LPIs that exist.
            #[test]
            fn any_programming_is_bounded_work_and_reports_its_errors(
                setup in proptest::option::of((0u64..4, any::<bool>(), 0u64..3, 0u64..RAM_SIZE / 0x1_0000)),
                steps in proptest::collection::vec(step(), 1..48),
            ) {
                let ram = Ram::new();
                let mut its = Its::new(4, 16).unwrap();
                // Often a guest that sets the ITS up as a driver does first: a
                // queue of 1-4 pages in RAM, a device table (flat or indirect,
                // its level-1 table in RAM), a collection table, then Enabled.
                if let Some((pages, indirect, page_size, l1)) = setup {
                    let table = QUEUE + l1 * 0x1_0000;
                    its.mmio_write(&ram, GITS_CBASER as u64, 8, CBASER_VALID | QUEUE | pages);
                    let baser0 = BASER_VALID | u64::from(indirect) << 62 | page_size << 8 | table;
                    its.mmio_write(&ram, GITS_BASER0 as u64, 8, baser0);
                    its.mmio_write(&ram, GITS_BASER1 as u64, 8, BASER_VALID | 0x9100_0000);
                    its.mmio_write(&ram, GITS_CTLR as u64, 4, 1);
                }
                for step in steps {
                    let (off, size, value) = match step {
                        Step::Poke { at, words } => {
                            for (i, w) in words.iter().enumerate() {
                                ram.write(at + 8 * i as u64, &w.to_le_bytes()).unwrap();
                            }
                            continue;
                        }
                        Step::Cmd(words) => {
                            let base = its.cbaser & CBASER_PA;
                            let w = its.cwriter;
                            for (i, word) in words.iter().enumerate() {
                                let _ = ram.write(base + w + 8 * i as u64, &word.to_le_bytes());
                            }
                            (GITS_CWRITER as u64, 8, (w + 32) % its.queue_size())
                        }
                        Step::Write { off, size, value } => (off, size, value),
                    };
                    let mem = Counting { ram: &ram, reads: Default::default(), writes: Default::default() };
                    let (creadr, drops) = (its.creadr, its.drops);
                    let effects = its.mmio_write(&mem, off, size, value);
                    let queue = its.queue_size();
                    prop_assert!(mem.reads.get() as u64 <= 2 * queue / COMMAND_SIZE, "{} reads", mem.reads.get());
                    prop_assert_eq!(mem.writes.get(), 0, "the ITS wrote guest memory");
                    prop_assert!(its.creadr < queue && its.creadr.is_multiple_of(COMMAND_SIZE));
                    for e in &effects {
                        let vcpus = match *e {
                            Effect::SetPending { vcpu, intid }
                            | Effect::ClearPending { vcpu, intid }
                            | Effect::Invalidate { vcpu, intid } => {
                                prop_assert!((LPI_BASE..1 << 16).contains(&intid));
                                [vcpu, vcpu]
                            }
                            Effect::Move { from, to, intid } => {
                                prop_assert!((LPI_BASE..1 << 16).contains(&intid));
                                [from, to]
                            }
                            Effect::MoveAll { from, to } => [from, to],
                            Effect::InvalidateAll { vcpu } => [vcpu, vcpu],
                        };
                        prop_assert!(vcpus.iter().all(|&v| v < 4));
                    }
                    // A CBASER write moves CREADR back to 0 and runs nothing.
                    if (off & !7) as usize == GITS_CBASER {
                        prop_assert!(effects.is_empty());
                        continue;
                    }
                    let run = (its.creadr + queue - creadr) % queue / COMMAND_SIZE;
                    let base = its.cbaser & CBASER_PA;
                    let mut unknown = 0;
                    for slot in 0..run {
                        let mut raw = [0u8; COMMAND_SIZE as usize];
                        ram.read(base + (creadr + slot * COMMAND_SIZE) % queue, &mut raw).unwrap();
                        let words: [u64; 4] = core::array::from_fn(|i| {
                            u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().unwrap())
                        });
                        unknown += u64::from(decode(&words).is_err());
                    }
                    let delta = |r: DropReason| its.drops(r) - drops[r as usize];
                    prop_assert_eq!(delta(DropReason::UnknownCommand), unknown);
                    let stalls = [DropReason::QueueOutsideMemory, DropReason::WriterOutOfRange];
                    let dropped: u64 = DropReason::ALL.iter().filter(|r| !stalls.contains(r)).map(|&r| delta(r)).sum();
                    prop_assert!(dropped <= run, "{} drops for {} commands", dropped, run);
                    prop_assert!(stalls.iter().map(|&r| delta(r)).sum::<u64>() <= 1, "one stall per write at most");
                }
            }
        }
    }
}
