//! Guest stage-2 translation tables, built by the host with `aarch64-paging`.
//!
//! Geometry: 4 KiB granule, a [`STAGE2_IPA_BITS`]-bit IPA space (512 GiB)
//! whose walk starts at level [`STAGE2_ROOT_LEVEL`] in one root table; el2
//! programs `VTCR_EL2` to match, with cacheable, inner-shareable walks (the
//! host writes the tables through its own cacheable mapping and does no cache
//! maintenance on them). Ranges whose IPA, PA and size allow it get 1 GiB and
//! 2 MiB blocks; the rest 4 KiB pages.
//!
//! # TLB maintenance and break-before-make
//! The host runs at EL1: it can neither execute `TLBI IPAS2E1IS` nor write
//! `VTTBR_EL2`. So the tables are never activated in `aarch64-paging`'s sense
//! (it then issues no TLBI of its own), and every invalidation goes through a
//! [`Stage2Tlb`], whose real implementation asks el2 by hypercall.
//!
//! The tables may be in use by the guest on other CPUs while they are
//! edited, so a change to a live valid mapping — another output address,
//! other attributes, or a block split into smaller pieces — follows the
//! architecture's break-before-make sequence, in this order:
//! 1. every valid leaf (page or whole block) the change touches is made
//!    invalid; a block partly inside the range is broken as a whole;
//! 2. `dsb ishst`, so the walkers see the invalid entries;
//! 3. the TLB entries for those IPA ranges of the VMID are invalidated;
//! 4. tables that step 1 unlinked are freed (only now can no walk still be
//!    using them);
//! 5. the new entries are written — the requested mapping, and the parts of
//!    broken blocks outside the range with their old output and attributes —
//!    then `dsb ishst` again.
//!
//! Unmapping is steps 1–4 (and 5 for the parts of blocks outside the range).
//! Mapping over invalid entries, and remapping a range to exactly what it
//! already maps, needs no invalidation. While a change is in progress a vCPU
//! may take a stage-2 fault on any IPA inside the broken leaves; the fault
//! handler, which serialises with the change on the VM's lock, finds the
//! mapping back in place and returns to the guest.
//!
//! `aarch64-paging`'s `Translation` cannot report an allocation failure, so
//! the tables a change can need are counted and allocated from
//! [`TableFrames`] before anything is written: running out of memory is an
//! error that leaves the tables as they were.
#![cfg_attr(
    target_os = "none",
    allow(dead_code, reason = "unmapping, walking and device mappings are used by the tests and the vGIC work")
)]

use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, MemoryRegion, PageTable, Stage2 as Stage2Regime, Translation};
use aarch64_paging::{MapError, Mapping};
use ferrovisor_shared::vcpu::{STAGE2_IPA_BITS, STAGE2_ROOT_LEVEL};

use super::FRAME_SIZE;

/// The translation granule.
pub const PAGE_SIZE: u64 = 4096;
/// The size of the IPA space: IPAs are below this.
pub const IPA_SPACE: u64 = 1 << STAGE2_IPA_BITS;
/// Output addresses are below this (descriptors hold PA bits 47:12).
pub const PA_SPACE: u64 = 1 << 48;

const LEAF_LEVEL: usize = 3;
/// Descriptor bits 47:12.
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
const ENTRIES: usize = 512;

const _: () = assert!(core::mem::size_of::<usize>() == 8, "IPAs and PAs are handled as usize");
const _: () = assert!(FRAME_SIZE as u64 == PAGE_SIZE);

/// One stage-2 translation table.
pub type Stage2Table = PageTable<Stage2Attributes>;

/// Bytes one entry at `level` maps.
const fn granule(level: usize) -> u64 {
    PAGE_SIZE << (9 * (LEAF_LEVEL - level))
}

/// What a guest IPA range is backed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// RAM: Normal, inner and outer write-back, inner shareable, read-write,
    /// executable.
    Normal,
    /// Device-nGnRE, read-write, execute-never.
    Device,
}

impl MemKind {
    /// The block or page attributes (`VALID` and `AF` included) this kind
    /// maps with.
    pub fn attributes(self) -> Stage2Attributes {
        let common = Stage2Attributes::VALID | Stage2Attributes::ACCESS_FLAG | Stage2Attributes::S2AP_ACCESS_RW;
        match self {
            Self::Normal => {
                common
                    | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
                    | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
                    | Stage2Attributes::SH_INNER
            }
            Self::Device => common | Stage2Attributes::MEMATTR_DEVICE_nGnRE | Stage2Attributes::XN,
        }
    }

    /// MemAttr[3:2] (descriptor bits 5:4) is 0b00 for Device memory.
    fn of_descriptor(d: u64) -> Self {
        if (d >> 4) & 0b11 == 0 {
            Self::Device
        } else {
            Self::Normal
        }
    }
}

/// Stage-2 TLB maintenance, on every CPU of the inner shareable domain. The
/// host's implementation calls el2 with `HC_TLB_FLUSH_IPA` and
/// `HC_TLB_FLUSH_VMID`.
pub trait Stage2Tlb {
    /// Invalidates the stage-2 (and combined stage-1) entries for IPAs
    /// `[ipa, ipa + size)` of `vmid`, intermediate walk entries included,
    /// and waits until that is complete.
    fn flush_ipa(&self, vmid: u16, ipa: u64, size: u64);
    /// Invalidates every TLB entry of `vmid`, and waits.
    fn flush_vmid(&self, vmid: u16);
}

/// Where stage-2 tables come from: zeroed, 4 KiB-aligned pages the host can
/// write. Like `aarch64_paging::paging::Translation`, but allocation may fail.
pub trait TableFrames {
    /// A zeroed table: where the host reaches it, and its physical address
    /// (never 0). `None` when memory is exhausted.
    fn alloc_table(&mut self) -> Option<(NonNull<Stage2Table>, u64)>;

    /// Gives back a table.
    ///
    /// # Safety
    /// `table` came from [`alloc_table`](Self::alloc_table) of this object,
    /// has not been freed, and neither a table nor a TLB refers to it any
    /// more.
    unsafe fn free_table(&mut self, table: NonNull<Stage2Table>);

    /// Where the host reaches the table at physical address `pa` (one that
    /// [`alloc_table`](Self::alloc_table) returned).
    fn table_va(&self, pa: u64) -> NonNull<Stage2Table>;
}

