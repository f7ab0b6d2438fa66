//! Register offsets and fields of the physical ITS (`GITS_*`, IHI 0069 §12.19)
//! and of the redistributor's LPI registers (`GICR_*`, §12.11), as plain
//! values: no hardware access here.

use super::ItsError;

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
    /// Decodes `GITS_TYPER`.
    ///
    /// # Errors
    ///
    /// [`ItsError::NoPhysicalLpis`] if `Physical` is 0 (this driver only drives ITSs that translate to
    /// physical LPIs), [`ItsError::BadTyper`] if `ITT_entry_size` is below the 3 bytes any ITT entry
    /// needs.
    pub fn decode(raw: u64) -> Result<ItsTyper, ItsError> {
        if raw & TYPER_PHYSICAL == 0 {
            return Err(ItsError::NoPhysicalLpis);
        }
        let itt_entry_size = extract(raw, 7, 4) as u8 + 1;
        if itt_entry_size < 3 {
            return Err(ItsError::BadTyper { field: "ITT_entry_size", value: u64::from(itt_entry_size) - 1 });
        }
        let cid_bits = if raw & TYPER_CIL != 0 { extract(raw, 35, 32) as u8 + 1 } else { 16 };
        Ok(ItsTyper {
            physical: true,
            virtual_lpis: raw & TYPER_VIRTUAL != 0,
            itt_entry_size,
            id_bits: extract(raw, 12, 8) as u8 + 1,
            dev_bits: extract(raw, 17, 13) as u8 + 1,
            pta: raw & TYPER_PTA != 0,
            hcc: extract(raw, 31, 24) as u8,
            cid_bits,
            vmovp: raw & TYPER_VMOVP != 0,
            raw,
        })
    }
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

pub const GICR_CTLR: usize = 0x0000;
pub const GICR_TYPER: usize = 0x0008;
pub const GICR_PROPBASER: usize = 0x0070;
pub const GICR_PENDBASER: usize = 0x0078;
/// The VLPI frame (GICv4): after the RD and SGI frames.
pub const GICR_VLPI_FRAME: usize = 0x2_0000;
pub const GICR_VPROPBASER: usize = GICR_VLPI_FRAME + 0x70;
pub const GICR_VPENDBASER: usize = GICR_VLPI_FRAME + 0x78;

pub const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
/// `GICR_TYPER.PLPIS`: physical LPIs supported.
pub const GICR_TYPER_PLPIS: u64 = 1 << 0;
/// `GICR_TYPER.VLPIS`: virtual LPIs and the VLPI frame (GICv4).
pub const GICR_TYPER_VLPIS: u64 = 1 << 1;

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
