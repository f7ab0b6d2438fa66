//! What a VM's stage 2 maps (docs/guests.md §1): its RAM block as Normal
//! memory at [`map::RAM`] and, for a GICv2 guest, the hardware's virtual
//! CPU interface (GICV) as Device memory where the guest expects its GICC.
//! Nothing else of the host's memory (its image, heap, free frames, the
//! translation tables themselves) is ever mapped to a guest; the tests walk
//! the tables to check it.

use crate::devices::map;
use crate::mm::stage2::{MemKind, Stage2, Stage2Tlb, TableFrames};
use alloc::string::String;

/// A VM's RAM: `size` bytes at IPA `ipa`, backed by host PAs from `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamBlock {
    pub ipa: u64,
    pub pa: u64,
    pub size: u64,
}

/// Maps `ram` and, when `gicv` is the GICV frame's PA (GICv2 guests only),
/// that frame at [`map::GIC_CPU`] into a new VM's `stage2`.
///
/// # Errors
/// The stage-2 change refused (a misaligned range, no memory for tables),
/// as a message.
pub fn map_guest<T: TableFrames>(
    stage2: &mut Stage2<T>,
    ram: RamBlock,
    gicv: Option<u64>,
    tlb: &dyn Stage2Tlb,
) -> Result<(), String> {
    stage2.map(ram.ipa, ram.pa, ram.size, MemKind::Normal, 0, tlb).map_err(|e| alloc::format!("stage 2: {e}"))?;
    if let Some(gicv) = gicv {
        stage2
            .map(map::GIC_CPU, gicv, map::GIC_CPU_SIZE, MemKind::Device, 0, tlb)
            .map_err(|e| alloc::format!("stage 2 (GICV): {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::stage2::tests::Fixture;
    use crate::mm::stage2::PAGE_SIZE;
    use alloc::vec::Vec;
    use core::ops::Range;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    /// The fake board: 1 GiB of RAM at 0x4000_0000, the first 32 MiB of it
    /// the hypervisor's (el2's and the host's images, the host's heap,
    /// el2's pool), the rest the frame allocator's, guest RAM among it.
    const BOARD_RAM: Range<u64> = 0x4000_0000..0x8000_0000;
    const HYPERVISOR: Range<u64> = 0x4000_0000..0x4200_0000;
    /// QEMU virt's GICV frame (GICv2).
    const GICV: u64 = 0x0804_0000;

    fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
        a.start < b.end && b.start < a.end
    }

    fn inside(a: &Range<u64>, b: &Range<u64>) -> bool {
        b.start <= a.start && a.end <= b.end
    }

    /// Walks every valid leaf of `f`'s tables and checks that each maps an
    /// IPA range of the guest's RAM to the same place in its block, or the
    /// GICC range to the GICV frame; never the hypervisor's memory or a
    /// frame the tables live in. Returns the bytes mapped.
    fn check_leaves(f: &Fixture, ram: RamBlock, gicv: Option<u64>) -> Result<u64, TestCaseError> {
        let block = ram.pa..ram.pa + ram.size;
        let gicc = map::GIC_CPU..map::GIC_CPU + map::GIC_CPU_SIZE;
        let tables: Vec<Range<u64>> = f.live.borrow().iter().map(|&t| t..t + PAGE_SIZE).collect();
        let mut mapped = 0;
        for (ipa, size, leaf) in f.s2.leaves() {
            let input = ipa..ipa + size;
            let output = leaf.pa..leaf.pa + size;
            prop_assert!(!overlaps(&output, &HYPERVISOR), "{:#x?} maps the hypervisor's {:#x?}", input, output);
            for t in &tables {
                prop_assert!(!overlaps(&output, t), "{:#x?} maps the translation table at {:#x}", input, t.start);
            }
            if inside(&output, &block) {
                prop_assert_eq!(leaf.kind, MemKind::Normal);
                prop_assert_eq!(ipa - ram.ipa, leaf.pa - ram.pa, "RAM at IPA {:#x} is another part of the block", ipa);
                prop_assert!(inside(&input, &(ram.ipa..ram.ipa + ram.size)));
            } else {
                let gicv = gicv.map(|g| g..g + map::GIC_CPU_SIZE);
                prop_assert!(gicv.as_ref().is_some_and(|g| inside(&output, g)), "{:#x?} maps {:#x?}", input, output);
                prop_assert_eq!(leaf.kind, MemKind::Device);
                prop_assert!(inside(&input, &gicc));
            }
            mapped += size;
        }
        Ok(mapped)
    }

    /// A guest's block as the frame allocator may give it: any 4 KiB-aligned
    /// PA of the board's RAM outside the hypervisor's, 2 MiB multiples.
    fn ram() -> impl Strategy<Value = RamBlock> {
        let free = (BOARD_RAM.end - HYPERVISOR.end) / PAGE_SIZE;
        (1u64..9, 0..free, any::<bool>()).prop_map(move |(mib2, page, aligned)| {
            let size = mib2 * 2 * MIB;
            let mut pa = HYPERVISOR.end + page * PAGE_SIZE;
            if aligned {
                pa &= !(2 * MIB - 1);
            }
            let pa = pa.min(BOARD_RAM.end - size).max(HYPERVISOR.end);
            RamBlock { ipa: map::RAM, pa, size }
        })
    }

    /// The fake's tables are host heap pages: never where a guest block of
    /// this test lies, or the test says nothing.
    fn tables_clear_of(f: &Fixture, ram: RamBlock) -> bool {
        f.live.borrow().iter().all(|&t| !overlaps(&(t..t + PAGE_SIZE), &(ram.pa..ram.pa + ram.size)))
    }

    #[test]
    fn a_new_vm_maps_its_ram_and_on_gicv2_the_gicv_frame_only() {
        for gicv in [None, Some(GICV)] {
            let mut f = Fixture::new();
            let ram = RamBlock { ipa: map::RAM, pa: 0x4800_0000, size: 64 * MIB };
            map_guest(&mut f.s2, ram, gicv, &f.tlb).unwrap();
            assert!(tables_clear_of(&f, ram));
            let mapped = check_leaves(&f, ram, gicv).unwrap();
            assert_eq!(mapped, ram.size + gicv.map_or(0, |_| map::GIC_CPU_SIZE), "all of RAM and GICC, no more");
            // Through the walker el2 programs VTTBR_EL2 for: RAM's first and last byte,
            // then nothing.
            assert_eq!(f.s2.translate(map::RAM), Some((ram.pa, MemKind::Normal)));
            assert_eq!(f.s2.translate(map::RAM + ram.size - 1), Some((ram.pa + ram.size - 1, MemKind::Normal)));
            assert_eq!(f.s2.translate(map::RAM + ram.size), None);
            assert_eq!(f.s2.translate(map::GIC_CPU).is_some(), gicv.is_some());
        }
    }

    /// The check can fail: a page of a table, or of the hypervisor, mapped
    /// anywhere is seen.
    #[test]
    fn a_table_or_the_hypervisor_mapped_is_seen() {
        let ram = RamBlock { ipa: map::RAM, pa: 0x4800_0000, size: 2 * MIB };
        for what in ["translation table", "hypervisor's"] {
            let mut f = Fixture::new();
            map_guest(&mut f.s2, ram, None, &f.tlb).unwrap();
            let pa = if what == "hypervisor's" { HYPERVISOR.start + 0x5000 } else { *f.live.borrow().first().unwrap() };
            f.s2.map(0x1_0000_0000, pa, PAGE_SIZE, MemKind::Normal, 0, &f.tlb).unwrap();
            let e = check_leaves(&f, ram, None).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Pages `[page, page + pages)` of the guest's RAM again, to the
        /// block's pages from `pa_page`, as `kind`.
        Map {
            page: u64,
            pages: u64,
            pa_page: u64,
            device: bool,
        },
        Unmap {
            page: u64,
            pages: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let page = prop_oneof![(0u64..8).prop_map(|m| m * 512), 0u64..4096];
        let pages = prop_oneof![Just(512u64), 1u64..64, 1u64..4096];
        prop_oneof![
            (page.clone(), pages.clone(), 0u64..4096, any::<bool>())
                .prop_map(|(page, pages, pa_page, device)| Op::Map { page, pages, pa_page, device }),
            (page, pages).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(128))]

        /// Any block, GICv2 or GICv3, then any remaps and unmaps within the
        /// guest's RAM and its block: every leaf still maps RAM or GICV,
        /// never the hypervisor's memory or a table.
        #[test]
        fn no_leaf_ever_maps_the_hypervisor(
            ram in ram(),
            v2: bool,
            ops in prop::collection::vec(op(), 0..12),
        ) {
            let gicv = v2.then_some(GICV);
            let mut f = Fixture::new();
            map_guest(&mut f.s2, ram, gicv, &f.tlb).unwrap();
            prop_assume!(tables_clear_of(&f, ram));
            let mapped = check_leaves(&f, ram, gicv)?;
            prop_assert_eq!(mapped, ram.size + gicv.map_or(0, |_| map::GIC_CPU_SIZE));
            let pages = ram.size / PAGE_SIZE;
            for op in ops {
                match op {
                    Op::Map { page, pages: n, pa_page, device } => {
                        let page = page % pages;
                        let n = n.min(pages - page);
                        let pa_page = pa_page % (pages - n + 1);
                        let kind = if device { MemKind::Device } else { MemKind::Normal };
                        let (ipa, pa) = (ram.ipa + page * PAGE_SIZE, ram.pa + pa_page * PAGE_SIZE);
                        f.s2.map(ipa, pa, n * PAGE_SIZE, kind, 0, &f.tlb).unwrap();
                    }
                    Op::Unmap { page, pages: n } => {
                        let page = page % pages;
                        let n = n.min(pages - page);
                        f.s2.unmap(ram.ipa + page * PAGE_SIZE, n * PAGE_SIZE, 0, &f.tlb).unwrap();
                    }
                }
                prop_assume!(tables_clear_of(&f, ram));
                check_leaves_anywhere_in_block(&f, ram, gicv)?;
            }
        }
    }

    /// After remaps inside the block an IPA may map another page of it, as
    /// Device or Normal: each leaf still lies in the block (for IPAs in
    /// RAM) or the GICV frame (for GICC), and never on the hypervisor or a
    /// table.
    fn check_leaves_anywhere_in_block(f: &Fixture, ram: RamBlock, gicv: Option<u64>) -> Result<(), TestCaseError> {
        let block = ram.pa..ram.pa + ram.size;
        let tables: Vec<Range<u64>> = f.live.borrow().iter().map(|&t| t..t + PAGE_SIZE).collect();
        for (ipa, size, leaf) in f.s2.leaves() {
            let input = ipa..ipa + size;
            let output = leaf.pa..leaf.pa + size;
            prop_assert!(!overlaps(&output, &HYPERVISOR), "{:#x?} maps the hypervisor's {:#x?}", input, output);
            prop_assert!(tables.iter().all(|t| !overlaps(&output, t)), "{:#x?} maps a translation table", input);
            if inside(&input, &(ram.ipa..ram.ipa + ram.size)) {
                prop_assert!(inside(&output, &block), "{:#x?} maps {:#x?}, outside the block", input, output);
            } else {
                let gicv = gicv.map(|g| g..g + map::GIC_CPU_SIZE);
                prop_assert!(inside(&input, &(map::GIC_CPU..map::GIC_CPU + map::GIC_CPU_SIZE)), "{:#x?}", input);
                prop_assert!(gicv.as_ref().is_some_and(|g| inside(&output, g)));
            }
        }
        Ok(())
    }
}
