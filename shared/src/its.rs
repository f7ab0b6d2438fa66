//! The GICv3/v4.0 ITS as the architecture defines it (IHI 0069): the `GITS_*` registers (§12.19), the
//! redistributors' LPI registers (`GICR_*`, §12.11) and the ITS commands (§6.3), as plain values. No
//! hardware access here: the host's physical ITS driver and the test guests' ITS driver both build on it.

// ---- Fields ------------------------------------------------------------------------------------

/// Bits `hi` down to `lo` set.
pub const fn field(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Bits `hi` down to `lo` of `value`, shifted down to bit 0.
pub const fn extract(value: u64, hi: u32, lo: u32) -> u64 {
    (value & field(hi, lo)) >> lo
}

// ---- ITS control frame -------------------------------------------------------------------------

pub const GITS_CTLR: usize = 0x0000;
pub const GITS_IIDR: usize = 0x0004;
pub const GITS_TYPER: usize = 0x0008;
pub const GITS_CBASER: usize = 0x0080;
pub const GITS_CWRITER: usize = 0x0088;
pub const GITS_CREADR: usize = 0x0090;
pub const GITS_BASER0: usize = 0x0100;
/// Peripheral ID2: `ArchRev` in bits [7:4] (3 for GICv3, 4 for GICv4).
pub const GITS_PIDR2: usize = 0xffe8;
/// In the translation frame, 64 KiB above the control frame.
pub const GITS_TRANSLATER: usize = 0x1_0040;
/// `GITS_BASER0` to `GITS_BASER7`.
pub const GITS_BASER_COUNT: usize = 8;

/// Offset of `GITS_BASER<n>`.
pub const fn gits_baser(n: usize) -> usize {
    GITS_BASER0 + 8 * n
}

pub const CTLR_ENABLED: u32 = 1 << 0;
pub const CTLR_QUIESCENT: u32 = 1 << 31;

/// `GITS_IIDR` fields.
pub const fn iidr_implementer(iidr: u32) -> u32 {
    iidr & 0xfff
}
pub const fn iidr_product_id(iidr: u32) -> u32 {
    iidr >> 24
}

pub const TYPER_PHYSICAL: u64 = 1 << 0;
pub const TYPER_VIRTUAL: u64 = 1 << 1;
pub const TYPER_CCT: u64 = 1 << 2;
pub const TYPER_SEIS: u64 = 1 << 18;
pub const TYPER_PTA: u64 = 1 << 19;
pub const TYPER_CIL: u64 = 1 << 36;
pub const TYPER_VMOVP: u64 = 1 << 37;
/// GICv4.1 only (RES0 on GICv4.0 and GICv3).
pub const TYPER_VSGI: u64 = 1 << 39;

/// `GITS_TYPER`, decoded. Widths are in bits and sizes in bytes (the register holds them minus one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItsTyper {
    /// Physical LPIs supported (`Physical`).
    pub physical: bool,
    /// Virtual LPIs and the GICv4 commands supported (`Virtual`, bit 1).
    pub virtual_lpis: bool,
    /// Bytes per ITT entry (`ITT_entry_size` + 1).
    pub itt_entry_size: u8,
    /// EventID width (`IDbits` + 1).
    pub id_bits: u8,
    /// DeviceID width (`Devbits` + 1).
    pub dev_bits: u8,
    /// Target addresses (RDbase) are physical addresses (`PTA` = 1) rather than processor numbers.
    pub pta: bool,
    /// Collections held in the ITS itself, needing no memory (`HCC`).
    pub hcc: u8,
    /// ICID width (`CIDbits` + 1 when `CIL` is 1, else 16).
    pub cid_bits: u8,
    /// VMOVP needs no ITSList or sequence number (`VMOVP`).
    pub vmovp: bool,
    /// The raw register, for fields not decoded here.
    pub raw: u64,
}

impl ItsTyper {
    /// Decodes every field of `GITS_TYPER` as it is, checking nothing.
    pub const fn from_bits(raw: u64) -> ItsTyper {
        let cid_bits = if raw & TYPER_CIL != 0 { extract(raw, 35, 32) as u8 + 1 } else { 16 };
        ItsTyper {
            physical: raw & TYPER_PHYSICAL != 0,
            virtual_lpis: raw & TYPER_VIRTUAL != 0,
            itt_entry_size: extract(raw, 7, 4) as u8 + 1,
            id_bits: extract(raw, 12, 8) as u8 + 1,
            dev_bits: extract(raw, 17, 13) as u8 + 1,
            pta: raw & TYPER_PTA != 0,
            hcc: extract(raw, 31, 24) as u8,
            cid_bits,
            vmovp: raw & TYPER_VMOVP != 0,
            raw,
        }
    }

    /// Decodes `GITS_TYPER` of an ITS a driver can use.
    ///
    /// # Errors
    ///
    /// [`TyperError::NoPhysicalLpis`] if `Physical` is 0 (the ITS does not translate to physical LPIs),
    /// [`TyperError::BadField`] if `ITT_entry_size` is below the 3 bytes any ITT entry needs.
    pub const fn decode(raw: u64) -> Result<ItsTyper, TyperError> {
        let typer = ItsTyper::from_bits(raw);
        if !typer.physical {
            return Err(TyperError::NoPhysicalLpis);
        }
        if typer.itt_entry_size < 3 {
            return Err(TyperError::BadField { field: "ITT_entry_size", value: typer.itt_entry_size as u64 - 1 });
        }
        Ok(typer)
    }
}

/// Why [`ItsTyper::decode`] refused a `GITS_TYPER` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TyperError {
    /// `Physical` is 0.
    NoPhysicalLpis,
    /// A field no ITS can have: its name and its raw value.
    BadField { field: &'static str, value: u64 },
}

