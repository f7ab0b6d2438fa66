//! A VM's MMIO bus: each emulated device registers the guest-physical range
//! it answers when the VM is built, and a stage-2 data abort looks its
//! handler up by address (the way Bao's `vm_emul_add_mem` and hvisor's
//! `mmio_region_register` tables are used). The table is fixed once built:
//! no lock and no allocation on the lookup path.
//!
//! A device is handed the VM it belongs to (`H`), so it can reach what it
//! shares with the rest of the VM (the vGIC, guest memory) without the VM's
//! type being known here.

use crate::gic::vgic::Kicks;
use crate::vm::stats::ExitKind;
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::fmt;

/// Most ranges one bus holds (QEMU virt's map has five emulated ones).
pub const MAX_RANGES: usize = 8;

/// An emulated device behind stage-2 faults: it sees the VM, the accessing
/// vCPU, the offset into its range and the access size in bytes (1, 2, 4 or
/// 8) and, for a write, the value truncated to that size.
pub trait MmioDevice<H: ?Sized>: Send + Sync {
    fn read(&self, vm: &H, vcpu: usize, offset: u64, size: u8) -> u64;

    /// Returns the vCPUs to kick for what the write changed.
    fn write(&self, vm: &H, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks;
}

/// A device the VM keeps a handle on too (to reset it, say).
impl<H: ?Sized, D: MmioDevice<H> + ?Sized> MmioDevice<H> for Arc<D> {
    #[inline(always)]
    fn read(&self, vm: &H, vcpu: usize, offset: u64, size: u8) -> u64 {
        (**self).read(vm, vcpu, offset, size)
    }

    #[inline(always)]
    fn write(&self, vm: &H, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        (**self).write(vm, vcpu, offset, size, value)
    }
}

/// A range that cannot be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// Empty, or past the end of the address space.
    BadRange {
        base: u64,
        size: u64,
    },
    /// Overlaps the range registered at `other`.
    Overlap {
        base: u64,
        other: u64,
    },
    Full,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::BadRange { base, size } => write!(f, "MMIO range {base:#x} + {size:#x} is empty or wraps"),
            BusError::Overlap { base, other } => {
                write!(f, "MMIO range at {base:#x} overlaps the one registered at {other:#x}")
            }
            BusError::Full => write!(f, "more than {MAX_RANGES} MMIO ranges"),
        }
    }
}

/// What unused entries hold; never looked up (their size is 0).
struct Nothing;

impl<H: ?Sized> MmioDevice<H> for Nothing {
    fn read(&self, _: &H, _: usize, _: u64, _: u8) -> u64 {
        0
    }

    fn write(&self, _: &H, _: usize, _: u64, _: u8, _: u64) -> Kicks {
        Kicks::default()
    }
}

/// The device an address falls in.
pub struct Hit<'a, H: ?Sized> {
    pub device: &'a dyn MmioDevice<H>,
    /// From the start of the device's range.
    pub offset: u64,
    pub kind: ExitKind,
}

/// Ranges sorted by base. Unused entries have base `u64::MAX` and size 0,
/// which no address matches, so the lookup is a fixed binary search.
/// (Devices are boxed, not `Arc<dyn>`: the box points at the device itself,
/// where an `Arc<dyn>` costs the lookup its data offset from the vtable.)
pub struct MmioBus<H: ?Sized> {
    bases: [u64; MAX_RANGES],
    sizes: [u64; MAX_RANGES],
    /// Unused entries hold [`Nothing`] (a box of nothing allocates
    /// nothing), which keeps an `Option` test off the lookup.
    devices: [Box<dyn MmioDevice<H>>; MAX_RANGES],
    /// What an access counts as in the VM's statistics.
    kinds: [ExitKind; MAX_RANGES],
    len: usize,
}

impl<H: ?Sized> Default for MmioBus<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: ?Sized> MmioBus<H> {
    pub fn new() -> Self {
        Self {
            bases: [u64::MAX; MAX_RANGES],
            sizes: [0; MAX_RANGES],
            devices: core::array::from_fn(|_| Box::new(Nothing) as Box<dyn MmioDevice<H>>),
            kinds: [ExitKind::Other; MAX_RANGES],
            len: 0,
        }
    }

