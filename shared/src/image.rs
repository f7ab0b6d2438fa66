//! The layout of the bootable image: an arm64 Linux Image header (so QEMU's
//! `-kernel` and the Raspberry Pi firmware load it as a kernel), then
//! Ferrovisor's package header saying where the host binary sits.
//!
//! ```text
//! 0x00  code0, code1       branch to el2's entry
//! 0x08  text_offset        0x8_0000
//! 0x10  image_size         bytes the loader must give us, BSS included
//! 0x18  flags              LE, 4 KiB pages, anywhere in RAM
//! 0x38  magic              "ARM\x64"
//! 0x40  PackageHeader      written by `cargo xtask build`
//! 0x80  el2 entry
//! ```
//! The host binary starts at `host_offset` (64 KiB aligned) after el2 and its
//! BSS. Both binaries are position independent and apply their own
//! `R_AARCH64_RELATIVE` relocations when they start.

pub const ARM64_IMAGE_MAGIC: u32 = 0x644d_5241;
pub const ARM64_MAGIC_OFFSET: usize = 0x38;
pub const IMAGE_SIZE_OFFSET: usize = 0x10;
pub const TEXT_OFFSET: u64 = 0x8_0000;
/// Little-endian, 4 KiB pages, may be placed anywhere in RAM.
pub const IMAGE_FLAGS: u64 = 0b1010;
pub const PACKAGE_HEADER_OFFSET: usize = 0x40;
pub const PACKAGE_MAGIC: u64 = u64::from_le_bytes(*b"FRVPACK1");
/// The host binary's alignment within the image.
pub const HOST_ALIGN: u64 = 0x1_0000;
/// `R_AARCH64_RELATIVE`: the only relocation either binary may carry.
pub const R_AARCH64_RELATIVE: u32 = 1027;

/// Ferrovisor's package header, at [`PACKAGE_HEADER_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackageHeader {
    pub magic: u64,
    /// Bytes el2 occupies from the image start, BSS included.
    pub el2_mem_size: u64,
    /// Offset of the host binary from the image start.
    pub host_offset: u64,
    /// Bytes of the host binary present in the file.
    pub host_file_size: u64,
    /// Bytes the host occupies, BSS included.
    pub host_mem_size: u64,
    /// Offset of the host's entry point from `host_offset`.
    pub host_entry: u64,
    pub _reserved: [u64; 2],
}

pub const PACKAGE_HEADER_SIZE: usize = core::mem::size_of::<PackageHeader>();

impl PackageHeader {
    /// Reads the header from the image's first bytes.
    ///
    /// # Errors
    /// A short buffer, a missing arm64 or package magic, or sizes that do not
    /// fit together, named in the message.
    pub fn parse(image: &[u8]) -> Result<Self, &'static str> {
        let word =
            |off: usize| -> Option<u64> { image.get(off..off + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())) };
        let magic = image
            .get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or("image shorter than an arm64 Image header")?;
        if magic != ARM64_IMAGE_MAGIC {
            return Err("no arm64 Image magic at offset 0x38");
        }
        let base = PACKAGE_HEADER_OFFSET;
        let f = |i: usize| word(base + 8 * i).ok_or("image shorter than the package header");
        let h = Self {
            magic: f(0)?,
            el2_mem_size: f(1)?,
            host_offset: f(2)?,
            host_file_size: f(3)?,
            host_mem_size: f(4)?,
            host_entry: f(5)?,
            _reserved: [f(6)?, f(7)?],
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks that the fields describe a layout el2 can boot.
    ///
    /// # Errors
    /// Names the first field that is wrong.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.magic != PACKAGE_MAGIC {
            return Err("package header magic is not FRVPACK1 (image not packed by `cargo xtask build`?)");
        }
        if !self.host_offset.is_multiple_of(HOST_ALIGN) || self.host_offset < self.el2_mem_size {
            return Err("host binary overlaps el2 or is misaligned");
        }
        if self.host_file_size > self.host_mem_size {
            return Err("host file size exceeds its memory size");
        }
        if self.host_entry >= self.host_file_size {
            return Err("host entry point lies outside the host binary");
        }
        Ok(())
    }

    /// Bytes the loader must reserve for the whole image.
    pub fn image_size(&self) -> u64 {
        (self.host_offset + self.host_mem_size + 0xfff) & !0xfff
    }

    pub fn to_bytes(&self) -> [u8; PACKAGE_HEADER_SIZE] {
        let mut out = [0u8; PACKAGE_HEADER_SIZE];
        let words = [
            self.magic,
            self.el2_mem_size,
            self.host_offset,
            self.host_file_size,
            self.host_mem_size,
            self.host_entry,
            self._reserved[0],
            self._reserved[1],
        ];
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PackageHeader {
        PackageHeader {
            magic: PACKAGE_MAGIC,
            el2_mem_size: 0x3_2000,
            host_offset: 0x4_0000,
            host_file_size: 0x2_0000,
            host_mem_size: 0x8_0000,
            host_entry: 0,
            _reserved: [0; 2],
        }
    }

    fn image_with(h: &PackageHeader) -> [u8; 0x80] {
        let mut img = [0u8; 0x80];
        img[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        img[PACKAGE_HEADER_OFFSET..].copy_from_slice(&h.to_bytes());
        img
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(PackageHeader::parse(&image_with(&h)), Ok(h));
        assert_eq!(h.image_size(), 0xc_0000);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut h = sample();
        h.host_offset = 0x2_0000;
        assert!(PackageHeader::parse(&image_with(&h)).unwrap_err().contains("overlaps"));
        let mut h = sample();
        h.magic = 0;
        assert!(PackageHeader::parse(&image_with(&h)).is_err());
        let mut img = image_with(&sample());
        img[ARM64_MAGIC_OFFSET] = 0;
        assert!(PackageHeader::parse(&img).unwrap_err().contains("arm64"));
        assert!(PackageHeader::parse(&img[..0x50]).is_err());
    }
}