/// Memory attribute encodings shared by `GITS_CBASER`, `GITS_BASER<n>` and the `GICR_*BASER` registers.
pub mod attr {
    /// Cacheability: Normal Inner (or Outer) Non-cacheable.
    pub const NON_CACHEABLE: u64 = 0b001;
    /// Cacheability: Normal Write-back, read-allocate, write-allocate.
    pub const WB_RAWA: u64 = 0b111;
    /// Outer cacheability: the same as the inner.
    pub const SAME_AS_INNER: u64 = 0b000;
    /// Shareability: Non-shareable.
    pub const NON_SHAREABLE: u64 = 0b00;
    /// Shareability: Inner Shareable.
    pub const INNER_SHAREABLE: u64 = 0b01;
}

// GITS_CBASER: Valid 63, InnerCache [61:59], OuterCache [55:53], Physical_Address [51:12],
// Shareability [11:10], Size [7:0] (4 KiB pages - 1).
pub const CBASER_VALID: u64 = 1 << 63;
pub const CBASER_INNER_CACHE_SHIFT: u32 = 59;
pub const CBASER_OUTER_CACHE_SHIFT: u32 = 53;
pub const CBASER_PA: u64 = field(51, 12);
pub const CBASER_SHAREABILITY_SHIFT: u32 = 10;
pub const CBASER_SIZE: u64 = field(7, 0);
/// The command queue's page size, the unit of `GITS_CBASER.Size`.
pub const CBASER_PAGE: usize = 4096;

/// `GITS_CBASER` for a queue of `bytes` (a multiple of 4 KiB, at most 1 MiB) at `pa`.
pub const fn cbaser(pa: u64, bytes: usize, inner_cache: u64, shareability: u64) -> u64 {
    CBASER_VALID
        | (inner_cache & 7) << CBASER_INNER_CACHE_SHIFT
        | attr::SAME_AS_INNER << CBASER_OUTER_CACHE_SHIFT
        | (pa & CBASER_PA)
        | (shareability & 3) << CBASER_SHAREABILITY_SHIFT
        | ((bytes / CBASER_PAGE) as u64).saturating_sub(1) & CBASER_SIZE
}

/// Shareability field of `GITS_CBASER`, `GITS_BASER<n>`, `GICR_PROPBASER`, `GICR_PENDBASER` (all [11:10]).
pub const fn shareability(value: u64) -> u64 {
    extract(value, 11, 10)
}

// GITS_CWRITER / GITS_CREADR: Offset [19:5]; CWRITER.Retry 0, CREADR.Stalled 0.
pub const CQ_OFFSET: u64 = field(19, 5);
pub const CWRITER_RETRY: u64 = 1 << 0;
pub const CREADR_STALLED: u64 = 1 << 0;

// GITS_BASER<n>: Valid 63, Indirect 62, InnerCache [61:59], Type [58:56], OuterCache [55:53],
// Entry_Size [52:48] (bytes - 1), Physical_Address [47:12] (64 KiB pages: [47:16] = PA[47:16] and
// [15:12] = PA[51:48]), Shareability [11:10], Page_Size [9:8], Size [7:0] (pages - 1).
pub const BASER_VALID: u64 = 1 << 63;
pub const BASER_INDIRECT: u64 = 1 << 62;
pub const BASER_INNER_CACHE_SHIFT: u32 = 59;
pub const BASER_TYPE_SHIFT: u32 = 56;
pub const BASER_OUTER_CACHE_SHIFT: u32 = 53;
pub const BASER_ENTRY_SIZE_SHIFT: u32 = 48;
pub const BASER_SHAREABILITY_SHIFT: u32 = 10;
pub const BASER_PAGE_SIZE_SHIFT: u32 = 8;
pub const BASER_SIZE: u64 = field(7, 0);
/// Most pages a flat table can have (`Size` is 8 bits).
pub const BASER_MAX_PAGES: usize = 256;

/// `GITS_BASER<n>.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaserType {
    /// 0: no table.
    Unimplemented,
    /// 1: the device table.
    Devices,
    /// 2: the vPE table (GICv4).
    Vpes,
    /// 4: the collection table.
    Collections,
    /// 3, 5, 6, 7: reserved; left alone.
    Reserved(u8),
}

impl BaserType {
    pub const fn from_baser(baser: u64) -> BaserType {
        match extract(baser, 58, 56) {
            0 => BaserType::Unimplemented,
            1 => BaserType::Devices,
            2 => BaserType::Vpes,
            4 => BaserType::Collections,
            other => BaserType::Reserved(other as u8),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            BaserType::Unimplemented => "unimplemented",
            BaserType::Devices => "device",
            BaserType::Vpes => "vPE",
            BaserType::Collections => "collection",
            BaserType::Reserved(_) => "reserved",
        }
    }
}

/// `GITS_BASER<n>.Page_Size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size16K,
    Size64K,
}

impl PageSize {
    /// Smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size16K, PageSize::Size64K];

    pub const fn bytes(self) -> usize {
        match self {
            PageSize::Size4K => 0x1000,
            PageSize::Size16K => 0x4000,
            PageSize::Size64K => 0x1_0000,
        }
    }

    const fn encoding(self) -> u64 {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size16K => 1,
            PageSize::Size64K => 2,
        }
    }

    /// `None` for the reserved encoding 0b11.
    pub const fn from_baser(baser: u64) -> Option<PageSize> {
        match extract(baser, 9, 8) {
            0 => Some(PageSize::Size4K),
            1 => Some(PageSize::Size16K),
            2 => Some(PageSize::Size64K),
            _ => None,
        }
    }
}