    /// Adds `device` for `[base, base + size)`.
    ///
    /// # Errors
    /// The range is empty, wraps, overlaps one already registered, or the
    /// bus is full; the bus is unchanged.
    pub fn register(
        &mut self,
        base: u64,
        size: u64,
        kind: ExitKind,
        device: Box<dyn MmioDevice<H>>,
    ) -> Result<(), BusError> {
        // `u64::MAX` marks unused entries, so no range may reach it.
        if size == 0 || base.checked_add(size).is_none_or(|end| end == u64::MAX) {
            return Err(BusError::BadRange { base, size });
        }
        let n = self.len;
        if let Some(i) = (0..n).find(|&i| base < self.bases[i] + self.sizes[i] && self.bases[i] < base + size) {
            return Err(BusError::Overlap { base, other: self.bases[i] });
        }
        if n == MAX_RANGES {
            return Err(BusError::Full);
        }
        let at = self.bases[..n].partition_point(|&b| b < base);
        self.bases.copy_within(at..n, at + 1);
        self.sizes.copy_within(at..n, at + 1);
        self.kinds.copy_within(at..n, at + 1);
        self.devices[at..=n].rotate_right(1);
        self.bases[at] = base;
        self.sizes[at] = size;
        self.kinds[at] = kind;
        self.devices[at] = device;
        self.len = n + 1;
        Ok(())
    }

