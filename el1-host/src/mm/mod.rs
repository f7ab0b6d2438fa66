//! The host's memory: which RAM is free ([`usable_regions`]), the physical
//! frame allocator that hands it out ([`FrameAllocator`], behind [`frames`]),
//! and the heap `alloc` uses ([`HostHeap`], filled by [`init_heap`]).
//!
//! Boot order: compute the usable regions (RAM minus the device tree's
//! reservations, the image, the device tree blob and the initrd), add them
//! to [`frames`], take the heap's block from the frame allocator, and give it
//! to [`init_heap`]. The frame allocator keeps its free lists in `alloc`
//! collections, so the heap starts out with a small static seed arena that
//! carries those first allocations until [`init_heap`] adds the real block.
//!
//! Everything here is plain logic over addresses (no system registers, no
//! memory accesses other than the heap's own), so it is tested on the
//! development host. (Host builds compile it for the tests alone, hence the
//! `dead_code` allowance there.)
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

mod frame;
mod heap;
mod region;
pub mod stage2;

pub use frame::{FrameAllocator, FRAME_SIZE};
pub use heap::{HeapUsage, HostHeap};
pub use region::usable_regions;

/// A physical address.
pub type PhysAddr = u64;

/// The frame allocator for all of the host's free RAM.
static FRAMES: spin::Mutex<FrameAllocator> = spin::Mutex::new(FrameAllocator::new());

/// The host's frame allocator.
pub fn frames() -> &'static spin::Mutex<FrameAllocator> {
    &FRAMES
}

/// The host's heap: small blocks (behind [`ALLOC`] on the board; a plain
/// static in host builds, whose tests use the standard allocator).
static HEAP: HostHeap = HostHeap::new();

/// Blocks at least this big come straight from [`frames`]: guest images of
/// tens of MiB would otherwise need a buddy block of twice their size.
const LARGE_ALLOC: usize = 256 * 1024;

/// The global allocator: large page-aligned-or-less blocks from the frame
/// allocator, the rest from the buddy heap.
struct HostAlloc;

#[cfg_attr(target_os = "none", global_allocator)]
static ALLOC: HostAlloc = HostAlloc;

fn large_frames(layout: core::alloc::Layout) -> Option<usize> {
    (layout.size() >= LARGE_ALLOC && layout.align() <= FRAME_SIZE).then(|| layout.size().div_ceil(FRAME_SIZE))
}

// SAFETY: large blocks are whole frames the frame allocator handed out (frame
// aligned, so any alignment up to a frame holds) and that go back to it with
// the same count, computed from the same layout; the rest is HostHeap's.
unsafe impl core::alloc::GlobalAlloc for HostAlloc {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        match large_frames(layout) {
            Some(n) => FRAMES.lock().alloc(n).map_or(core::ptr::null_mut(), |pa| pa as usize as *mut u8),
            // SAFETY: GlobalAlloc's contract, passed on.
            None => unsafe { HEAP.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        match large_frames(layout) {
            Some(n) => {
                FRAMES.lock().dealloc(ptr as usize as PhysAddr, n);
            }
            // SAFETY: GlobalAlloc's contract, passed on.
            None => unsafe { HEAP.dealloc(ptr, layout) },
        }
    }
}

/// Adds `[start, start + size)` to the host heap.
///
/// # Safety
/// The range is RAM that is mapped read-write as normal memory at these
/// (virtual = physical) addresses, that nothing else uses or will use (for
/// instance frames taken from [`frames`] for the heap alone), and that does
/// not overlap anything given to the heap before.
pub unsafe fn init_heap(start: usize, size: usize) {
    // SAFETY: the caller's contract is add_region's.
    unsafe { HEAP.add_region(start, size) }
}

/// How much of the host heap is in use.
pub fn heap_usage() -> HeapUsage {
    HEAP.usage()
}