/// Bytes per entry (`GITS_BASER<n>.Entry_Size` + 1).
pub const fn baser_entry_size(baser: u64) -> usize {
    extract(baser, 52, 48) as usize + 1
}

/// The `Physical_Address` field of `GITS_BASER<n>` for a table at `pa`, or `None` if `pa` does not fit
/// (above 48 bits for 4 KiB and 16 KiB pages, above 52 bits for 64 KiB pages) or is not page aligned.
pub const fn baser_pa_field(pa: u64, page: PageSize) -> Option<u64> {
    if !pa.is_multiple_of(page.bytes() as u64) {
        return None;
    }
    match page {
        PageSize::Size64K if pa >> 52 == 0 => Some((pa & field(47, 16)) | (extract(pa, 51, 48) << 12)),
        PageSize::Size4K | PageSize::Size16K if pa >> 48 == 0 => Some(pa & field(47, 12)),
        _ => None,
    }
}

/// The physical address a `GITS_BASER<n>` value names.
pub const fn baser_pa(baser: u64) -> u64 {
    match PageSize::from_baser(baser) {
        Some(PageSize::Size64K) => (baser & field(47, 16)) | (extract(baser, 15, 12) << 48),
        _ => baser & field(47, 12),
    }
}

/// A `GITS_BASER<n>` value: the read-only `Type` and `Entry_Size` are taken from `current`.
pub const fn baser(
    current: u64,
    valid: bool,
    pa_field: u64,
    page: PageSize,
    pages: usize,
    inner_cache: u64,
    shareability: u64,
) -> u64 {
    let keep = current & (field(58, 56) | field(52, 48));
    let valid = if valid { BASER_VALID } else { 0 };
    valid
        | keep
        | (inner_cache & 7) << BASER_INNER_CACHE_SHIFT
        | attr::SAME_AS_INNER << BASER_OUTER_CACHE_SHIFT
        | pa_field
        | (shareability & 3) << BASER_SHAREABILITY_SHIFT
        | page.encoding() << BASER_PAGE_SIZE_SHIFT
        | (pages.saturating_sub(1) as u64 & BASER_SIZE)
}

// ---- Redistributor LPI registers (offsets from a CPU's RD frame) ------------------------------

pub use crate::gic::{
    GICR_CTLR, GICR_CTLR_ENABLE_LPIS, GICR_PENDBASER, GICR_PROPBASER, GICR_TYPER, GICR_TYPER_PLPIS, GICR_TYPER_VLPIS,
};
/// The VLPI frame (GICv4): after the RD and SGI frames.
pub const GICR_VLPI_FRAME: usize = 0x2_0000;
pub const GICR_VPROPBASER: usize = GICR_VLPI_FRAME + 0x70;
pub const GICR_VPENDBASER: usize = GICR_VLPI_FRAME + 0x78;

// GICR_PROPBASER / GICR_VPROPBASER (GICv4.0): OuterCache [58:56], PA [51:12], Shareability [11:10],
// InnerCache [9:7], IDbits [4:0].
pub const PROPBASER_PA: u64 = field(51, 12);
pub const PROPBASER_ID_BITS: u64 = field(4, 0);
pub const XBASER_INNER_CACHE_SHIFT: u32 = 7;
pub const XBASER_SHAREABILITY_SHIFT: u32 = 10;
pub const XBASER_OUTER_CACHE_SHIFT: u32 = 56;

// GICR_PENDBASER / GICR_VPENDBASER: PA [51:16], PTZ 62 (PENDBASER), Valid 63, IDAI 62, PendingLast 61,
// Dirty 60 (VPENDBASER).
pub const PENDBASER_PA: u64 = field(51, 16);
pub const PENDBASER_PTZ: u64 = 1 << 62;
pub const VPENDBASER_VALID: u64 = 1 << 63;
pub const VPENDBASER_IDAI: u64 = 1 << 62;
pub const VPENDBASER_PENDING_LAST: u64 = 1 << 61;
pub const VPENDBASER_DIRTY: u64 = 1 << 60;

/// InnerCache, Shareability and OuterCache of the `GICR_*BASER` registers.
pub const XBASER_ATTRS: u64 = field(9, 7) | field(11, 10) | field(58, 56);

/// Attributes for the `GICR_*BASER` registers.
pub const fn xbaser_attrs(inner_cache: u64, shareability: u64) -> u64 {
    (inner_cache & 7) << XBASER_INNER_CACHE_SHIFT
        | (shareability & 3) << XBASER_SHAREABILITY_SHIFT
        | attr::SAME_AS_INNER << XBASER_OUTER_CACHE_SHIFT
}

/// `GICR_PROPBASER` (or GICv4.0 `GICR_VPROPBASER`) for a configuration table at `pa` (4 KiB aligned) covering
/// INTIDs of `id_bits` bits (IDbits = `id_bits` - 1), with the given attributes.
pub const fn propbaser(pa: u64, id_bits: u8, inner_cache: u64, shareability: u64) -> u64 {
    (pa & PROPBASER_PA)
        | xbaser_attrs(inner_cache, shareability)
        | (id_bits.saturating_sub(1) as u64 & PROPBASER_ID_BITS)
}

/// `GICR_PENDBASER` for a pending table at `pa` (64 KiB aligned) with the given attributes; `ptz` says the
/// table is all zeros (PTZ), so the GIC need not scan it.
pub const fn pendbaser(pa: u64, ptz: bool, inner_cache: u64, shareability: u64) -> u64 {
    let ptz = if ptz { PENDBASER_PTZ } else { 0 };
    (pa & PENDBASER_PA) | xbaser_attrs(inner_cache, shareability) | ptz
}

