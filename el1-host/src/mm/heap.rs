//! The host heap: a buddy allocator ([`buddy_system_allocator::Heap`]) behind
//! a spin lock, seeded with a static arena so that allocations made before
//! [`HostHeap::add_region`] (the frame allocator's own) succeed.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{null_mut, NonNull};

use buddy_system_allocator::Heap;

/// Size of the static seed arena.
pub const SEED_ARENA_SIZE: usize = 64 * 1024;

/// Free lists of 2^0 .. 2^31 bytes.
const ORDER: usize = 32;

#[repr(C, align(4096))]
struct SeedArena(UnsafeCell<[u8; SEED_ARENA_SIZE]>);

// SAFETY: the arena is only ever touched through the heap, under its lock,
// after `HostHeap::seed` has handed it over exactly once.
unsafe impl Sync for SeedArena {}

/// Heap statistics, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapUsage {
    /// What callers asked for.
    pub requested: usize,
    /// What is handed out (sizes rounded up to powers of two).
    pub allocated: usize,
    /// Everything the heap manages, seed arena included.
    pub total: usize,
}

/// A lock-protected buddy heap, usable as the `#[global_allocator]`.
///
/// Allocating while the lock is held by the same CPU (in an interrupt handler
/// that interrupted an allocation) deadlocks; the host does not allocate in
/// interrupt handlers.
pub struct HostHeap {
    heap: spin::Mutex<Heap<ORDER>>,
    seeded: spin::Once<()>,
    seed: SeedArena,
}

impl HostHeap {
    pub const fn new() -> Self {
        Self {
            heap: spin::Mutex::new(Heap::new()),
            seeded: spin::Once::new(),
            seed: SeedArena(UnsafeCell::new([0; SEED_ARENA_SIZE])),
        }
    }

    /// Gives the seed arena to the heap the first time anyone needs it.
    fn seed(&self) {
        self.seeded.call_once(|| {
            let start = self.seed.0.get() as usize;
            // SAFETY: the arena belongs to this heap alone, lives as long as
            // it, and `Once` hands it over only once.
            unsafe { self.heap.lock().add_to_heap(start, start + SEED_ARENA_SIZE) };
        });
    }

    /// Adds `[start, start + size)` to the heap.
    ///
    /// # Safety
    /// The range is writable memory that nothing else uses for as long as the
    /// heap lives, and it overlaps nothing added before.
    pub unsafe fn add_region(&self, start: usize, size: usize) {
        self.seed();
        let Some(end) = start.checked_add(size) else {
            return;
        };
        // SAFETY: the caller's contract is add_to_heap's.
        unsafe { self.heap.lock().add_to_heap(start, end) };
    }

    pub fn usage(&self) -> HeapUsage {
        let heap = self.heap.lock();
        HeapUsage {
            requested: heap.stats_alloc_user(),
            allocated: heap.stats_alloc_actual(),
            total: heap.stats_total_bytes(),
        }
    }
}

impl Default for HostHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `alloc` returns null or a block of at least `layout.size()` bytes
// aligned to `layout.align()` that the buddy heap handed out and no one else
// holds; `dealloc` returns it with the same layout.
unsafe impl GlobalAlloc for HostHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.seed();
        self.heap.lock().alloc(layout).map_or(null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with `layout`.
            unsafe { self.heap.lock().dealloc(ptr, layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_arena_serves_before_any_region_is_added() {
        let heap = Box::new(HostHeap::new());
        let layout = Layout::from_size_align(256, 16).unwrap();
        // SAFETY: a valid non-zero layout.
        let p = unsafe { heap.alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0);
        let arena = heap.seed.0.get() as usize;
        assert!((arena..arena + SEED_ARENA_SIZE).contains(&(p as usize)));
        assert_eq!(heap.usage().total, SEED_ARENA_SIZE);
        // SAFETY: `p` came from this heap with `layout`.
        unsafe { heap.dealloc(p, layout) };
        assert_eq!(heap.usage().allocated, 0);
    }

    #[test]
    fn added_regions_serve_large_requests() {
        let heap = Box::new(HostHeap::new());
        let region = vec![0u64; (1 << 20) / 8].into_boxed_slice();
        let start = region.as_ptr() as usize;
        // SAFETY: `region` outlives `heap`'s use below and is used by nothing else.
        unsafe { heap.add_region(start, 1 << 20) };
        assert!(heap.usage().total > SEED_ARENA_SIZE + (1 << 19));
        let big = Layout::from_size_align(256 * 1024, 4096).unwrap();
        // SAFETY: a valid non-zero layout.
        let p = unsafe { heap.alloc(big) };
        assert!(!p.is_null());
        assert!((start..start + (1 << 20)).contains(&(p as usize)));
        assert_eq!(p as usize % 4096, 0);
        // SAFETY: `p` came from this heap with `big`.
        unsafe { heap.dealloc(p, big) };
        let too_big = Layout::from_size_align(4 << 20, 8).unwrap();
        // SAFETY: a valid non-zero layout.
        assert!(unsafe { heap.alloc(too_big) }.is_null());
        drop(heap);
        drop(region);
    }
}