/// Why a stage-2 change was refused. Nothing was changed when one is
/// returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage2Error {
    /// An IPA, PA or size that is not a multiple of 4 KiB.
    Unaligned { what: &'static str, value: u64 },
    /// `base + size` overflows 64 bits.
    Overflow { what: &'static str, base: u64, size: u64 },
    /// The IPA range reaches past the IPA space.
    IpaOutOfRange { ipa: u64, size: u64 },
    /// The PA range reaches past what a descriptor can hold.
    PaOutOfRange { pa: u64, size: u64 },
    /// No memory for the tables the change needs.
    OutOfMemory { tables: usize },
    /// `aarch64-paging` refused a change that was checked beforehand.
    Table(MapError),
}

impl fmt::Display for Stage2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unaligned { what, value } => write!(f, "stage 2: {what} {value:#x} is not 4 KiB aligned"),
            Self::Overflow { what, base, size } => {
                write!(f, "stage 2: {what} range {base:#x} + {size:#x} overflows")
            }
            Self::IpaOutOfRange { ipa, size } => {
                write!(f, "stage 2: IPA range {ipa:#x} + {size:#x} reaches past the {STAGE2_IPA_BITS}-bit IPA space")
            }
            Self::PaOutOfRange { pa, size } => {
                write!(f, "stage 2: PA range {pa:#x} + {size:#x} reaches past 48-bit physical addresses")
            }
            Self::OutOfMemory { tables } => write!(f, "stage 2: no memory for {tables} translation tables"),
            Self::Table(e) => write!(f, "stage 2: {e}"),
        }
    }
}

/// A valid leaf descriptor and what it says about one IPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The PA the IPA translates to.
    pub pa: u64,
    pub kind: MemKind,
    /// 1 or 2 for a 1 GiB or 2 MiB block, 3 for a page.
    pub level: usize,
    /// The raw descriptor.
    pub descriptor: u64,
}

/// Walks the tables from `root_pa` for `ipa`, reading entry `index` of the
/// table at physical address `pa` with `read(pa, index)`. Our own walk, in
/// the architecture's terms, independent of `aarch64-paging`.
fn walk(root_pa: u64, ipa: u64, read: impl Fn(u64, usize) -> u64) -> Option<Leaf> {
    if ipa >= IPA_SPACE {
        return None;
    }
    let mut table = root_pa;
    for level in STAGE2_ROOT_LEVEL..=LEAF_LEVEL {
        let shift = granule(level).trailing_zeros();
        let d = read(table, ((ipa >> shift) as usize) % ENTRIES);
        if d & 1 == 0 {
            return None;
        }
        let table_or_page = d & 2 != 0;
        if level < LEAF_LEVEL && table_or_page {
            table = d & OA_MASK;
            continue;
        }
        if level == LEAF_LEVEL && !table_or_page {
            // 0b01 at level 3 is reserved: it translates nothing.
            return None;
        }
        let offset = ipa & (granule(level) - 1);
        return Some(Leaf {
            pa: (d & OA_MASK & !(granule(level) - 1)) | offset,
            kind: MemKind::of_descriptor(d),
            level,
            descriptor: d,
        });
    }
    None
}

/// Reads entry `index` of `table`.
///
/// # Safety
/// `table` points to a live stage-2 table and `index` < 512.
unsafe fn read_entry(table: NonNull<Stage2Table>, index: usize) -> u64 {
    // SAFETY: the caller's contract; a table is 512 naturally aligned 64-bit
    // descriptors, which aarch64-paging itself accesses atomically.
    unsafe { (*table.as_ptr().cast::<AtomicU64>().add(index)).load(Ordering::Acquire) }
}

/// Makes the table writes so far visible to the translation table walkers
/// of every CPU before what follows (a TLB invalidation, a guest entry).
fn dsb_ishst() {
    #[cfg(all(target_os = "none", target_arch = "aarch64"))]
    // SAFETY: a barrier; it touches no memory or registers.
    unsafe {
        core::arch::asm!("dsb ishst", options(nostack, preserves_flags));
    }
}

/// The `Translation` that `aarch64-paging` sees: tables come from a
/// reservation made before each change, and freed tables wait until the TLB
/// invalidation that makes freeing them safe.
struct Pool<T: TableFrames> {
    // aarch64-paging hands out only `&` to its translation, so the
    // reservation is filled and drained through a lock.
    state: spin::Mutex<PoolState<T>>,
}

struct PoolState<T> {
    frames: T,
    /// Allocated for the change in progress: (host address, PA).
    reserved: Vec<(usize, u64)>,
    /// Unlinked by the change in progress, to be freed after its TLB flush.
    retired: Vec<usize>,
    /// Tables in the hierarchy.
    tables: usize,
    /// Tables aarch64-paging asked for beyond the reservation (a counting
    /// bug; served from `frames` if it can).
    unreserved: usize,
}

fn table_at(addr: usize) -> NonNull<Stage2Table> {
    NonNull::new(core::ptr::with_exposed_provenance_mut(addr)).unwrap_or(NonNull::dangling())
}

impl<T: TableFrames> Pool<T> {
    fn new(frames: T) -> Self {
        Self {
            state: spin::Mutex::new(PoolState {
                frames,
                reserved: Vec::new(),
                retired: Vec::new(),
                tables: 0,
                unreserved: 0,
            }),
        }
    }

    /// Makes sure `count` tables are reserved; on failure gives back what it
    /// took.
    fn reserve(&self, count: usize) -> Result<(), Stage2Error> {
        let mut s = self.state.lock();
        if s.reserved.try_reserve(count).is_err() || s.retired.try_reserve(count).is_err() {
            return Err(Stage2Error::OutOfMemory { tables: count });
        }
        while s.reserved.len() < count {
            let Some((table, pa)) = s.frames.alloc_table() else {
                s.release_unused();
                return Err(Stage2Error::OutOfMemory { tables: count });
            };
            s.reserved.push((table.as_ptr().expose_provenance(), pa));
        }
        Ok(())
    }

    fn release_unused(&self) {
        self.state.lock().release_unused();
    }

    /// Frees the tables unlinked since the last call. Only after the TLB
    /// invalidation for the ranges they translated.
    fn free_retired(&self) {
        let mut s = self.state.lock();
        while let Some(addr) = s.retired.pop() {
            // SAFETY: the table came from `frames` (through the reservation),
            // aarch64-paging unlinked it, and the caller has invalidated the
            // TLB entries for everything it translated.
            unsafe { s.frames.free_table(table_at(addr)) };
        }
    }
}

impl<T> PoolState<T>
where
    T: TableFrames,
{
    fn release_unused(&mut self) {
        while let Some((addr, _)) = self.reserved.pop() {
            // SAFETY: reserved tables came from `frames` and were never linked.
            unsafe { self.frames.free_table(table_at(addr)) };
        }
    }
}