/// One byte of the LPI configuration table: Priority [7:2], bit 1 RES1, Enable bit 0.
pub const fn lpi_config(priority: u8, enabled: bool) -> u8 {
    (priority & 0xfc) | 0b10 | enabled as u8
}

/// `GICR_VPENDBASER`, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vpendbaser {
    pub valid: bool,
    pub idai: bool,
    pub pending_last: bool,
    pub dirty: bool,
    pub pa: u64,
}

impl Vpendbaser {
    pub const fn decode(raw: u64) -> Vpendbaser {
        Vpendbaser {
            valid: raw & VPENDBASER_VALID != 0,
            idai: raw & VPENDBASER_IDAI != 0,
            pending_last: raw & VPENDBASER_PENDING_LAST != 0,
            dirty: raw & VPENDBASER_DIRTY != 0,
            pa: raw & PENDBASER_PA,
        }
    }
}

// ---- Commands (IHI 0069 §6.3) ------------------------------------------------------------------
//
// 32 bytes, four little-endian doublewords, the opcode in DW0[7:0].
//
// Constructors take the architecture's fields as they are and mask each to its width; the caller
// checks ranges against `GITS_TYPER` (an out-of-range field is the ITS's to drop or stall on, never
// a fault here).
//
// `rdbase` arguments are the RDbase field's value, placed by the constructor at DW2[51:16]: with
// `GITS_TYPER.PTA` = 1 the RD frame's physical address shifted right by 16, with PTA = 0 the
// redistributor's processor number (`GICR_TYPER.Processor_Number`).

/// One ITS command, as written to the command queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub [u64; 4]);

pub const OP_MOVI: u8 = 0x01;
pub const OP_INT: u8 = 0x03;
pub const OP_CLEAR: u8 = 0x04;
pub const OP_SYNC: u8 = 0x05;
pub const OP_MAPD: u8 = 0x08;
pub const OP_MAPC: u8 = 0x09;
pub const OP_MAPTI: u8 = 0x0a;
pub const OP_MAPI: u8 = 0x0b;
pub const OP_INV: u8 = 0x0c;
pub const OP_INVALL: u8 = 0x0d;
pub const OP_MOVALL: u8 = 0x0e;
pub const OP_DISCARD: u8 = 0x0f;
pub const OP_VMOVI: u8 = 0x21;
pub const OP_VMOVP: u8 = 0x22;
pub const OP_VSYNC: u8 = 0x25;
pub const OP_VMAPP: u8 = 0x29;
pub const OP_VMAPTI: u8 = 0x2a;
pub const OP_VMAPI: u8 = 0x2b;
pub const OP_VINVALL: u8 = 0x2d;

/// Bytes per command.
pub const COMMAND_BYTES: usize = 32;
/// The INTID that means "no doorbell" in VMAPTI, VMAPI and VMOVI.
pub const NO_DOORBELL: u32 = 1023;

const VALID: u64 = 1 << 63;
const RDBASE_SHIFT: u32 = 16;
const RDBASE: u64 = field(51, 16);
const ITT_ADDR: u64 = field(51, 8);
const VPT_ADDR: u64 = field(51, 16);

const fn dw0(op: u8, device: u32) -> u64 {
    op as u64 | (device as u64) << 32
}

const fn rdbase_field(rdbase: u64) -> u64 {
    (rdbase << RDBASE_SHIFT) & RDBASE
}

const fn vpeid_field(vpeid: u16) -> u64 {
    (vpeid as u64) << 32
}

impl Command {
    /// The opcode, DW0[7:0].
    pub const fn opcode(&self) -> u8 {
        self.0[0] as u8
    }

    /// MAPD: map `device` to the ITT at `itt_pa` (256-byte aligned; bits [51:8] are kept) holding
    /// 2^`event_bits` events (DW1[4:0] Size = `event_bits` - 1; `event_bits` is 1 to 32).
    pub const fn mapd(device: u32, itt_pa: u64, event_bits: u8, valid: bool) -> Command {
        let size = (event_bits.wrapping_sub(1) & 0x1f) as u64;
        let v = if valid { VALID } else { 0 };
        Command([dw0(OP_MAPD, device), size, (itt_pa & ITT_ADDR) | v, 0])
    }

    /// MAPC: map collection `icid` to the redistributor `rdbase` (see the module's note on units).
    pub const fn mapc(icid: u16, rdbase: u64, valid: bool) -> Command {
        let v = if valid { VALID } else { 0 };
        Command([OP_MAPC as u64, 0, icid as u64 | rdbase_field(rdbase) | v, 0])
    }

    /// MAPTI: map (`device`, `event`) to physical LPI `pintid` in collection `icid`.
    pub const fn mapti(device: u32, event: u32, pintid: u32, icid: u16) -> Command {
        Command([dw0(OP_MAPTI, device), event as u64 | (pintid as u64) << 32, icid as u64, 0])
    }

    /// MAPI: map (`device`, `event`) to LPI INTID `event` in collection `icid`.
    pub const fn mapi(device: u32, event: u32, icid: u16) -> Command {
        Command([dw0(OP_MAPI, device), event as u64, icid as u64, 0])
    }

    const fn device_event(op: u8, device: u32, event: u32) -> Command {
        Command([dw0(op, device), event as u64, 0, 0])
    }

    /// INT: make the interrupt (`device`, `event`) translates to pending.
    pub const fn int(device: u32, event: u32) -> Command {
        Command::device_event(OP_INT, device, event)
    }

    /// CLEAR: make the interrupt (`device`, `event`) translates to not pending.
    pub const fn clear(device: u32, event: u32) -> Command {
        Command::device_event(OP_CLEAR, device, event)
    }

