//! Guest RAM: one contiguous block of host frames, owned: it goes back to
//! the frame allocator when the owner drops it, so a VM that fails half-way
//! through its construction frees it on every path.

use crate::devices::map;
use crate::mm;
use alloc::string::String;

/// Guest RAM at IPA [`map::RAM`], identity mapped in the host.
pub struct GuestRam {
    pub ipa: u64,
    pub pa: u64,
    pub size: u64,
    frames: usize,
}

impl GuestRam {
    /// `bytes` of RAM (rounded up to 2 MiB, for block mappings).
    ///
    /// # Errors
    /// When the frame allocator has no such contiguous block.
    pub fn alloc(bytes: u64) -> Result<Self, String> {
        let size = bytes.next_multiple_of(2 << 20);
        let frames = (size / mm::FRAME_SIZE as u64) as usize;
        let pa = mm::frames()
            .lock()
            .alloc(frames)
            .ok_or_else(|| alloc::format!("no {} MiB of free memory for its RAM", size >> 20))?;
        Ok(Self { ipa: map::RAM, pa, size, frames })
    }

    pub fn contains(&self, ipa: u64, len: u64) -> bool {
        ipa >= self.ipa && ipa.checked_add(len).is_some_and(|end| end <= self.ipa + self.size)
    }

    /// The host (identity-mapped) address of guest IPA `ipa`.
    pub(super) fn host_ptr(&self, ipa: u64) -> *mut u8 {
        (self.pa + (ipa - self.ipa)) as *mut u8
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        mm::frames().lock().dealloc(self.pa, self.frames);
    }
}
