//! Where a guest's image, initrd and device tree go in its RAM, per the Linux
//! arm64 boot protocol (`Documentation/arch/arm64/booting.rst`).
//!
//! - An image with the arm64 Image header (magic `ARM\x64` at 0x38) is placed
//!   `text_offset` bytes above a 2 MiB-aligned base, the lowest one in RAM,
//!   and gets `image_size` bytes (its BSS and early page tables included). A
//!   header with `image_size` 0 comes from a kernel older than 3.17, whose
//!   `text_offset` is 0x8_0000 and whose memory needs the header does not
//!   state: it gets the file rounded up to 2 MiB plus [`LEGACY_IMAGE_MARGIN`].
//! - Anything else (a file shorter than the 64-byte header, or without the
//!   magic, such as a kvm-unit-tests `.flat`) is a raw binary, placed at RAM
//!   start + [`RAW_LOAD_OFFSET`] as QEMU does, and entered at its first byte.
//!   A `.flat` relocates itself and uses the free memory after itself for its
//!   stack and heap, which is why the rest goes well above it.
//! - The initrd goes at RAM start + max(the image's end, min(RAM / 2,
//!   [`MAX_DATA_OFFSET`])) rounded up to [`DATA_ALIGN`] — QEMU puts it
//!   128 MiB up — and the device tree at the next 2 MiB boundary after the
//!   initrd (at that spot without one). Never below the image, whose BSS and
//!   the early kernel's page tables follow it.
//!
//! The sums are made in 128-bit arithmetic, so no header field, however
//! large, can overflow them: a layout that does not fit ends in
//! [`LoadError::DoesNotFit`].

use core::fmt;
use ferrovisor_shared::image::{ARM64_IMAGE_MAGIC, ARM64_MAGIC_OFFSET, IMAGE_SIZE_OFFSET, TEXT_OFFSET};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The arm64 Image header's fields (little-endian u64s) that placement reads.
const TEXT_OFFSET_FIELD: usize = 0x08;
const FLAGS_FIELD: usize = 0x18;
const HEADER_SIZE: usize = 0x40;
/// `flags` bit 0: the kernel is big-endian.
const FLAG_BE: u64 = 1 << 0;

/// Where a raw binary goes, from the start of RAM (QEMU's choice, which
/// kvm-unit-tests assume: it must be 64 KiB aligned).
pub const RAW_LOAD_OFFSET: u64 = 0x8_0000;
/// The alignment of the base that an Image's `text_offset` counts from.
pub const IMAGE_ALIGN: u64 = 2 * MIB;
/// The initrd and the device tree start on this alignment: the kernel maps
/// the device tree with blocks of up to 2 MiB.
pub const DATA_ALIGN: u64 = 2 * MIB;
/// The initrd and device tree go at least this far up in RAM larger than
/// twice it (QEMU's 128 MiB).
pub const MAX_DATA_OFFSET: u64 = 128 * MIB;
/// The largest device tree the boot protocol allows.
pub const MAX_DTB_SIZE: u64 = 2 * MIB;
/// Memory reserved after a pre-3.17 kernel's file (rounded up to 2 MiB), for
/// the BSS and page tables its header does not state: a 3.x kernel's BSS is
/// well under 1 MiB, so 8 MiB is generous.
pub const LEGACY_IMAGE_MARGIN: u64 = 8 * MIB;

/// What kind of image [`layout`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// An arm64 Image with a stated `image_size`.
    Linux,
    /// An arm64 Image with `image_size` 0 (a kernel older than 3.17).
    LegacyLinux,
    /// No arm64 Image header.
    Raw,
}

/// Where everything goes, as guest physical addresses (IPAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub kind: ImageKind,
    /// Where the image's first byte goes.
    pub kernel_ipa: u64,
    /// Bytes to reserve from `kernel_ipa`: at least the file, and for an
    /// Image its `image_size` (BSS included).
    pub kernel_size: u64,
    /// Where the boot CPU starts (the image's first byte), with x0 =
    /// `dtb_ipa`.
    pub entry_ipa: u64,
    pub dtb_ipa: u64,
    pub initrd_ipa: Option<u64>,
}