    /// DISCARD: clear the interrupt's pending state and unmap (`device`, `event`).
    pub const fn discard(device: u32, event: u32) -> Command {
        Command::device_event(OP_DISCARD, device, event)
    }

    /// INV: reload the configuration of the LPI (`device`, `event`) translates to.
    pub const fn inv(device: u32, event: u32) -> Command {
        Command::device_event(OP_INV, device, event)
    }

    /// MOVI: move (`device`, `event`) to collection `icid`.
    pub const fn movi(device: u32, event: u32, icid: u16) -> Command {
        Command([dw0(OP_MOVI, device), event as u64, icid as u64, 0])
    }

    /// INVALL: reload the configuration of every LPI of collection `icid`.
    pub const fn invall(icid: u16) -> Command {
        Command([OP_INVALL as u64, 0, icid as u64, 0])
    }

    /// MOVALL: move every pending LPI of redistributor `rdbase1` to `rdbase2`.
    pub const fn movall(rdbase1: u64, rdbase2: u64) -> Command {
        Command([OP_MOVALL as u64, 0, rdbase_field(rdbase1), rdbase_field(rdbase2)])
    }

    /// SYNC: complete every earlier command's effects on redistributor `rdbase`.
    pub const fn sync(rdbase: u64) -> Command {
        Command([OP_SYNC as u64, 0, rdbase_field(rdbase), 0])
    }

    /// VMAPP (GICv4.0 layout): map vPE `vpeid` to redistributor `rdbase`, its virtual LPI pending
    /// table at `vpt_pa` (64 KiB aligned; bits [51:16] are kept) covering vINTIDs of `vpt_size` + 1
    /// bits (DW3[4:0] VPT_size, the vPE's `IDbits` - 1).
    pub const fn vmapp(vpeid: u16, rdbase: u64, vpt_pa: u64, vpt_size: u8, valid: bool) -> Command {
        let v = if valid { VALID } else { 0 };
        Command([
            OP_VMAPP as u64,
            vpeid_field(vpeid),
            rdbase_field(rdbase) | v,
            (vpt_pa & VPT_ADDR) | (vpt_size & 0x1f) as u64,
        ])
    }

    /// VMAPTI: map (`device`, `event`) to virtual LPI `vintid` of vPE `vpeid`, with physical LPI
    /// `doorbell_pintid` as its doorbell ([`NO_DOORBELL`], 1023, for none).
    pub const fn vmapti(device: u32, event: u32, vpeid: u16, vintid: u32, doorbell_pintid: u32) -> Command {
        Command([
            dw0(OP_VMAPTI, device),
            event as u64 | vpeid_field(vpeid),
            vintid as u64 | (doorbell_pintid as u64) << 32,
            0,
        ])
    }

    /// VMAPI: as VMAPTI with vINTID = `event`.
    pub const fn vmapi(device: u32, event: u32, vpeid: u16, doorbell_pintid: u32) -> Command {
        Command([dw0(OP_VMAPI, device), event as u64 | vpeid_field(vpeid), (doorbell_pintid as u64) << 32, 0])
    }

    /// VMOVI: move (`device`, `event`) to vPE `vpeid`; `doorbell` sets a new doorbell LPI (DW2[0] D = 1,
    /// Dbell_pINTID at DW2[63:32]), `None` keeps the current one (D = 0).
    pub const fn vmovi(device: u32, event: u32, vpeid: u16, doorbell: Option<u32>) -> Command {
        let dw2 = match doorbell {
            Some(pintid) => 1 | (pintid as u64) << 32,
            None => 0,
        };
        Command([dw0(OP_VMOVI, device), event as u64 | vpeid_field(vpeid), dw2, 0])
    }

    /// VMOVP (GICv4.0 layout): move vPE `vpeid` to redistributor `rdbase`. `seq_num` (DW0[47:32]) and
    /// `its_list` (DW1[15:0]) matter only when `GITS_TYPER.VMOVP` is 0 and several ITSs share the vPE.
    pub const fn vmovp(vpeid: u16, rdbase: u64, seq_num: u16, its_list: u16) -> Command {
        Command([
            OP_VMOVP as u64 | (seq_num as u64) << 32,
            its_list as u64 | vpeid_field(vpeid),
            rdbase_field(rdbase),
            0,
        ])
    }

    /// VSYNC: complete every earlier command's effects on vPE `vpeid`.
    pub const fn vsync(vpeid: u16) -> Command {
        Command([OP_VSYNC as u64, vpeid_field(vpeid), 0, 0])
    }