impl<T: TableFrames> Translation<Stage2Attributes> for Pool<T> {
    fn allocate_table(&mut self) -> (NonNull<Stage2Table>, PhysicalAddress) {
        let s = self.state.get_mut();
        let (addr, pa) = match s.reserved.pop() {
            Some(t) => t,
            None => {
                s.unreserved += 1;
                match s.frames.alloc_table() {
                    Some((t, pa)) => (t.as_ptr().expose_provenance(), pa),
                    // aarch64-paging has no way to fail here. The counting in
                    // `tables_needed` makes this unreachable (the tests check it).
                    None => panic!("stage 2: table reservation undercounted and memory exhausted"),
                }
            }
        };
        s.tables += 1;
        (table_at(addr), PhysicalAddress(pa as usize))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<Stage2Table>) {
        let s = self.state.get_mut();
        s.tables -= 1;
        // `reserve` made room, so this does not allocate; if a change retires
        // more than it reserved, the Vec grows.
        s.retired.push(page_table.as_ptr().expose_provenance());
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<Stage2Table> {
        self.state.lock().frames.table_va(pa.0 as u64)
    }
}

impl<T: TableFrames> Drop for Pool<T> {
    fn drop(&mut self) {
        // Runs after aarch64-paging has handed back the whole hierarchy.
        let s = self.state.get_mut();
        s.release_unused();
        while let Some(addr) = s.retired.pop() {
            // SAFETY: the table came from `frames`; the hierarchy is gone, and
            // `Stage2::destroy`'s caller flushed the VMID (see there).
            unsafe { s.frames.free_table(table_at(addr)) };
        }
    }
}

/// A leaf-aligned part of the range to write back after a break: the piece
/// of a broken block outside the range.
struct Piece {
    start: u64,
    end: u64,
    pa: u64,
    attributes: Stage2Attributes,
}

/// What a change must break and restore.
#[derive(Default)]
struct Plan {
    /// Runs of whole entries to invalidate, each with a valid leaf,
    /// ascending, disjoint.
    breaks: Vec<(u64, u64)>,
    restore: Vec<Piece>,
}

impl Plan {
    /// `(ipa, end, pa)` of everything the change writes: `new`, and the
    /// pieces to restore.
    fn ranges_to_make(&self, new: Option<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
        new.into_iter().chain(self.restore.iter().map(|p| (p.start, p.end, p.pa))).collect()
    }
}

/// The most tables that mapping each `(ipa, end, pa)` of `ranges` can add:
/// for each level whose entries may point at a next-level table, the entries
/// the ranges touch, less those a range can make a block of (it covers the
/// entry and its PA is congruent), each entry counted once.
fn tables_needed(ranges: &[(u64, u64, u64)]) -> usize {
    let mut entries: Vec<(usize, u64)> = Vec::new();
    for &(ipa, end, pa) in ranges {
        for level in STAGE2_ROOT_LEVEL..LEAF_LEVEL {
            let g = granule(level);
            let (first, last) = (ipa / g, (end - 1) / g);
            if pa.wrapping_sub(ipa) % g != 0 {
                entries.extend((first..=last).map(|i| (level, i)));
            } else {
                if ipa % g != 0 || (first == last && end % g != 0) {
                    entries.push((level, first));
                }
                if last != first && end % g != 0 {
                    entries.push((level, last));
                }
            }
        }
    }
    entries.sort_unstable();
    entries.dedup();
    entries.len()
}

fn region(start: u64, end: u64) -> MemoryRegion {
    MemoryRegion::new(start as usize, end as usize)
}

/// Checks that `[base, base + size)` is 4 KiB aligned and below `limit`;
/// returns its end.
fn check_range(what: &'static str, base: u64, size: u64, limit: u64) -> Result<u64, Stage2Error> {
    for (w, v) in [(what, base), ("size", size)] {
        if !v.is_multiple_of(PAGE_SIZE) {
            return Err(Stage2Error::Unaligned { what: w, value: v });
        }
    }
    let end = base.checked_add(size).ok_or(Stage2Error::Overflow { what, base, size })?;
    if end > limit {
        return Err(if what == "IPA" {
            Stage2Error::IpaOutOfRange { ipa: base, size }
        } else {
            Stage2Error::PaOutOfRange { pa: base, size }
        });
    }
    Ok(end)
}

/// A guest's stage-2 tables.
pub struct Stage2<T: TableFrames> {
    mapping: Mapping<Pool<T>, Stage2Regime>,
}

impl<T: TableFrames> Stage2<T> {
    /// Empty tables: one root table, taken from `frames`.
    ///
    /// # Errors
    /// [`Stage2Error::OutOfMemory`] if `frames` has no table.
    pub fn new(frames: T) -> Result<Self, Stage2Error> {
        let pool = Pool::new(frames);
        pool.reserve(1)?;
        Ok(Self { mapping: Mapping::new(pool, STAGE2_ROOT_LEVEL, Stage2Regime) })
    }

    /// The root table's physical address, for `VTTBR_EL2.BADDR`.
    pub fn root_pa(&self) -> u64 {
        self.mapping.root_address().0 as u64
    }

    /// Tables in the hierarchy, the root included.
    pub fn tables(&self) -> usize {
        self.mapping.translation().state.lock().tables
    }

    /// Maps IPAs `[ipa, ipa + size)` to PAs `[pa, pa + size)` as `kind`,
    /// replacing what was there with break-before-make (see the module's
    /// documentation); `vmid` is the VM's VMID for the TLB invalidation.
    ///
    /// # Errors
    /// An IPA, PA or size that is not 4 KiB aligned, a range that overflows
    /// or reaches past the IPA space (or 48-bit PAs), or no memory for the
    /// tables; the tables are then unchanged.
    pub fn map(
        &mut self,
        ipa: u64,
        pa: u64,
        size: u64,
        kind: MemKind,
        vmid: u16,
        tlb: &dyn Stage2Tlb,
    ) -> Result<(), Stage2Error> {
        let end = check_range("IPA", ipa, size, IPA_SPACE)?;
        check_range("PA", pa, size, PA_SPACE)?;
        if size == 0 {
            return Ok(());
        }
        let attributes = kind.attributes();
        let plan = self.plan(ipa, end, Some((pa, attributes)));
        let tables = tables_needed(&plan.ranges_to_make(Some((ipa, end, pa))));
        self.change(&plan, tables, vmid, tlb, |m| {
            m.map_range(&region(ipa, end), PhysicalAddress(pa as usize), attributes, Constraints::empty())
        })
    }

    /// Unmaps IPAs `[ipa, ipa + size)`: invalid entries, TLB invalidated.
    /// Unlinked tables are freed.
    ///
    /// # Errors
    /// As [`map`](Self::map) (memory is needed when a block is only partly
    /// unmapped).
    pub fn unmap(&mut self, ipa: u64, size: u64, vmid: u16, tlb: &dyn Stage2Tlb) -> Result<(), Stage2Error> {
        let end = check_range("IPA", ipa, size, IPA_SPACE)?;
        if size == 0 {
            return Ok(());
        }
        let plan = self.plan(ipa, end, None);
        let tables = tables_needed(&plan.ranges_to_make(None));
        self.change(&plan, tables, vmid, tlb, |_| Ok(()))
    }

