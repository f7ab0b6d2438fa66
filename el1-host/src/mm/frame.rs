//! The physical frame allocator: a buddy allocator over 4 KiB frames.

use super::PhysAddr;

/// The size of a frame.
pub const FRAME_SIZE: usize = 4096;
const FRAME_SHIFT: u32 = FRAME_SIZE.trailing_zeros();

/// Free lists of 2^0 .. 2^31 frames (blocks up to 8 TiB).
const ORDER: usize = 32;

/// Physical memory in 4 KiB frames. A request for `count` frames takes a
/// block of `count` rounded up to a power of two, aligned to its size.
///
/// The free lists live in `alloc` collections, so the global allocator must
/// work before the first call (the host heap's seed arena sees to that).
pub struct FrameAllocator {
    buddy: buddy_system_allocator::FrameAllocator<ORDER>,
    /// Frames added.
    total: u64,
    /// Frames handed out (whole power-of-two blocks).
    allocated: u64,
}

impl FrameAllocator {
    pub const fn new() -> Self {
        Self { buddy: buddy_system_allocator::FrameAllocator::new(), total: 0, allocated: 0 }
    }

    /// Adds the whole frames within `[start, end)`; returns how many.
    ///
    /// The range must not overlap anything added before, and must be free RAM
    /// the host may give away (see [`super::usable_regions`]).
    pub fn add_region(&mut self, start: PhysAddr, end: PhysAddr) -> u64 {
        let first = start.div_ceil(FRAME_SIZE as u64);
        let last = end >> FRAME_SHIFT;
        if first >= last {
            return 0;
        }
        let (Ok(first_frame), Ok(last_frame)) = (usize::try_from(first), usize::try_from(last)) else {
            return 0;
        };
        self.buddy.add_frame(first_frame, last_frame);
        self.total += last - first;
        last - first
    }

    /// `count` contiguous frames, aligned to `count` rounded up to a power of
    /// two (frames); `None` if no such block is free or `count` is 0.
    pub fn alloc(&mut self, count: usize) -> Option<PhysAddr> {
        let block = block_frames(count)?;
        let frame = self.buddy.alloc(block)?;
        self.allocated += block as u64;
        Some((frame as u64) << FRAME_SHIFT)
    }

    /// Gives back a block [`alloc`](Self::alloc) returned, with the same
    /// `count`. A call that cannot match an allocation (a misaligned address,
    /// a zero count, more than is handed out) is ignored and returns false;
    /// giving back a block twice corrupts the free lists.
    #[allow(dead_code, reason = "used once VMs give their RAM back")]
    pub fn dealloc(&mut self, addr: PhysAddr, count: usize) -> bool {
        let Some(block) = block_frames(count) else {
            return false;
        };
        let block_bytes = (block as u64) << FRAME_SHIFT;
        if !addr.is_multiple_of(block_bytes) || (block as u64) > self.allocated {
            return false;
        }
        let Ok(frame) = usize::try_from(addr >> FRAME_SHIFT) else {
            return false;
        };
        self.buddy.dealloc(frame, block);
        self.allocated -= block as u64;
        true
    }

    /// Bytes not handed out.
    pub fn free_bytes(&self) -> u64 {
        (self.total - self.allocated) << FRAME_SHIFT
    }

    /// Bytes ever added.
    pub fn total_bytes(&self) -> u64 {
        self.total << FRAME_SHIFT
    }
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// The block size, in frames, that a request for `count` frames takes.
fn block_frames(count: usize) -> Option<usize> {
    if count == 0 || count > 1 << (ORDER - 1) {
        return None;
    }
    Some(count.next_power_of_two())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn adds_whole_frames_only() {
        let mut f = FrameAllocator::new();
        assert_eq!(f.add_region(0x4000_0001, 0x4000_3fff), 2);
        assert_eq!(f.add_region(0x5000_0000, 0x5000_0fff), 0);
        assert_eq!(f.total_bytes(), 0x2000);
        assert_eq!(f.free_bytes(), 0x2000);
        assert_eq!(f.alloc(1), Some(0x4000_1000));
        assert_eq!(f.alloc(1), Some(0x4000_2000));
        assert_eq!(f.alloc(1), None);
    }

    #[test]
    fn blocks_are_aligned_to_their_rounded_size() {
        let mut f = FrameAllocator::new();
        f.add_region(0x4000_0000, 0x4000_0000 + 64 * MIB);
        let heap = f.alloc((16 * MIB) as usize / FRAME_SIZE).unwrap();
        assert_eq!(heap % (16 * MIB), 0);
        let three = f.alloc(3).unwrap();
        assert_eq!(three % (4 * FRAME_SIZE as u64), 0, "3 frames take an aligned 4-frame block");
        assert_eq!(f.free_bytes(), 64 * MIB - 16 * MIB - 4 * FRAME_SIZE as u64);
        let one = f.alloc(1).unwrap();
        for (a, b) in [(heap, 16 * MIB), (three, 0x4000), (one, 0x1000)] {
            for (c, d) in [(heap, 16 * MIB), (three, 0x4000), (one, 0x1000)] {
                assert!(a == c || a + b <= c || c + d <= a, "blocks overlap");
            }
        }
        assert!(f.dealloc(three, 3));
        assert!(f.dealloc(one, 1));
        assert!(f.dealloc(heap, (16 * MIB) as usize / FRAME_SIZE));
        assert_eq!(f.free_bytes(), 64 * MIB);
        assert_eq!(f.alloc((64 * MIB) as usize / FRAME_SIZE), Some(0x4000_0000), "buddies merged again");
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let mut f = FrameAllocator::new();
        assert_eq!(f.alloc(1), None, "empty");
        f.add_region(0, 8 * FRAME_SIZE as u64);
        assert_eq!(f.alloc(0), None);
        assert_eq!(f.alloc(usize::MAX), None);
        assert_eq!(f.alloc(9), None, "larger than all memory");
        assert!(!f.dealloc(0x1000, 1), "nothing handed out");
        let a = f.alloc(2).unwrap();
        assert!(!f.dealloc(a + 0x1000, 2), "misaligned");
        assert!(!f.dealloc(a, 0));
        assert!(f.dealloc(a, 2));
        assert_eq!(f.free_bytes(), 8 * FRAME_SIZE as u64);
    }

    #[test]
    fn several_regions_serve_until_exhausted() {
        let mut f = FrameAllocator::new();
        f.add_region(0x1000, 0x8_0000);
        f.add_region(0x20_1000, 0x40_0000);
        let total = f.total_bytes() / FRAME_SIZE as u64;
        let mut got = Vec::new();
        while let Some(a) = f.alloc(1) {
            assert!((0x1000..0x8_0000).contains(&a) || (0x20_1000..0x40_0000).contains(&a));
            got.push(a);
        }
        assert_eq!(got.len() as u64, total);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len() as u64, total, "no frame handed out twice");
        assert_eq!(f.free_bytes(), 0);
    }
}