    /// The device `ipa` falls in and the offset into its range.
    #[inline(always)]
    pub fn lookup(&self, ipa: u64) -> Option<Hit<'_, H>> {
        // The last entry whose base is at most `ipa`, in three steps (the
        // table's 8 entries); then whether `ipa` lies inside it.
        const _: () = assert!(MAX_RANGES == 8);
        let b = &self.bases;
        let mut i = if ipa >= b[4] { 4 } else { 0 };
        if ipa >= b[(i + 2) & 7] {
            i += 2;
        }
        if ipa >= b[(i + 1) & 7] {
            i += 1;
        }
        let i = i & 7;
        let offset = ipa.wrapping_sub(b[i]);
        if offset >= self.sizes[i] {
            return None;
        }
        Some(Hit { device: &*self.devices[i], offset, kind: self.kinds[i] })
    }

    /// The registered ranges as (base, size), lowest first.
    #[cfg(test)]
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.bases[..self.len].iter().copied().zip(self.sizes[..self.len].iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Answers reads with its tag.
    struct Tag(u64);

    impl MmioDevice<()> for Tag {
        fn read(&self, _: &(), _: usize, _: u64, _: u8) -> u64 {
            self.0
        }

        fn write(&self, _: &(), _: usize, _: u64, _: u8, _: u64) -> Kicks {
            Kicks::default()
        }
    }

    fn bus(ranges: &[(u64, u64)]) -> MmioBus<()> {
        let mut bus = MmioBus::new();
        for (tag, &(base, size)) in ranges.iter().enumerate() {
            bus.register(base, size, ExitKind::Mmio, Box::new(Tag(tag as u64))).unwrap();
        }
        bus
    }

    /// The tag of the device `ipa` hits, and the offset.
    fn hit(bus: &MmioBus<()>, ipa: u64) -> Option<(u64, u64)> {
        bus.lookup(ipa).map(|h| (h.device.read(&(), 0, 0, 4), h.offset))
    }

    #[test]
    fn first_and_last_byte_hit_and_neighbours_miss() {
        // QEMU virt's distributor, UART and virtio ranges, out of order.
        let b = bus(&[(0x0900_0000, 0x1000), (0x0800_0000, 0x1_0000), (0x0a00_0000, 0x4000)]);
        assert_eq!(hit(&b, 0x0800_0000), Some((1, 0)));
        assert_eq!(hit(&b, 0x0800_ffff), Some((1, 0xffff)));
        assert_eq!(hit(&b, 0x0801_0000), None);
        assert_eq!(hit(&b, 0x07ff_ffff), None);
        assert_eq!(hit(&b, 0x0900_0018), Some((0, 0x18)));
        assert_eq!(hit(&b, 0x0900_1000), None);
        assert_eq!(hit(&b, 0x0a00_3fff), Some((2, 0x3fff)));
        assert_eq!(hit(&b, 0x0a00_4000), None);
        assert_eq!(hit(&b, 0), None);
        assert_eq!(hit(&b, u64::MAX), None);
        assert_eq!(
            b.ranges().collect::<Vec<_>>(),
            [(0x0800_0000, 0x1_0000), (0x0900_0000, 0x1000), (0x0a00_0000, 0x4000)]
        );
    }

    #[test]
    fn every_entry_of_a_full_bus_is_found() {
        // Adjacent ranges, registered from the top down: no gap between them.
        let ranges: Vec<(u64, u64)> = (0..MAX_RANGES as u64).rev().map(|i| (0x1000 * (i + 1), 0x1000)).collect();
        let b = bus(&ranges);
        for i in 0..MAX_RANGES as u64 {
            let tag = MAX_RANGES as u64 - 1 - i;
            assert_eq!(hit(&b, 0x1000 * (i + 1)), Some((tag, 0)), "range {i}");
            assert_eq!(hit(&b, 0x1000 * (i + 2) - 1), Some((tag, 0xfff)), "range {i}");
        }
        assert_eq!(hit(&b, 0xfff), None);
        assert_eq!(hit(&b, 0x1000 * (MAX_RANGES as u64 + 1)), None);
        let mut b = b;
        assert_eq!(b.register(0x10_0000, 0x1000, ExitKind::Mmio, Box::new(Tag(9))), Err(BusError::Full));
    }

    #[test]
    fn an_empty_bus_finds_nothing() {
        let b = bus(&[]);
        assert!(hit(&b, 0).is_none() && hit(&b, 0x0900_0000).is_none() && hit(&b, u64::MAX).is_none());
    }

    #[test]
    fn overlaps_are_refused_and_leave_the_bus_unchanged() {
        let mut b = bus(&[(0x0808_0000, 0x2_0000), (0x0900_0000, 0x1000)]);
        let mut add = |base, size| b.register(base, size, ExitKind::Gic, Box::new(Tag(7)));
        assert_eq!(add(0x0809_f000, 0x2000), Err(BusError::Overlap { base: 0x0809_f000, other: 0x0808_0000 }));
        assert_eq!(add(0x0800_0000, 0x10_0000), Err(BusError::Overlap { base: 0x0800_0000, other: 0x0808_0000 }));
        assert_eq!(add(0x0900_0fff, 1), Err(BusError::Overlap { base: 0x0900_0fff, other: 0x0900_0000 }));
        assert_eq!(add(0x0900_0000, 0x1000), Err(BusError::Overlap { base: 0x0900_0000, other: 0x0900_0000 }));
        assert_eq!(add(0x0a00_0000, 0), Err(BusError::BadRange { base: 0x0a00_0000, size: 0 }));
        assert_eq!(add(u64::MAX - 0xfff, 0x1000), Err(BusError::BadRange { base: u64::MAX - 0xfff, size: 0x1000 }));
        // Touching is not overlapping.
        assert_eq!(add(0x080a_0000, 0x4_0000), Ok(()));
        assert_eq!(add(0x0800_0000, 0x8_0000), Ok(()));
        assert_eq!(hit(&b, 0x0808_0000), Some((0, 0)));
        assert_eq!(hit(&b, 0x080a_0000), Some((7, 0)));
        assert_eq!(hit(&b, 0x0807_ffff), Some((7, 0x7_ffff)));
        assert_eq!(b.ranges().count(), 4);
    }

    #[test]
    fn the_kind_registered_comes_back() {
        let mut b = MmioBus::<()>::new();
        b.register(0x0800_0000, 0x1_0000, ExitKind::Gic, Box::new(Tag(0))).unwrap();
        b.register(0x0900_0000, 0x1000, ExitKind::Mmio, Box::new(Tag(1))).unwrap();
        assert_eq!(b.lookup(0x0800_0004).map(|h| h.kind), Some(ExitKind::Gic));
        assert_eq!(b.lookup(0x0900_0004).map(|h| h.kind), Some(ExitKind::Mmio));
    }
}