    /// What `ipa` translates to, by a walk of the tables.
    pub fn translate(&self, ipa: u64) -> Option<(u64, MemKind)> {
        self.leaf(ipa).map(|l| (l.pa, l.kind))
    }

    /// The leaf descriptor that translates `ipa`, if any.
    pub fn leaf(&self, ipa: u64) -> Option<Leaf> {
        let s = self.mapping.translation().state.lock();
        walk(self.root_pa(), ipa, |pa, index| {
            // SAFETY: `walk` follows only table descriptors of this
            // hierarchy, whose tables live as long as `self`; index < 512.
            unsafe { read_entry(s.frames.table_va(pa), index) }
        })
    }

    /// Frees every table once no CPU can use them: flushes `vmid` from the
    /// TLBs first. The caller makes sure no vCPU of the VM runs any more.
    pub fn destroy(self, vmid: u16, tlb: &dyn Stage2Tlb) {
        tlb.flush_vmid(vmid);
        drop(self);
    }

    /// The valid leaves in `[ipa, end)` to break, and the parts of broken
    /// blocks outside the range to restore. With `new`, leaves that already
    /// map exactly as `new` would are left alone.
    fn plan(&self, ipa: u64, end: u64, new: Option<(u64, Stage2Attributes)>) -> Plan {
        let mut plan = Plan::default();
        // Runs with whether they hold a valid leaf.
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut extend = |start: u64, end: u64, valid: bool| match runs.last_mut() {
            Some(run) if run.1 == start => {
                run.1 = end;
                run.2 |= valid;
            }
            _ => runs.push((start, end, valid)),
        };
        // The range was checked, so the walk cannot fail.
        let _ = self.mapping.walk_range(&region(ipa, end), &mut |mr, desc, level| {
            let g = granule(level);
            let (start, stop) = (mr.start().0 as u64, mr.end().0 as u64);
            let leaf_start = start & !(g - 1);
            let leaf_end = leaf_start + g;
            if !desc.is_valid() {
                // Whole invalid entries join a run, so that a table the run
                // then covers entirely is unlinked and freed, not left empty.
                // (Never part of one: that would make aarch64-paging split it.)
                if (start, stop) == (leaf_start, leaf_end) {
                    extend(leaf_start, leaf_end, false);
                }
                return Ok(());
            }
            let oa = desc.output_address().0 as u64;
            let attributes = desc.flags() - Stage2Attributes::TABLE_OR_PAGE;
            if let Some((pa, a)) = new {
                if a == attributes && oa.wrapping_sub(leaf_start) == pa.wrapping_sub(ipa) {
                    return Ok(());
                }
            }
            extend(leaf_start, leaf_end, true);
            if leaf_start < ipa {
                plan.restore.push(Piece { start: leaf_start, end: ipa, pa: oa, attributes });
            }
            if leaf_end > end {
                plan.restore.push(Piece { start: end, end: leaf_end, pa: oa + (end - leaf_start), attributes });
            }
            Ok(())
        });
        plan.breaks = runs.into_iter().filter(|r| r.2).map(|r| (r.0, r.1)).collect();
        plan
    }

    /// Reserves `tables`, breaks `plan.breaks` (invalidate, barrier, TLB
    /// flush, free), then makes: `make`, and `plan.restore`.
    fn change(
        &mut self,
        plan: &Plan,
        tables: usize,
        vmid: u16,
        tlb: &dyn Stage2Tlb,
        make: impl FnOnce(&mut Mapping<Pool<T>, Stage2Regime>) -> Result<(), MapError>,
    ) -> Result<(), Stage2Error> {
        self.mapping.translation().reserve(tables)?;
        let result = self.break_and_make(plan, vmid, tlb, make);
        self.mapping.translation().release_unused();
        dsb_ishst();
        result
    }

    fn break_and_make(
        &mut self,
        plan: &Plan,
        vmid: u16,
        tlb: &dyn Stage2Tlb,
        make: impl FnOnce(&mut Mapping<Pool<T>, Stage2Regime>) -> Result<(), MapError>,
    ) -> Result<(), Stage2Error> {
        if !plan.breaks.is_empty() {
            for &(start, end) in &plan.breaks {
                // Whole leaves only: no entry is split and no table allocated;
                // tables wholly inside are unlinked into the retired list.
                self.mapping
                    .map_range(
                        &region(start, end),
                        PhysicalAddress(start as usize),
                        Stage2Attributes::empty(),
                        Constraints::empty(),
                    )
                    .map_err(Stage2Error::Table)?;
            }
            dsb_ishst();
            for &(start, end) in &plan.breaks {
                tlb.flush_ipa(vmid, start, end - start);
            }
            self.mapping.translation().free_retired();
        }
        make(&mut self.mapping).map_err(Stage2Error::Table)?;
        for p in &plan.restore {
            self.mapping
                .map_range(&region(p.start, p.end), PhysicalAddress(p.pa as usize), p.attributes, Constraints::empty())
                .map_err(Stage2Error::Table)?;
        }
        Ok(())
    }

    /// Every valid leaf: (first IPA, bytes, leaf), by a walk of every entry
    /// of every table from the root, in the architecture's terms (as
    /// [`walk`], independent of `aarch64-paging`), lowest IPA first.
    #[cfg(test)]
    pub fn leaves(&self) -> Vec<(u64, u64, Leaf)> {
        let s = self.mapping.translation().state.lock();
        let mut out = Vec::new();
        let mut tables = alloc::vec![(self.root_pa(), STAGE2_ROOT_LEVEL, 0u64)];
        while let Some((table, level, base)) = tables.pop() {
            let g = granule(level);
            for index in 0..ENTRIES {
                // SAFETY: the root and the tables its table descriptors name
                // live as long as `self`; index < 512.
                let d = unsafe { read_entry(s.frames.table_va(table), index) };
                let ipa = base + index as u64 * g;
                let table_or_page = d & 2 != 0;
                match (d & 1 != 0, level < LEAF_LEVEL, table_or_page) {
                    (false, _, _) | (true, false, false) => {}
                    (true, true, true) => tables.push((d & OA_MASK, level + 1, ipa)),
                    (true, _, _) => {
                        let leaf =
                            Leaf { pa: d & OA_MASK & !(g - 1), kind: MemKind::of_descriptor(d), level, descriptor: d };
                        out.push((ipa, g, leaf));
                    }
                }
            }
        }
        out.sort_unstable_by_key(|l| l.0);
        out
    }