    /// VINVALL: reload the configuration of every virtual LPI of vPE `vpeid`.
    pub const fn vinvall(vpeid: u16) -> Command {
        Command([OP_VINVALL as u64, vpeid_field(vpeid), 0, 0])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // ---- Command encodings, bit by bit against IHI 0069 §6.3 -----------------------------------------

    #[test]
    fn physical_command_encodings() {
        // MAPD: DW0 [7:0] 0x08, [63:32] DeviceID; DW1 [4:0] Size; DW2 [51:8] ITT_addr, [63] V.
        assert_eq!(
            Command::mapd(0x1234_5678, 0x000f_edcb_a987_6500, 5, true).0,
            [0x1234_5678_0000_0008, 4, 0x800f_edcb_a987_6500, 0]
        );
        assert_eq!(Command::mapd(7, 0x4000_0100, 1, false).0, [0x0000_0007_0000_0008, 0, 0x4000_0100, 0]);
        // Low ITT bits (below 256-byte alignment) and bits above 51 are not part of the field.
        assert_eq!(Command::mapd(0, 0xfff0_0000_0000_01ff, 32, true).0[1..3], [31, 0x8000_0000_0000_0100]);
        // MAPC: DW2 [15:0] ICID, [51:16] RDbase, [63] V.
        assert_eq!(Command::mapc(3, 2, true).0, [0x09, 0, 0x8000_0000_0002_0003, 0]);
        assert_eq!(Command::mapc(0xffff, 0x8_0a00, false).0, [0x09, 0, 0x0000_0008_0a00_ffff, 0]);
        assert_eq!(Command::mapc(1, 0xf_ffff_ffff, true).0[2], 0x800f_ffff_ffff_0001);
        // MAPTI: DW1 [31:0] EventID, [63:32] pINTID; DW2 [15:0] ICID.
        assert_eq!(Command::mapti(0xabcd, 0x11, 8192 + 5, 2).0, [0x0000_abcd_0000_000a, 0x0000_2005_0000_0011, 2, 0]);
        assert_eq!(Command::mapi(1, 0x2001, 7).0, [0x0000_0001_0000_000b, 0x2001, 7, 0]);
        assert_eq!(Command::int(0xffff_ffff, 0xffff_ffff).0, [0xffff_ffff_0000_0003, 0xffff_ffff, 0, 0]);
        assert_eq!(Command::clear(2, 3).0, [0x0000_0002_0000_0004, 3, 0, 0]);
        assert_eq!(Command::discard(2, 3).0, [0x0000_0002_0000_000f, 3, 0, 0]);
        assert_eq!(Command::inv(2, 3).0, [0x0000_0002_0000_000c, 3, 0, 0]);
        assert_eq!(Command::movi(9, 8, 7).0, [0x0000_0009_0000_0001, 8, 7, 0]);
        assert_eq!(Command::invall(0x1234).0, [0x0d, 0, 0x1234, 0]);
        // SYNC, MOVALL: RDbase at [51:16] of DW2 (and DW3).
        assert_eq!(Command::sync(3).0, [0x05, 0, 0x3_0000, 0]);
        assert_eq!(Command::sync(0x80a0).0, [0x05, 0, 0x80a0_0000, 0]);
        assert_eq!(Command::movall(1, 2).0, [0x0e, 0, 0x1_0000, 0x2_0000]);
    }

    #[test]
    fn virtual_command_encodings() {
        // VMAPP (v4.0): DW1 [47:32] vPEID; DW2 [51:16] RDbase, [63] V; DW3 [51:16] VPT_addr, [4:0] VPT_size.
        assert_eq!(
            Command::vmapp(0x0102, 3, 0x0004_5678_0000, 15, true).0,
            [0x29, 0x0000_0102_0000_0000, 0x8000_0000_0003_0000, 0x0000_0004_5678_000f]
        );
        // VPT_addr keeps bits [51:16] only; VPT_size 5 bits.
        assert_eq!(Command::vmapp(0, 0, 0xfff0_0004_5678_ffff, 0xff, false).0[2..], [0, 0x0000_0004_5678_001f]);
        // VMAPTI: DW0 DeviceID; DW1 [31:0] EventID, [47:32] vPEID; DW2 [31:0] vINTID, [63:32] Dbell_pINTID.
        assert_eq!(
            Command::vmapti(0x44, 0x55, 0x66, 8192 + 1, NO_DOORBELL).0,
            [0x0000_0044_0000_002a, 0x0000_0066_0000_0055, 0x0000_03ff_0000_2001, 0]
        );
        assert_eq!(
            Command::vmapi(0x44, 0x2055, 0x66, 8200).0,
            [0x0000_0044_0000_002b, 0x0000_0066_0000_2055, 0x0000_2008_0000_0000, 0]
        );
        // VMOVI: DW2 [0] D, [63:32] Dbell_pINTID.
        assert_eq!(
            Command::vmovi(1, 2, 3, Some(8300)).0,
            [0x0000_0001_0000_0021, 0x0000_0003_0000_0002, 0x0000_206c_0000_0001, 0]
        );
        assert_eq!(Command::vmovi(1, 2, 3, None).0, [0x0000_0001_0000_0021, 0x0000_0003_0000_0002, 0, 0]);
        // VMOVP (v4.0): DW0 [47:32] SequenceNumber; DW1 [15:0] ITSList, [47:32] vPEID; DW2 [51:16] RDbase.
        assert_eq!(
            Command::vmovp(0x0abc, 2, 0x1234, 0x8001).0,
            [0x0000_1234_0000_0022, 0x0000_0abc_0000_8001, 0x2_0000, 0]
        );
        assert_eq!(Command::vsync(0xfffe).0, [0x25, 0x0000_fffe_0000_0000, 0, 0]);
        assert_eq!(Command::vinvall(5).0, [0x2d, 0x0000_0005_0000_0000, 0, 0]);
    }

    // A decoder written from the spec's field table, independent of the constructors' helpers.
    fn bits(v: u64, hi: u32, lo: u32) -> u64 {
        (v >> lo) & ((1u128 << (hi - lo + 1)) - 1) as u64
    }

    /// The DW0..DW3 bits each opcode defines; everything else must be zero.
    fn defined_bits(op: u8) -> [u64; 4] {
        let dev = field(63, 32) | 0xff;
        match op {
            OP_MAPD => [dev, field(4, 0), field(63, 63) | field(51, 8), 0],
            OP_MAPC => [0xff, 0, field(63, 63) | field(51, 16) | field(15, 0), 0],
            OP_MAPTI => [dev, u64::MAX, field(15, 0), 0],
            OP_MAPI | OP_MOVI => [dev, field(31, 0), field(15, 0), 0],
            OP_INT | OP_CLEAR | OP_DISCARD | OP_INV => [dev, field(31, 0), 0, 0],
            OP_INVALL => [0xff, 0, field(15, 0), 0],
            OP_SYNC => [0xff, 0, field(51, 16), 0],
            OP_VMAPP => [0xff, field(47, 32), field(63, 63) | field(51, 16), field(51, 16) | field(4, 0)],
            OP_VMAPTI => [dev, field(47, 0), u64::MAX, 0],
            OP_VMOVI => [dev, field(47, 0), field(63, 32) | 1, 0],
            OP_VMOVP => [field(47, 32) | 0xff, field(47, 32) | field(15, 0), field(51, 16), 0],
            OP_VSYNC | OP_VINVALL => [0xff, field(47, 32), 0, 0],
            _ => panic!("opcode {op:#x}"),
        }
    }

    fn check_reserved_zero(c: &Command) {
        let defined = defined_bits(c.opcode());
        for (i, (w, d)) in c.0.iter().zip(defined).enumerate() {
            assert_eq!(w & !d, 0, "{c:x?}: reserved bits set in DW{i}");
        }
    }

    proptest! {
        #[test]
        fn physical_commands_decode_back(dev: u32, ev: u32, pintid: u32, icid: u16, rd in 0u64..1 << 36,
                                         itt in 0u64..1 << 44, event_bits in 1u8..=32, valid: bool) {
            let c = Command::mapd(dev, itt << 8, event_bits, valid);
            check_reserved_zero(&c);
            prop_assert_eq!((c.opcode(), bits(c.0[0], 63, 32) as u32), (OP_MAPD, dev));
            prop_assert_eq!(bits(c.0[1], 4, 0) + 1, u64::from(event_bits));
            prop_assert_eq!((bits(c.0[2], 51, 8), bits(c.0[2], 63, 63) == 1), (itt, valid));

            let c = Command::mapc(icid, rd, valid);
            check_reserved_zero(&c);
            prop_assert_eq!(c.opcode(), OP_MAPC);
            let mapc_fields = (bits(c.0[2], 15, 0) as u16, bits(c.0[2], 51, 16), bits(c.0[2], 63, 63) == 1);
            prop_assert_eq!(mapc_fields, (icid, rd, valid));

            let c = Command::mapti(dev, ev, pintid, icid);
            check_reserved_zero(&c);
            prop_assert_eq!(c.opcode(), OP_MAPTI);
            prop_assert_eq!((bits(c.0[0], 63, 32) as u32, bits(c.0[1], 31, 0) as u32), (dev, ev));
            prop_assert_eq!((bits(c.0[1], 63, 32) as u32, bits(c.0[2], 15, 0) as u16), (pintid, icid));

            for (c, op) in [(Command::mapi(dev, ev, icid), OP_MAPI), (Command::movi(dev, ev, icid), OP_MOVI)] {
                check_reserved_zero(&c);
                prop_assert_eq!((c.opcode(), bits(c.0[0], 63, 32) as u32), (op, dev));
                prop_assert_eq!((bits(c.0[1], 31, 0) as u32, bits(c.0[2], 15, 0) as u16), (ev, icid));
            }
            for (c, op) in [(Command::int(dev, ev), OP_INT), (Command::clear(dev, ev), OP_CLEAR),
                            (Command::discard(dev, ev), OP_DISCARD), (Command::inv(dev, ev), OP_INV)] {
                check_reserved_zero(&c);
                prop_assert_eq!((c.opcode(), bits(c.0[0], 63, 32) as u32, bits(c.0[1], 31, 0) as u32), (op, dev, ev));
            }
            let c = Command::invall(icid);
            check_reserved_zero(&c);
            prop_assert_eq!((c.opcode(), bits(c.0[2], 15, 0) as u16), (OP_INVALL, icid));
            let c = Command::sync(rd);
            check_reserved_zero(&c);
            prop_assert_eq!((c.opcode(), bits(c.0[2], 51, 16)), (OP_SYNC, rd));
        }

        #[test]
        fn virtual_commands_decode_back(dev: u32, ev: u32, vpeid: u16, vintid: u32, db: u32, rd in 0u64..1 << 36,
                                        vpt in 0u64..1 << 36, vpt_size in 0u8..32, seq: u16, list: u16,
                                        valid: bool, some_db: bool) {
            let c = Command::vmapp(vpeid, rd, vpt << 16, vpt_size, valid);
            check_reserved_zero(&c);
            prop_assert_eq!((c.opcode(), bits(c.0[1], 47, 32) as u16), (OP_VMAPP, vpeid));
            prop_assert_eq!((bits(c.0[2], 51, 16), bits(c.0[2], 63, 63) == 1), (rd, valid));
            prop_assert_eq!((bits(c.0[3], 51, 16), bits(c.0[3], 4, 0) as u8), (vpt, vpt_size));

            let c = Command::vmapti(dev, ev, vpeid, vintid, db);
            check_reserved_zero(&c);
            let vmapti_fields = (c.opcode(), bits(c.0[0], 63, 32) as u32, bits(c.0[1], 31, 0) as u32);
            prop_assert_eq!(vmapti_fields, (OP_VMAPTI, dev, ev));
            prop_assert_eq!(bits(c.0[1], 47, 32) as u16, vpeid);
            prop_assert_eq!((bits(c.0[2], 31, 0) as u32, bits(c.0[2], 63, 32) as u32), (vintid, db));

            let doorbell = if some_db { Some(db) } else { None };
            let c = Command::vmovi(dev, ev, vpeid, doorbell);
            check_reserved_zero(&c);
            prop_assert_eq!((c.opcode(), bits(c.0[0], 63, 32) as u32, bits(c.0[1], 31, 0) as u32), (OP_VMOVI, dev, ev));
            prop_assert_eq!(bits(c.0[1], 47, 32) as u16, vpeid);
            let decoded = if bits(c.0[2], 0, 0) == 1 { Some(bits(c.0[2], 63, 32) as u32) } else { None };
            prop_assert_eq!(decoded, doorbell);

            let c = Command::vmovp(vpeid, rd, seq, list);
            check_reserved_zero(&c);
            prop_assert_eq!((c.opcode(), bits(c.0[0], 47, 32) as u16), (OP_VMOVP, seq));
            prop_assert_eq!((bits(c.0[1], 15, 0) as u16, bits(c.0[1], 47, 32) as u16), (list, vpeid));
            prop_assert_eq!(bits(c.0[2], 51, 16), rd);

            for (c, op) in [(Command::vsync(vpeid), OP_VSYNC), (Command::vinvall(vpeid), OP_VINVALL)] {
                check_reserved_zero(&c);
                prop_assert_eq!((c.opcode(), bits(c.0[1], 47, 32) as u16), (op, vpeid));
            }
        }
    }

    // ---- GITS_TYPER ---------------------------------------------------------------------------------

    /// QEMU 10.0's ITS: Physical, ITT entries of 12 bytes, 16 EventID and DeviceID bits, CIL with 16 ICID
    /// bits, HCC 0, PTA 0; with GICv4 also Virtual and VMOVP.
    fn qemu_typer(v4: bool) -> u64 {
        let v = if v4 { TYPER_VIRTUAL | TYPER_VMOVP } else { 0 };
        TYPER_PHYSICAL | (12 - 1) << 4 | 15 << 8 | 15 << 13 | TYPER_CIL | 15 << 32 | v
    }

    #[test]
    fn typer_decodes_qemu_values() {
        let t = ItsTyper::decode(qemu_typer(false)).unwrap();
        assert_eq!((t.physical, t.virtual_lpis, t.itt_entry_size, t.id_bits, t.dev_bits), (true, false, 12, 16, 16));
        assert_eq!((t.pta, t.hcc, t.cid_bits, t.vmovp), (false, 0, 16, false));
        let t = ItsTyper::decode(qemu_typer(true)).unwrap();
        assert!(t.virtual_lpis && t.vmovp);
        // Without CIL, 16 ICID bits whatever CIDbits says.
        let t = ItsTyper::decode(TYPER_PHYSICAL | 7 << 4 | 3 << 32 | 0x20 << 24 | TYPER_PTA).unwrap();
        assert_eq!((t.cid_bits, t.hcc, t.pta, t.itt_entry_size), (16, 0x20, true, 8));
    }

    #[test]
    fn absurd_typer_is_an_error() {
        assert_eq!(ItsTyper::decode(0), Err(TyperError::NoPhysicalLpis));
        assert_eq!(ItsTyper::decode(!TYPER_PHYSICAL), Err(TyperError::NoPhysicalLpis));
        assert_eq!(ItsTyper::decode(TYPER_PHYSICAL), Err(TyperError::BadField { field: "ITT_entry_size", value: 0 }));
        assert!(ItsTyper::decode(u64::MAX).is_ok());
        // from_bits checks nothing: a non-physical ITS still decodes, field by field.
        let t = ItsTyper::from_bits(7 << 4 | 3 << 24 | 7 << 32);
        assert!(!t.physical && !t.pta);
        assert_eq!((t.itt_entry_size, t.id_bits, t.dev_bits, t.hcc, t.cid_bits), (8, 1, 1, 3, 16));
        assert_eq!(t.raw, 7 << 4 | 3 << 24 | 7 << 32);
    }

    // ---- Table registers ----------------------------------------------------------------------------

    #[test]
    fn non_cacheable_register_values() {
        // The values a driver with the MMU off (Normal Non-cacheable, Non-shareable tables) writes.
        let nc = (attr::NON_CACHEABLE, attr::NON_SHAREABLE);
        assert_eq!(propbaser(0x4008_2000, 14, nc.0, nc.1), 0x4008_2000 | 1 << 7 | 13);
        assert_eq!(pendbaser(0x4009_0000, true, nc.0, nc.1), 0x4009_0000 | 1 << 7 | 1 << 62);
        assert_eq!(pendbaser(0x4009_0000, false, nc.0, nc.1), 0x4009_0000 | 1 << 7);
        assert_eq!(cbaser(0x4008_1000, 0x1000, nc.0, nc.1), 1 << 63 | 1 << 59 | 0x4008_1000);
        assert_eq!(lpi_config(0xa0, true), 0xa3);
        assert_eq!(lpi_config(0x43, false), 0x42);
        // A device table (Type 1, 8-byte entries): Type and Entry_Size are kept from the register.
        let device = 1 << 56 | 7 << 48;
        assert_eq!((BaserType::from_baser(device), baser_entry_size(device)), (BaserType::Devices, 8));
        assert_eq!(BaserType::from_baser(4 << 56), BaserType::Collections);
        assert_eq!(BaserType::from_baser(3 << 56), BaserType::Reserved(3));
        let pa = baser_pa_field(0x4012_0000, PageSize::Size64K).unwrap();
        let b = baser(device, true, pa, PageSize::Size64K, 1, nc.0, nc.1);
        assert_eq!(b, 1 << 63 | 1 << 59 | 1 << 56 | 7 << 48 | 0x4012_0000 | 2 << 8);
        assert_eq!(
            (PageSize::from_baser(b), baser_pa(b), b & BASER_INDIRECT),
            (Some(PageSize::Size64K), 0x4012_0000, 0)
        );
        let pa = baser_pa_field(0x4012_0000, PageSize::Size4K).unwrap();
        let b = baser(device, true, pa, PageSize::Size4K, 16, nc.0, nc.1);
        assert_eq!((PageSize::from_baser(b), b & 0x3ff), (Some(PageSize::Size4K), 15));
    }
}