/// Why an image cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The image file has no bytes.
    EmptyImage,
    /// The Image header's flags say big-endian; guests run little-endian.
    BigEndianImage,
    /// The Image header's `text_offset` is not a multiple of 4 KiB.
    BadTextOffset(u64),
    /// Guest RAM does not start on a 2 MiB boundary.
    RamBaseMisaligned(u64),
    /// Guest RAM runs past the end of the address space.
    RamOutOfRange { base: u64, size: u64 },
    /// The device tree is larger than the boot protocol's 2 MiB.
    DtbTooLarge(u64),
    /// Image, initrd and device tree, placed as they must be, end beyond RAM.
    DoesNotFit {
        ram_size: u64,
        /// [`Layout::kernel_size`].
        image: u64,
        initrd: Option<u64>,
        dtb: u64,
        /// Where the last of them would end, from the start of RAM.
        end: u128,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyImage => write!(f, "the guest image is empty"),
            Self::BigEndianImage => write!(f, "the guest image is a big-endian kernel (its header's flags bit 0)"),
            Self::BadTextOffset(t) => {
                write!(f, "the guest image's header has text_offset {t:#x}, which is not a multiple of 4 KiB")
            }
            Self::RamBaseMisaligned(b) => write!(f, "guest RAM at {b:#x} does not start on a 2 MiB boundary"),
            Self::RamOutOfRange { base, size } => {
                write!(f, "guest RAM of {} at {base:#x} runs past the end of the address space", Size(*size as u128))
            }
            Self::DtbTooLarge(s) => {
                write!(f, "the guest device tree is {}, more than the boot protocol's 2 MiB", Size(*s as u128))
            }
            Self::DoesNotFit { ram_size, image, initrd, dtb, end } => {
                write!(
                    f,
                    "guest RAM {} is too small: the image needs {}",
                    Size(*ram_size as u128),
                    Size(*image as u128)
                )?;
                if let Some(i) = initrd {
                    write!(f, ", the initrd {}", Size(*i as u128))?;
                }
                write!(
                    f,
                    ", the device tree {}; placed per the arm64 boot protocol they end {} past the start of RAM, \
                     {} beyond its end",
                    Size(*dtb as u128),
                    Size(*end),
                    Size(end.saturating_sub(*ram_size as u128))
                )
            }
        }
    }
}

/// A byte count in the largest binary unit it reaches, exact or to a tenth
/// (rounded up, so "needs" never understates).
struct Size(u128);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < u128::from(KIB) {
            return write!(f, "{} bytes", self.0);
        }
        let mut unit = 0;
        while unit + 1 < UNITS.len() && self.0 >= 1u128 << (10 * (unit + 2)) {
            unit += 1;
        }
        let scale = 1u128 << (10 * (unit + 1));
        if self.0.is_multiple_of(scale) {
            write!(f, "{} {}", self.0 / scale, UNITS[unit])
        } else {
            let tenths = (self.0 * 10).div_ceil(scale);
            write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
        }
    }
}

fn le64(image: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&image[off..off + 8]);
    u64::from_le_bytes(b)
}

fn align_up(x: u128, align: u64) -> u128 {
    x.div_ceil(u128::from(align)) * u128::from(align)
}