    #[cfg(test)]
    fn unreserved_allocations(&self) -> usize {
        self.mapping.translation().state.lock().unreserved
    }
}

/// The host's tables: frames from [`crate::mm::frames`], which the host maps
/// at VA == PA.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostFrames;

impl TableFrames for HostFrames {
    fn alloc_table(&mut self) -> Option<(NonNull<Stage2Table>, u64)> {
        let mut frames = super::frames().lock();
        let mut pa = frames.alloc(1)?;
        if pa == 0 {
            // A table at PA 0 has no non-null address: keep that frame out of
            // circulation and take another.
            pa = frames.alloc(1)?;
        }
        drop(frames);
        let table = NonNull::new(core::ptr::with_exposed_provenance_mut::<Stage2Table>(pa as usize))?;
        // SAFETY: the frame was just taken from the allocator, so nothing else
        // uses it, and the host maps all RAM read-write at VA == PA.
        unsafe { table.as_ptr().cast::<u8>().write_bytes(0, FRAME_SIZE) };
        Some((table, pa))
    }

    unsafe fn free_table(&mut self, table: NonNull<Stage2Table>) {
        super::frames().lock().dealloc(table.as_ptr().expose_provenance() as u64, 1);
    }

    fn table_va(&self, pa: u64) -> NonNull<Stage2Table> {
        table_at(pa as usize)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::boxed::Box;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::rc::Rc;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const VMID: u16 = 7;

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Event {
        Alloc(u64),
        Free(u64),
        /// A flush, with the pages of its range that were still valid when
        /// it was made.
        FlushIpa {
            vmid: u16,
            ipa: u64,
            size: u64,
            valid_pages: usize,
            first: Option<Leaf>,
        },
        FlushVmid(u16),
    }

    type Log = Rc<RefCell<Vec<Event>>>;

    /// Heap pages as tables (PA = the pointer's address), logged; allocation
    /// fails once `limit` tables are out.
    pub(crate) struct FakeFrames {
        log: Log,
        live: Rc<RefCell<BTreeSet<u64>>>,
        limit: Rc<RefCell<usize>>,
    }

    impl TableFrames for FakeFrames {
        fn alloc_table(&mut self) -> Option<(NonNull<Stage2Table>, u64)> {
            if self.live.borrow().len() >= *self.limit.borrow() {
                return None;
            }
            let table = NonNull::from(Box::leak(Box::new(Stage2Table::EMPTY)));
            let pa = table.as_ptr().expose_provenance() as u64;
            self.live.borrow_mut().insert(pa);
            self.log.borrow_mut().push(Event::Alloc(pa));
            Some((table, pa))
        }

        unsafe fn free_table(&mut self, table: NonNull<Stage2Table>) {
            let pa = table.as_ptr().expose_provenance() as u64;
            assert!(self.live.borrow_mut().remove(&pa), "table {pa:#x} freed twice or never allocated");
            self.log.borrow_mut().push(Event::Free(pa));
            // SAFETY: allocated by Box in alloc_table, freed once (checked).
            drop(unsafe { Box::from_raw(table.as_ptr()) });
        }

        fn table_va(&self, pa: u64) -> NonNull<Stage2Table> {
            assert!(self.live.borrow().contains(&pa), "walk into a table that is not live: {pa:#x}");
            table_at(pa as usize)
        }
    }

    /// Records flushes, and at each one walks the tables as the hardware
    /// would at that moment.
    pub(crate) struct FakeTlb {
        log: Log,
        root: u64,
        live: Rc<RefCell<BTreeSet<u64>>>,
    }

    impl FakeTlb {
        fn walk_now(&self, ipa: u64) -> Option<Leaf> {
            walk(self.root, ipa, |pa, index| {
                assert!(self.live.borrow().contains(&pa), "walker reached a freed table {pa:#x}");
                // SAFETY: a live table (checked), index < 512.
                unsafe { read_entry(table_at(pa as usize), index) }
            })
        }
    }

    impl Stage2Tlb for FakeTlb {
        fn flush_ipa(&self, vmid: u16, ipa: u64, size: u64) {
            let valid_pages =
                (ipa..ipa + size).step_by(PAGE_SIZE as usize).filter(|&a| self.walk_now(a).is_some()).count();
            let first = self.walk_now(ipa);
            self.log.borrow_mut().push(Event::FlushIpa { vmid, ipa, size, valid_pages, first });
        }

        fn flush_vmid(&self, vmid: u16) {
            self.log.borrow_mut().push(Event::FlushVmid(vmid));
        }
    }

    /// Empty tables over the fake frames and TLB (also `vm::guest_map`'s
    /// tests'): `live` holds the PA of every table allocated and not freed.
    pub(crate) struct Fixture {
        pub(crate) s2: Stage2<FakeFrames>,
        pub(crate) tlb: FakeTlb,
        log: Log,
        pub(crate) live: Rc<RefCell<BTreeSet<u64>>>,
        limit: Rc<RefCell<usize>>,
    }

    impl Fixture {
        pub(crate) fn new() -> Self {
            let log: Log = Rc::default();
            let live: Rc<RefCell<BTreeSet<u64>>> = Rc::default();
            let limit = Rc::new(RefCell::new(usize::MAX));
            let frames = FakeFrames { log: log.clone(), live: live.clone(), limit: limit.clone() };
            let s2 = Stage2::new(frames).unwrap();
            let tlb = FakeTlb { log: log.clone(), root: s2.root_pa(), live: live.clone() };
            log.borrow_mut().clear();
            Self { s2, tlb, log, live, limit }
        }

        fn map(&mut self, ipa: u64, pa: u64, size: u64, kind: MemKind) -> Result<(), Stage2Error> {
            self.s2.map(ipa, pa, size, kind, VMID, &self.tlb)
        }

        fn unmap(&mut self, ipa: u64, size: u64) -> Result<(), Stage2Error> {
            self.s2.unmap(ipa, size, VMID, &self.tlb)
        }

        fn take_log(&self) -> Vec<Event> {
            core::mem::take(&mut *self.log.borrow_mut())
        }

        fn flushes(events: &[Event]) -> Vec<(u64, u64)> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::FlushIpa { ipa, size, .. } => Some((*ipa, *size)),
                    _ => None,
                })
                .collect()
        }

