//! A fixed pool of page-table pages for an identity map, so that el2 (which
//! never allocates) and the host (before its heap exists) can build their
//! stage-1 tables with `aarch64-paging`.

use aarch64_paging::descriptor::{PagingAttributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, MemoryRegion, PageTable, Translation, TranslationRegime};
use aarch64_paging::{MapError, Mapping};
use core::ptr::NonNull;

/// One 4 KiB page-table page.
#[repr(C, align(4096))]
pub struct TablePage(pub [u8; 4096]);

impl TablePage {
    pub const ZERO: Self = Self([0; 4096]);
}

/// Hands out pages of a pool one by one; physical address = virtual address.
pub struct PoolTranslation<'a> {
    pages: &'a mut [TablePage],
    next: usize,
}

impl<'a> PoolTranslation<'a> {
    /// `pages` must be zeroed (an all-zero page is an empty table) and
    /// identity mapped.
    pub fn new(pages: &'a mut [TablePage]) -> Self {
        Self { pages, next: 0 }
    }

    /// Pages handed out so far.
    pub fn used(&self) -> usize {
        self.next
    }
}

impl<A: PagingAttributes> Translation<A> for PoolTranslation<'_> {
    fn allocate_table(&mut self) -> (NonNull<PageTable<A>>, PhysicalAddress) {
        // Running out is a build-time sizing mistake, found at boot.
        let page = self.pages.get_mut(self.next).expect("page-table pool exhausted");
        self.next += 1;
        let ptr = NonNull::from(page).cast::<PageTable<A>>();
        (ptr, PhysicalAddress(ptr.as_ptr() as usize))
    }

    unsafe fn deallocate_table(&mut self, _page_table: NonNull<PageTable<A>>) {
        // Boot-time maps are never torn down; the page stays used.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<A>> {
        NonNull::new(pa.0 as *mut PageTable<A>).expect("page table at physical address 0")
    }
}

/// Maps the low 4 GiB as device memory and then each `(base, size)` RAM
/// range as normal memory, identity mapped, on a map that is not live yet.
///
/// # Errors
/// A range beyond what the map's root level covers.
pub fn map_identity<R: TranslationRegime>(
    map: &mut Mapping<PoolTranslation<'_>, R>,
    ram: &[(u64, u64)],
    device: R::Attributes,
    normal: R::Attributes,
) -> Result<(), MapError> {
    map.map_range(&MemoryRegion::new(0, 0x1_0000_0000), PhysicalAddress(0), device, Constraints::empty())?;
    for &(base, size) in ram.iter().filter(|&&(_, size)| size != 0) {
        let (base, end) = (base as usize, (base + size) as usize);
        map.map_range(&MemoryRegion::new(base, end), PhysicalAddress(base), normal, Constraints::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aarch64_paging::descriptor::El1Attributes;
    use aarch64_paging::paging::{El1And0, VaRange};

    #[test]
    fn builds_an_identity_map_from_the_pool() {
        let mut pages: Vec<TablePage> = (0..8).map(|_| TablePage::ZERO).collect();
        let mut map = Mapping::with_asid_and_va_range(PoolTranslation::new(&mut pages), 0, 1, El1And0, VaRange::Lower);
        let normal = El1Attributes::VALID | El1Attributes::ACCESSED | El1Attributes::ATTRIBUTE_INDEX_1;
        map.map_range(
            &MemoryRegion::new(0x4000_0000, 0x4020_1000),
            PhysicalAddress(0x4000_0000),
            normal,
            Constraints::empty(),
        )
        .unwrap();
        // Root, then a level-2 table, then a level-3 table for the last 4 KiB.
        assert_eq!(map.translation().used(), 3);
        let mut seen = 0;
        map.walk_range(&MemoryRegion::new(0x4020_0000, 0x4020_1000), &mut |_r, d, _l| {
            seen += 1;
            assert!(d.is_valid());
            assert_eq!(d.output_address().0, 0x4020_0000);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 1);
    }
}