/// Where `image`, an initrd of `initrd_size` bytes and a device tree of
/// `dtb_size` bytes go in guest RAM `[ram_base, ram_base + ram_size)`.
///
/// # Errors
/// An empty image, a big-endian Image or one whose `text_offset` is not
/// page aligned, RAM that does not start 2 MiB aligned or that runs past the
/// address space, a device tree over 2 MiB, or a layout that does not fit in
/// RAM ([`LoadError::DoesNotFit`] says how much each part needs and by how
/// much RAM falls short).
pub fn layout(
    image: &[u8],
    ram_base: u64,
    ram_size: u64,
    dtb_size: u64,
    initrd_size: Option<u64>,
) -> Result<Layout, LoadError> {
    if image.is_empty() {
        return Err(LoadError::EmptyImage);
    }
    if !ram_base.is_multiple_of(IMAGE_ALIGN) {
        return Err(LoadError::RamBaseMisaligned(ram_base));
    }
    let Some(ram_end) = ram_base.checked_add(ram_size) else {
        return Err(LoadError::RamOutOfRange { base: ram_base, size: ram_size });
    };
    if dtb_size > MAX_DTB_SIZE {
        return Err(LoadError::DtbTooLarge(dtb_size));
    }
    let file_size = image.len() as u128;
    let has_header = image.len() >= HEADER_SIZE
        && image[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4] == ARM64_IMAGE_MAGIC.to_le_bytes();

    // Offsets from ram_base, in u128 so that no header value can overflow.
    let (kind, kernel_off, kernel_size) = if has_header {
        if le64(image, FLAGS_FIELD) & FLAG_BE != 0 {
            return Err(LoadError::BigEndianImage);
        }
        let image_size = le64(image, IMAGE_SIZE_OFFSET);
        if image_size == 0 {
            (
                ImageKind::LegacyLinux,
                u128::from(TEXT_OFFSET),
                align_up(file_size, IMAGE_ALIGN) + u128::from(LEGACY_IMAGE_MARGIN),
            )
        } else {
            let text_offset = le64(image, TEXT_OFFSET_FIELD);
            if !text_offset.is_multiple_of(4 * KIB) {
                return Err(LoadError::BadTextOffset(text_offset));
            }
            // ram_base is 2 MiB aligned, so it is the lowest base in RAM.
            (ImageKind::Linux, u128::from(text_offset), u128::from(image_size).max(file_size))
        }
    } else {
        (ImageKind::Raw, u128::from(RAW_LOAD_OFFSET), file_size)
    };

    let image_end = kernel_off + kernel_size;
    let data_off = align_up(image_end.max(u128::from((ram_size / 2).min(MAX_DATA_OFFSET))), DATA_ALIGN);
    let (initrd_off, dtb_off) = match initrd_size {
        Some(size) => (Some(data_off), align_up(data_off + u128::from(size), DATA_ALIGN)),
        None => (None, data_off),
    };
    let end = dtb_off + u128::from(dtb_size);
    let too_big = || LoadError::DoesNotFit {
        ram_size,
        image: u64::try_from(kernel_size).unwrap_or(u64::MAX),
        initrd: initrd_size,
        dtb: dtb_size,
        end,
    };
    if end > u128::from(ram_size) {
        return Err(too_big());
    }
    // Everything ends within RAM, which ends within the address space, so
    // every offset and size now fits in a u64.
    let at = |off: u128| u64::try_from(off).ok().and_then(|o| ram_base.checked_add(o)).filter(|&a| a <= ram_end);
    let (Some(kernel_ipa), Some(dtb_ipa), Ok(kernel_size)) = (at(kernel_off), at(dtb_off), u64::try_from(kernel_size))
    else {
        return Err(too_big());
    };
    let initrd_ipa = match initrd_off {
        Some(off) => Some(at(off).ok_or_else(too_big)?),
        None => None,
    };
    Ok(Layout { kind, kernel_ipa, kernel_size, entry_ipa: kernel_ipa, dtb_ipa, initrd_ipa })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RAM: u64 = 0x4000_0000;

    /// An arm64 Image header as a Debian 6.1 kernel has it (EFI stub: code0
    /// starts "MZ", res5 points at the PE header), with the fields given.
    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len.max(HEADER_SIZE)];
        img[0..4].copy_from_slice(&0xfa40_5a4du32.to_le_bytes());
        img[4..8].copy_from_slice(&0x1435_7fffu32.to_le_bytes());
        img[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        img[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        img[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        img[0x38..0x3c].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        img[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        img
    }

    #[test]
    fn raw_binary_goes_at_512k_and_data_at_half_of_ram() {
        let flat = vec![0x14u8; 70_000];
        let l = layout(&flat, RAM, 128 * MIB, 0x1_0000, Some(300)).unwrap();
        assert_eq!(l.kind, ImageKind::Raw);
        assert_eq!(l.kernel_ipa, 0x4008_0000);
        assert_eq!(l.entry_ipa, 0x4008_0000);
        assert_eq!(l.kernel_size, 70_000);
        assert_eq!(l.initrd_ipa, Some(RAM + 64 * MIB));
        assert_eq!(l.dtb_ipa, RAM + 66 * MIB);
        assert_eq!(l.kernel_ipa % 0x1_0000, 0, "kvm-unit-tests need 64 KiB alignment");
    }

    #[test]
    fn short_or_magicless_files_are_raw() {
        // Shorter than the header, even with the magic's first bytes in place.
        let mut short = vec![0u8; 60];
        short[0x38..0x3c].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        assert_eq!(layout(&short, RAM, 64 * MIB, 4096, None).unwrap().kind, ImageKind::Raw);
        let mut img = image(0, 32 * MIB, 0xa, 4096);
        img[0x38] = b'X';
        let l = layout(&img, RAM, 64 * MIB, 4096, None).unwrap();
        assert_eq!((l.kind, l.kernel_ipa, l.kernel_size), (ImageKind::Raw, RAM + RAW_LOAD_OFFSET, 4096));
        assert_eq!(layout(&[0u8], RAM, 64 * MIB, 4096, None).unwrap().kind, ImageKind::Raw);
        assert_eq!(layout(&[], RAM, 64 * MIB, 4096, None), Err(LoadError::EmptyImage));
    }

    #[test]
    fn linux_image_uses_its_header() {
        // Debian 6.1: text_offset 0, image_size 0x2b9_0000 (43.6 MiB), flags 0xa.
        let img = image(0, 0x2b9_0000, 0xa, 0x1000);
        let l = layout(&img, RAM, 1024 * MIB, 0x2000, Some(20 * MIB)).unwrap();
        assert_eq!(l.kind, ImageKind::Linux);
        assert_eq!(l.kernel_ipa, RAM);
        assert_eq!(l.entry_ipa, RAM);
        assert_eq!(l.kernel_size, 0x2b9_0000);
        assert_eq!(l.initrd_ipa, Some(RAM + 128 * MIB), "QEMU's 128 MiB");
        assert_eq!(l.dtb_ipa, RAM + 148 * MIB);

        // A 3.17..5.7 kernel's text_offset of 0x8_0000.
        let img = image(0x8_0000, 20 * MIB, 0xa, 0x1000);
        let l = layout(&img, RAM, 256 * MIB, 0x2000, None).unwrap();
        assert_eq!(l.kernel_ipa, RAM + 0x8_0000);
        assert_eq!(l.dtb_ipa, RAM + 128 * MIB);
    }

    #[test]
    fn legacy_image_gets_file_size_and_a_margin() {
        let img = image(0x1234_5678, 0, 0, 5 * MIB as usize + 1);
        let l = layout(&img, RAM, 512 * MIB, 0x2000, None).unwrap();
        assert_eq!(l.kind, ImageKind::LegacyLinux);
        assert_eq!(l.kernel_ipa, RAM + TEXT_OFFSET, "text_offset ignored when image_size is 0");
        assert_eq!(l.kernel_size, 6 * MIB + LEGACY_IMAGE_MARGIN);
    }

    #[test]
    fn a_big_image_pushes_the_data_up_never_below_it() {
        let img = image(0, 200 * MIB + 1, 0xa, 0x1000);
        let l = layout(&img, RAM, 1024 * MIB, 0x2000, Some(MIB)).unwrap();
        assert_eq!(l.initrd_ipa, Some(RAM + 202 * MIB));
        assert_eq!(l.dtb_ipa, RAM + 204 * MIB);
        // Small RAM: half of it, unless the image reaches further.
        let img = image(0, 4 * MIB, 0xa, 0x1000);
        assert_eq!(layout(&img, RAM, 64 * MIB, 0x2000, None).unwrap().dtb_ipa, RAM + 32 * MIB);
        let img = image(0, 40 * MIB, 0xa, 0x1000);
        assert_eq!(layout(&img, RAM, 64 * MIB, 0x2000, None).unwrap().dtb_ipa, RAM + 40 * MIB);
        // Half of an odd-sized RAM is rounded up to the 2 MiB alignment.
        assert_eq!(layout(&[1], RAM, 5 * MIB, 0x2000, None).unwrap().dtb_ipa, RAM + 4 * MIB);
    }

    #[test]
    fn tiny_ram_names_what_does_not_fit() {
        let img = image(0, 12 * MIB, 0xa, 0x1000);
        let e = layout(&img, RAM, 16 * MIB, 64 * KIB, Some(8 * MIB)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest RAM 16 MiB is too small: the image needs 12 MiB, the initrd 8 MiB, the device tree 64 KiB; \
             placed per the arm64 boot protocol they end 20.1 MiB past the start of RAM, 4.1 MiB beyond its end"
        );
        // Fits exactly at the boundary, fails one byte over.
        let img = image(0, 12 * MIB, 0xa, 0x1000);
        assert!(layout(&img, RAM, 16 * MIB, 2 * MIB, Some(2 * MIB)).is_ok());
        assert!(matches!(
            layout(&img, RAM, 16 * MIB, 2 * MIB, Some(2 * MIB + 1)),
            Err(LoadError::DoesNotFit { end, .. }) if end == u128::from(18 * MIB)
        ));
    }

    #[test]
    fn huge_initrd_is_refused() {
        let img = image(0, 30 * MIB, 0xa, 0x1000);
        let e = layout(&img, RAM, 512 * MIB, 0x1_0000, Some(1024 * MIB)).unwrap_err();
        let LoadError::DoesNotFit { initrd, end, .. } = e else { panic!("{e:?}") };
        assert_eq!(initrd, Some(1024 * MIB));
        assert_eq!(end, u128::from(128 * MIB + 1024 * MIB + 0x1_0000));
        assert!(e.to_string().contains("the initrd 1 GiB"), "{e}");
    }

    #[test]
    fn hostile_header_values_are_errors_not_overflows() {
        let e = layout(&image(0, u64::MAX, 0xa, 0x100), RAM, 1024 * MIB, 0x1000, Some(u64::MAX)).unwrap_err();
        assert!(matches!(e, LoadError::DoesNotFit { image: u64::MAX, .. }), "{e:?}");
        assert!(e.to_string().contains("the image needs 16.0 EiB"), "{e}");
        let e = layout(&image(0xffff_ffff_ffff_f000, 4096, 0xa, 0x100), RAM, 1024 * MIB, 0x1000, None);
        assert!(matches!(e, Err(LoadError::DoesNotFit { .. })), "{e:?}");
        let e = layout(&image(u64::MAX, 4096, 0xa, 0x100), RAM, 1024 * MIB, 0x1000, None);
        assert_eq!(e, Err(LoadError::BadTextOffset(u64::MAX)));
        assert_eq!(layout(&image(0, MIB, 0xb, 0x100), RAM, 64 * MIB, 0x1000, None), Err(LoadError::BigEndianImage));
        let top = !(IMAGE_ALIGN - 1);
        assert!(matches!(layout(&[1], top, 4 * MIB, 0x1000, None), Err(LoadError::RamOutOfRange { .. })));
        // RAM that ends at the very top of the address space is accepted (here it is too small).
        let l = layout(&[1], top, IMAGE_ALIGN - 1, 0x1000, None);
        assert!(matches!(l, Err(LoadError::DoesNotFit { .. })), "{l:?}");
        assert_eq!(layout(&[1], RAM + 4096, 64 * MIB, 0x1000, None), Err(LoadError::RamBaseMisaligned(RAM + 4096)));
        assert_eq!(layout(&[1], RAM, 64 * MIB, 3 * MIB, None), Err(LoadError::DtbTooLarge(3 * MIB)));
    }

    fn header_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(0x8_0000),
            Just(u64::MAX),
            Just(u64::MAX - 0xfff),
            (0u64..64).prop_map(|m| m * MIB),
            (0u64..0x10_0000).prop_map(|p| p << 12),
            any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2000))]

        /// Any header, any RAM: an error or a layout that keeps the rules.
        #[test]
        fn any_input_gives_an_error_or_a_sound_layout(
            text_offset in header_value(),
            image_size in header_value(),
            flags in any::<u64>(),
            magic in any::<bool>(),
            len in prop_oneof![0usize..0x48, 0x48usize..0x3000],
            noise in any::<u8>(),
            ram_base in prop_oneof![Just(RAM), any::<u64>().prop_map(|b| b & !(IMAGE_ALIGN - 1)), any::<u64>()],
            ram_size in prop_oneof![(0u64..2048).prop_map(|m| m * MIB), any::<u64>()],
            dtb_size in prop_oneof![0u64..0x3_0000, any::<u64>()],
            initrd_size in proptest::option::of(prop_oneof![0u64..(256 * MIB), any::<u64>()]),
        ) {
            let mut img = vec![noise; len];
            if len >= HEADER_SIZE {
                img[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
                img[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
                img[0x18..0x20].copy_from_slice(&(flags & !FLAG_BE).to_le_bytes());
                if magic {
                    img[0x38..0x3c].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
                }
            }
            let Ok(l) = layout(&img, ram_base, ram_size, dtb_size, initrd_size) else { return Ok(()) };
            let ram_end = u128::from(ram_base) + u128::from(ram_size);
            let kernel_end = u128::from(l.kernel_ipa) + u128::from(l.kernel_size);
            prop_assert!(l.kernel_ipa >= ram_base);
            prop_assert!(l.kernel_size >= len as u64);
            prop_assert_eq!(l.entry_ipa, l.kernel_ipa);
            prop_assert_eq!(l.kernel_ipa % 4096, 0);
            let mut next = kernel_end;
            if let Some(i) = l.initrd_ipa {
                prop_assert_eq!(i % DATA_ALIGN, 0);
                prop_assert!(u128::from(i) >= next, "initrd below the image");
                next = u128::from(i) + u128::from(initrd_size.unwrap());
            }
            prop_assert_eq!(l.dtb_ipa % DATA_ALIGN, 0);
            prop_assert!(u128::from(l.dtb_ipa) >= next, "device tree below the image or initrd");
            prop_assert!(u128::from(l.dtb_ipa) + u128::from(dtb_size) <= ram_end);
            prop_assert!(u128::from(l.dtb_ipa - ram_base) >= u128::from((ram_size / 2).min(MAX_DATA_OFFSET)));
            match l.kind {
                ImageKind::Raw => prop_assert!(!magic || len < HEADER_SIZE),
                ImageKind::Linux => prop_assert_eq!(l.kernel_ipa - ram_base, text_offset),
                ImageKind::LegacyLinux => prop_assert_eq!(image_size, 0),
            }
        }
    }
}