        fn level(&self, ipa: u64) -> Option<usize> {
            self.s2.leaf(ipa).map(|l| l.level)
        }
    }

    /// Every flush in `events` saw its whole range invalid, with this VMID.
    fn assert_broken_before_flush(events: &[Event]) {
        for e in events {
            if let Event::FlushIpa { vmid, ipa, size, valid_pages, first } = e {
                assert_eq!(*vmid, VMID);
                assert_eq!(*valid_pages, 0, "flush of {ipa:#x}+{size:#x} while still mapped: {first:?}");
            }
        }
    }

    #[test]
    fn blocks_where_ipa_pa_and_size_allow() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_0000, 4 * MIB, MemKind::Normal).unwrap();
        assert_eq!(f.s2.tables(), 2, "root + one level-2 table of 2 MiB blocks");
        assert_eq!(f.live.borrow().len(), 2);
        assert_eq!(f.level(0x4000_0000), Some(2));
        assert_eq!(f.level(0x403f_f000), Some(2));
        assert_eq!(f.s2.translate(0x4012_3456), Some((0x8012_3456, MemKind::Normal)));
        assert_eq!(f.s2.translate(0x4040_0000), None);
        assert_eq!(f.s2.translate(0x3fff_ffff), None);
        assert!(Fixture::flushes(&f.take_log()).is_empty(), "mapping over nothing needs no flush");

        // A PA off by a page: pages throughout.
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_1000, 4 * MIB, MemKind::Normal).unwrap();
        assert_eq!(f.s2.tables(), 4, "root, level 2, two level-3 tables");
        assert_eq!(f.level(0x4020_0000), Some(3));
        assert_eq!(f.s2.translate(0x403f_f000), Some((0x8040_0000, MemKind::Normal)));

        // 1 GiB aligned everywhere: one level-1 block, no table but the root.
        let mut f = Fixture::new();
        f.map(GIB, 4 * GIB, GIB, MemKind::Normal).unwrap();
        assert_eq!(f.s2.tables(), 1);
        assert_eq!(f.level(GIB + 0x1234_5000), Some(1));
        assert_eq!(f.s2.translate(2 * GIB - 1), Some((5 * GIB - 1, MemKind::Normal)));

        // Unaligned ends of a 2 MiB-congruent range: pages there, a block between.
        let mut f = Fixture::new();
        f.map(0x4010_0000, 0x8010_0000, 4 * MIB, MemKind::Normal).unwrap();
        assert_eq!(f.s2.tables(), 4);
        assert_eq!([0x4010_0000, 0x4030_0000, 0x404f_f000].map(|a| f.level(a)), [Some(3), Some(2), Some(3)]);
        assert_eq!(f.s2.translate(0x4050_0000), None);
        assert_eq!(f.s2.unreserved_allocations(), 0);
    }

    #[test]
    fn attributes_of_normal_and_device_memory() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x4000_0000, PAGE_SIZE, MemKind::Normal).unwrap();
        f.map(0x0900_0000, 0x0900_0000, PAGE_SIZE, MemKind::Device).unwrap();
        let normal = f.s2.leaf(0x4000_0000).unwrap().descriptor;
        let device = f.s2.leaf(0x0900_0000).unwrap().descriptor;
        // MemAttr (5:2), S2AP (7:6), SH (9:8), AF (10), XN (54), page (1:0).
        let fields = |d: u64| ((d >> 2) & 0xf, (d >> 6) & 3, (d >> 8) & 3, (d >> 10) & 1, (d >> 54) & 1, d & 3);
        assert_eq!(fields(normal), (0b1111, 0b11, 0b11, 1, 0, 0b11));
        assert_eq!(fields(device), (0b0001, 0b11, 0, 1, 1, 0b11));
        assert_eq!(f.s2.translate(0x0900_0010), Some((0x0900_0010, MemKind::Device)));
    }

    #[test]
    fn remapping_a_page_inside_a_block_splits_it_with_break_before_make() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_0000, 2 * MIB, MemKind::Normal).unwrap();
        assert_eq!(f.level(0x4000_5000), Some(2));
        f.take_log();

        f.map(0x4000_5000, 0x9000_0000, PAGE_SIZE, MemKind::Normal).unwrap();
        let events = f.take_log();
        assert_eq!(Fixture::flushes(&events), [(0x4000_0000, 2 * MIB)], "the whole block is broken");
        assert_broken_before_flush(&events);
        let flush = events.iter().position(|e| matches!(e, Event::FlushIpa { .. })).unwrap();
        let alloc = events.iter().position(|e| matches!(e, Event::Alloc(_))).unwrap();
        assert!(alloc < flush, "tables are reserved before anything is broken");
        assert_eq!(f.s2.translate(0x4000_5123), Some((0x9000_0123, MemKind::Normal)));
        assert_eq!(f.s2.translate(0x4000_4000), Some((0x8000_4000, MemKind::Normal)), "rest of the block restored");
        assert_eq!(f.s2.translate(0x401f_f000), Some((0x801f_f000, MemKind::Normal)));
        assert_eq!(f.level(0x4000_4000), Some(3));
        assert_eq!(f.s2.tables(), 3);
        assert_eq!(f.live.borrow().len(), 3, "unused reservations given back");
        assert_eq!(f.s2.unreserved_allocations(), 0);

        // Same for a 1 GiB block, split down to a page: two new tables.
        let mut f = Fixture::new();
        f.map(GIB, 8 * GIB, GIB, MemKind::Normal).unwrap();
        f.take_log();
        f.map(GIB + 0x20_3000, 0x1000, PAGE_SIZE, MemKind::Device).unwrap();
        let events = f.take_log();
        assert_eq!(Fixture::flushes(&events), [(GIB, GIB)]);
        assert_broken_before_flush(&events);
        assert_eq!(f.s2.translate(GIB + 0x20_3008), Some((0x1008, MemKind::Device)));
        assert_eq!(
            [GIB, GIB + 0x20_0000, GIB + 0x20_2000, GIB + 0x40_0000, 2 * GIB - PAGE_SIZE].map(|a| f.level(a)),
            [Some(2), Some(3), Some(3), Some(2), Some(2)]
        );
        assert_eq!(f.s2.translate(2 * GIB - 8), Some((9 * GIB - 8, MemKind::Normal)));
        assert_eq!(f.s2.tables(), 3);
    }

    #[test]
    fn changing_only_the_attributes_is_break_before_make_too() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x4000_0000, 4 * PAGE_SIZE, MemKind::Normal).unwrap();
        f.take_log();
        f.map(0x4000_1000, 0x4000_1000, 2 * PAGE_SIZE, MemKind::Device).unwrap();
        let events = f.take_log();
        assert_eq!(Fixture::flushes(&events), [(0x4000_1000, 2 * PAGE_SIZE)], "pages: only the changed ones");
        assert_broken_before_flush(&events);
        assert_eq!(f.s2.translate(0x4000_2000), Some((0x4000_2000, MemKind::Device)));
        assert_eq!(f.s2.translate(0x4000_3000), Some((0x4000_3000, MemKind::Normal)));
    }

    #[test]
    fn an_identical_remap_changes_nothing() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_0000, 4 * MIB, MemKind::Normal).unwrap();
        f.take_log();
        let tables = f.s2.tables();
        f.map(0x4000_0000, 0x8000_0000, 4 * MIB, MemKind::Normal).unwrap();
        f.map(0x4010_0000, 0x8010_0000, PAGE_SIZE, MemKind::Normal).unwrap();
        let events = f.take_log();
        assert!(Fixture::flushes(&events).is_empty(), "{events:?}");
        assert_eq!(f.s2.tables(), tables);
        assert_eq!(f.level(0x4010_0000), Some(2), "the block is not split");
        // Extending a mapping past its end: no flush either.
        f.map(0x4020_0000, 0x8020_0000, 4 * MIB, MemKind::Normal).unwrap();
        assert!(Fixture::flushes(&f.take_log()).is_empty());
        assert_eq!(f.s2.translate(0x405f_f000), Some((0x805f_f000, MemKind::Normal)));
    }

    #[test]
    fn unmapping_invalidates_flushes_then_frees() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_1000, 2 * MIB, MemKind::Normal).unwrap();
        f.map(0x4020_0000, 0x8020_0000, 2 * MIB, MemKind::Normal).unwrap();
        assert_eq!(f.s2.tables(), 3, "root, level 2, one level-3 table");
        f.take_log();

        // Nothing mapped there: nothing to do.
        f.unmap(0x5000_0000, 8 * MIB).unwrap();
        assert!(f.take_log().is_empty());

        // A page inside the block: the block is broken, the rest restored.
        f.unmap(0x4020_8000, PAGE_SIZE).unwrap();
        let events = f.take_log();
        assert_eq!(Fixture::flushes(&events), [(0x4020_0000, 2 * MIB)]);
        assert_broken_before_flush(&events);
        assert_eq!(f.s2.translate(0x4020_8000), None);
        assert_eq!(f.s2.translate(0x4020_7000), Some((0x8020_7000, MemKind::Normal)));
        assert_eq!(f.s2.translate(0x4020_9000), Some((0x8020_9000, MemKind::Normal)));
        assert_eq!(f.s2.tables(), 4);

        // Both whole 2 MiB ranges: their level-3 tables are unlinked, and
        // freed only after the flush that covers them.
        let before: BTreeSet<u64> = f.live.borrow().clone();
        f.unmap(0x4000_0000, 4 * MIB).unwrap();
        let events = f.take_log();
        assert_broken_before_flush(&events);
        assert_eq!(Fixture::flushes(&events), [(0x4000_0000, 4 * MIB)], "one run, the hole included");
        let last_flush = events.iter().rposition(|e| matches!(e, Event::FlushIpa { .. })).unwrap();
        let frees: Vec<usize> =
            events.iter().enumerate().filter(|(_, e)| matches!(e, Event::Free(_))).map(|(i, _)| i).collect();
        assert_eq!(frees.len(), 2, "two level-3 tables freed");
        assert!(frees.iter().all(|&i| i > last_flush), "freed before the flush: {events:?}");
        assert_eq!(f.s2.tables(), 2);
        assert!(f.live.borrow().is_subset(&before));
        for a in (0x4000_0000..0x4040_0000).step_by(PAGE_SIZE as usize) {
            assert_eq!(f.s2.translate(a), None);
        }
    }

    #[test]
    fn remapping_pages_as_a_block_frees_their_table() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_1000, 2 * MIB, MemKind::Normal).unwrap();
        f.unmap(0x4000_3000, PAGE_SIZE).unwrap();
        assert_eq!(f.s2.tables(), 3);
        f.take_log();
        f.map(0x4000_0000, 0x8000_0000, 2 * MIB, MemKind::Device).unwrap();
        let events = f.take_log();
        assert_eq!(Fixture::flushes(&events), [(0x4000_0000, 2 * MIB)]);
        assert_broken_before_flush(&events);
        assert_eq!(f.s2.tables(), 2, "the level-3 table is gone");
        assert_eq!(f.level(0x4000_3000), Some(2));
        assert_eq!(f.s2.translate(0x4000_3000), Some((0x8000_3000, MemKind::Device)));
    }

    #[test]
    fn destroy_flushes_the_vmid_then_frees_every_table() {
        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_1000, 6 * MIB, MemKind::Normal).unwrap();
        f.map(0x0900_0000, 0x0900_0000, PAGE_SIZE, MemKind::Device).unwrap();
        f.map(3 * GIB, 3 * GIB, GIB + 2 * MIB, MemKind::Normal).unwrap();
        f.unmap(0x4010_0000, PAGE_SIZE).unwrap();
        let tables = f.s2.tables();
        assert!(tables > 5);
        assert_eq!(f.live.borrow().len(), tables);
        f.take_log();
        let Fixture { s2, tlb, log, live, .. } = f;
        s2.destroy(VMID, &tlb);
        let events = log.borrow().clone();
        assert_eq!(events[0], Event::FlushVmid(VMID));
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Free(_))).count(), tables);
        assert!(live.borrow().is_empty(), "leaked: {:?}", live.borrow());

        // Dropping frees as well.
        let f = Fixture::new();
        let live = f.live.clone();
        drop(f);
        assert!(live.borrow().is_empty());
    }

    #[test]
    fn refuses_bad_ranges_and_changes_nothing() {
        let mut f = Fixture::new();
        let e = |r: Result<(), Stage2Error>| r.unwrap_err();
        assert_eq!(
            e(f.map(0x4000_0800, 0, PAGE_SIZE, MemKind::Normal)),
            Stage2Error::Unaligned { what: "IPA", value: 0x4000_0800 }
        );
        assert_eq!(
            e(f.map(0x4000_0000, 0x10, PAGE_SIZE, MemKind::Normal)),
            Stage2Error::Unaligned { what: "PA", value: 0x10 }
        );
        assert_eq!(e(f.map(0x4000_0000, 0, 100, MemKind::Normal)), Stage2Error::Unaligned { what: "size", value: 100 });
        assert!(matches!(
            e(f.map(IPA_SPACE - PAGE_SIZE, 0, 2 * PAGE_SIZE, MemKind::Normal)),
            Stage2Error::IpaOutOfRange { .. }
        ));
        assert!(matches!(e(f.map(IPA_SPACE, 0, PAGE_SIZE, MemKind::Normal)), Stage2Error::IpaOutOfRange { .. }));
        assert!(matches!(
            e(f.map(0, u64::MAX - 0xfff, 2 * PAGE_SIZE, MemKind::Normal)),
            Stage2Error::Overflow { what: "PA", .. }
        ));
        assert!(matches!(
            e(f.map(0, PA_SPACE - PAGE_SIZE, 2 * PAGE_SIZE, MemKind::Normal)),
            Stage2Error::PaOutOfRange { .. }
        ));
        assert!(matches!(e(f.unmap(u64::MAX - 0xfff, 2 * PAGE_SIZE)), Stage2Error::Overflow { what: "IPA", .. }));
        assert!(f.map(IPA_SPACE - PAGE_SIZE, 0x1000, PAGE_SIZE, MemKind::Normal).is_ok(), "the last page is fine");
        assert!(f.map(0x1000, 0x1000, 0, MemKind::Normal).is_ok(), "an empty range is nothing to do");
        assert_eq!(f.s2.translate(IPA_SPACE), None);
        assert_eq!(
            Stage2Error::IpaOutOfRange { ipa: 0x7f_ffff_f000, size: 0x2000 }.to_string(),
            "stage 2: IPA range 0x7ffffff000 + 0x2000 reaches past the 39-bit IPA space"
        );
    }

    #[test]
    fn running_out_of_memory_is_an_error_that_changes_nothing() {
        let log: Log = Rc::default();
        let live: Rc<RefCell<BTreeSet<u64>>> = Rc::default();
        let frames = FakeFrames { log, live: live.clone(), limit: Rc::new(RefCell::new(0)) };
        assert!(matches!(Stage2::new(frames), Err(Stage2Error::OutOfMemory { tables: 1 })));
        assert!(live.borrow().is_empty());

        let mut f = Fixture::new();
        f.map(0x4000_0000, 0x8000_0000, 2 * MIB, MemKind::Normal).unwrap();
        *f.limit.borrow_mut() = f.live.borrow().len() + 1;
        f.take_log();
        // Pages throughout 4 MiB need three more tables.
        let r = f.map(0x8000_0000, 0x1000, 4 * MIB, MemKind::Normal);
        assert!(matches!(r, Err(Stage2Error::OutOfMemory { .. })), "{r:?}");
        assert_eq!(f.s2.translate(0x8000_0000), None);
        // Splitting the block needs one table; the reservation, which does not
        // look at which tables exist, counts a level-2 one too: refused
        // before anything is broken.
        let r = f.map(0x4000_5000, 0x1000, PAGE_SIZE, MemKind::Normal);
        assert!(matches!(r, Err(Stage2Error::OutOfMemory { .. })), "{r:?}");
        let events = f.take_log();
        assert!(Fixture::flushes(&events).is_empty(), "nothing was broken: {events:?}");
        assert_eq!(f.level(0x4000_5000), Some(2));
        assert_eq!(f.s2.translate(0x4000_5000), Some((0x8000_5000, MemKind::Normal)));
        assert_eq!(f.live.borrow().len(), f.s2.tables(), "reservations given back");
        *f.limit.borrow_mut() = usize::MAX;
        f.map(0x4000_5000, 0x1000, PAGE_SIZE, MemKind::Normal).unwrap();
        assert_eq!(f.s2.translate(0x4000_5000), Some((0x1000, MemKind::Normal)));
    }

    #[test]
    fn table_counts_bound_what_is_allocated() {
        let n = |ranges: &[(u64, u64, u64)]| tables_needed(ranges);
        assert_eq!(n(&[(0, 2 * MIB, 0)]), 1, "one level-2 table");
        assert_eq!(n(&[(0, GIB, 0)]), 0, "a level-1 block");
        assert_eq!(n(&[(0, GIB, 2 * MIB)]), 1, "2 MiB blocks");
        assert_eq!(n(&[(0, GIB, PAGE_SIZE)]), 1 + 512, "pages");
        assert_eq!(n(&[(0x1000, 0x2000, 0x1000)]), 2);
        assert_eq!(n(&[(GIB - PAGE_SIZE, GIB + PAGE_SIZE, GIB - PAGE_SIZE)]), 4, "straddles 1 GiB");
        // A page remapped inside a 2 MiB block, and the block's two other
        // parts: the same two entries.
        assert_eq!(n(&[(0x5000, 0x6000, 0x9000_0000), (0, 0x5000, 0), (0x6000, 2 * MIB, 0x6000)]), 2);
    }

    /// One operation of the random sequences below, on a window that straddles
    /// the 1 GiB boundary.
    #[derive(Clone, Debug)]
    enum Op {
        Map { page: u64, pages: u64, pa_shift: u64, device: bool },
        Unmap { page: u64, pages: u64 },
    }

    const WINDOW: u64 = GIB - 4 * MIB;
    const WINDOW_PAGES: u64 = 8 * MIB / PAGE_SIZE;

    fn op() -> impl Strategy<Value = Op> {
        let page = prop_oneof![(0..4u64).prop_map(|c| c * 512), 0..WINDOW_PAGES];
        let pages = prop_oneof![Just(512u64), Just(1024), 1..64u64, 1..WINDOW_PAGES];
        let shift = prop_oneof![Just(0u64), Just(PAGE_SIZE), Just(2 * MIB), Just(GIB + 6 * MIB)];
        prop_oneof![
            3 => (page.clone(), pages.clone(), shift, any::<bool>())
                .prop_map(|(page, pages, pa_shift, device)| Op::Map { page, pages, pa_shift, device }),
            1 => (page, pages).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(128))]

        /// Random maps and unmaps against a per-page model: translations
        /// match it after every step, every mapping that changed was flushed
        /// while invalid, reservations always covered what was allocated,
        /// and nothing leaks.
        #[test]
        fn random_changes_match_a_page_model(ops in proptest::collection::vec(op(), 1..24)) {
            let mut f = Fixture::new();
            let mut model: BTreeMap<u64, (u64, MemKind)> = BTreeMap::new();
            for op in &ops {
                let old = model.clone();
                match *op {
                    Op::Map { page, pages, pa_shift, device } => {
                        let pages = pages.min(WINDOW_PAGES - page);
                        let ipa = WINDOW + page * PAGE_SIZE;
                        let kind = if device { MemKind::Device } else { MemKind::Normal };
                        f.map(ipa, ipa + pa_shift, pages * PAGE_SIZE, kind).unwrap();
                        for p in 0..pages {
                            model.insert(ipa + p * PAGE_SIZE, (ipa + pa_shift + p * PAGE_SIZE, kind));
                        }
                    }
                    Op::Unmap { page, pages } => {
                        let pages = pages.min(WINDOW_PAGES - page);
                        let ipa = WINDOW + page * PAGE_SIZE;
                        f.unmap(ipa, pages * PAGE_SIZE).unwrap();
                        for p in 0..pages {
                            model.remove(&(ipa + p * PAGE_SIZE));
                        }
                    }
                }
                let events = f.take_log();
                assert_broken_before_flush(&events);
                let flushed = Fixture::flushes(&events);
                for page in 0..WINDOW_PAGES {
                    let ipa = WINDOW + page * PAGE_SIZE;
                    let now = model.get(&ipa).copied();
                    prop_assert_eq!(f.s2.translate(ipa), now, "IPA {:#x} after {:?}", ipa, op);
                    if let Some(was) = old.get(&ipa) {
                        if now != Some(*was) {
                            prop_assert!(
                                flushed.iter().any(|&(s, n)| (s..s + n).contains(&ipa)),
                                "IPA {:#x} changed without a flush", ipa
                            );
                        }
                    }
                }
                prop_assert_eq!(f.s2.unreserved_allocations(), 0);
                prop_assert_eq!(f.live.borrow().len(), f.s2.tables());
            }
            let live = f.live.clone();
            drop(f);
            prop_assert!(live.borrow().is_empty());
        }
    }
}
