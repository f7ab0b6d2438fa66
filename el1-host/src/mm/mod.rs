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

/// The host's heap: the global allocator on the board, a plain static in host
/// builds (whose tests use the standard allocator).
#[cfg_attr(target_os = "none", global_allocator)]
static HEAP: HostHeap = HostHeap::new();

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
