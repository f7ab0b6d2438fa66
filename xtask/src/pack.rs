//! Packs the two bare-metal ELF files into the bootable image laid out in
//! `ferrovisor_shared::image`: el2 as a flat binary (it starts with the arm64
//! Image header), zeros up to `host_offset`, then the host as a flat binary,
//! with the package header and the image size filled in.

use ferrovisor_shared::image::{
    PackageHeader, ARM64_IMAGE_MAGIC, ARM64_MAGIC_OFFSET, HOST_ALIGN, IMAGE_SIZE_OFFSET, PACKAGE_HEADER_OFFSET,
    PACKAGE_HEADER_SIZE, PACKAGE_MAGIC, R_AARCH64_RELATIVE,
};
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader, Rela, SectionHeader};
use object::Endianness;

/// Neither binary comes near this; a larger size means a broken ELF file.
const MAX_MEM_SIZE: u64 = 256 << 20;

/// An ELF file's loadable segments laid out as they sit in memory.
#[derive(Debug)]
pub struct Flat {
    /// Bytes from address 0 to the end of the last segment's file contents.
    pub bytes: Vec<u8>,
    /// Bytes the binary occupies in memory, BSS included.
    pub mem_size: u64,
    /// The ELF entry point, as an offset from the start.
    pub entry: u64,
    /// Number of `R_AARCH64_RELATIVE` relocations the binary applies at boot.
    pub relocations: usize,
}

/// The packed image and its header.
#[derive(Debug)]
pub struct Packed {
    pub image: Vec<u8>,
    pub header: PackageHeader,
    pub el2_file_size: u64,
    /// `R_AARCH64_RELATIVE` relocations in el2 and in the host.
    pub relocations: (usize, usize),
}

impl Packed {
    pub fn image_size(&self) -> u64 {
        self.header.image_size()
    }
}

fn relocation_name(r_type: u32) -> &'static str {
    match r_type {
        elf::R_AARCH64_ABS64 => "R_AARCH64_ABS64",
        elf::R_AARCH64_ABS32 => "R_AARCH64_ABS32",
        elf::R_AARCH64_COPY => "R_AARCH64_COPY",
        elf::R_AARCH64_GLOB_DAT => "R_AARCH64_GLOB_DAT",
        elf::R_AARCH64_JUMP_SLOT => "R_AARCH64_JUMP_SLOT",
        elf::R_AARCH64_RELATIVE => "R_AARCH64_RELATIVE",
        elf::R_AARCH64_TLS_DTPMOD => "R_AARCH64_TLS_DTPMOD",
        elf::R_AARCH64_TLS_DTPREL => "R_AARCH64_TLS_DTPREL",
        elf::R_AARCH64_TLS_TPREL => "R_AARCH64_TLS_TPREL",
        elf::R_AARCH64_TLSDESC => "R_AARCH64_TLSDESC",
        elf::R_AARCH64_IRELATIVE => "R_AARCH64_IRELATIVE",
        _ => "unknown",
    }
}

/// Converts one static-PIE aarch64 ELF file into a flat binary and checks that
/// it carries no relocation but `R_AARCH64_RELATIVE`. `name` names the binary
/// in error messages.
///
/// # Errors
/// Anything that would stop the binary from running as a flat image at any
/// address, named with the binary.
pub fn flatten(name: &str, data: &[u8]) -> Result<Flat, String> {
    let err = |what: String| format!("{name}: {what}");
    let header = FileHeader64::<Endianness>::parse(data).map_err(|e| err(format!("not a 64-bit ELF file ({e})")))?;
    let endian = header.endian().map_err(|e| err(e.to_string()))?;
    if endian != Endianness::Little {
        return Err(err("big-endian ELF file; aarch64-unknown-none is little-endian".into()));
    }
    if header.e_machine(endian) != elf::EM_AARCH64 {
        return Err(err(format!("ELF machine {} is not aarch64", header.e_machine(endian))));
    }
    if header.e_type(endian) != elf::ET_DYN {
        return Err(err(format!(
            "ELF type {} is not ET_DYN: link it as a static PIE at address 0 (-pie)",
            header.e_type(endian)
        )));
    }

    let phdrs = header.program_headers(endian, data).map_err(|e| err(format!("bad program headers ({e})")))?;
    let loads: Vec<_> = phdrs.iter().filter(|p| p.p_type(endian) == elf::PT_LOAD).collect();
    let first = loads.first().ok_or_else(|| err("no PT_LOAD segment".into()))?;
    if first.p_vaddr(endian) != 0 {
        return Err(err(format!(
            "first PT_LOAD is at {:#x}, not 0: link the binary at address 0",
            first.p_vaddr(endian)
        )));
    }

    let mut file_len = 0u64;
    let mut mem_size = 0u64;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for p in &loads {
        let (vaddr, filesz, memsz) = (p.p_vaddr(endian), p.p_filesz(endian), p.p_memsz(endian));
        if filesz > memsz {
            return Err(err(format!("PT_LOAD at {vaddr:#x} has p_filesz {filesz:#x} > p_memsz {memsz:#x}")));
        }
        let end = vaddr.checked_add(memsz).filter(|&e| e <= MAX_MEM_SIZE).ok_or_else(|| {
            err(format!("PT_LOAD at {vaddr:#x} ends beyond {MAX_MEM_SIZE:#x}: not a sane static PIE"))
        })?;
        if memsz > 0 {
            spans.push((vaddr, end));
        }
        if filesz > 0 {
            file_len = file_len.max(vaddr + filesz);
        }
        mem_size = mem_size.max(end);
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(err(format!(
                "PT_LOAD segments overlap: [{:#x}, {:#x}) and [{:#x}, {:#x})",
                w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
    }

    let mut bytes = vec![0u8; file_len as usize];
    for p in &loads {
        let src = p
            .data(endian, data)
            .map_err(|()| err(format!("PT_LOAD at {:#x} lies outside the file", p.p_vaddr(endian))))?;
        let at = p.p_vaddr(endian) as usize;
        bytes[at..at + src.len()].copy_from_slice(src);
    }

    let relocations = check_relocations(name, header, endian, data, mem_size)?;

    let entry = header.e_entry(endian);
    if entry >= file_len {
        return Err(err(format!("entry point {entry:#x} lies outside the loaded code (0..{file_len:#x})")));
    }
    Ok(Flat { bytes, mem_size, entry, relocations })
}

/// Checks every allocated relocation section; returns how many relocations
/// the binary has.
fn check_relocations(
    name: &str,
    header: &FileHeader64<Endianness>,
    endian: Endianness,
    data: &[u8],
    mem_size: u64,
) -> Result<usize, String> {
    let err = |what: String| format!("{name}: {what}");
    let sections = header.sections(endian, data).map_err(|e| err(format!("bad section headers ({e})")))?;
    let mut count = 0;
    for section in sections.iter() {
        if section.sh_flags(endian) & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let sec_name = String::from_utf8_lossy(sections.section_name(endian, section).unwrap_or(b"?")).into_owned();
        match section.sh_type(endian) {
            elf::SHT_RELA => {
                let (relas, _) = section
                    .rela(endian, data)
                    .map_err(|e| err(format!("section {sec_name}: {e}")))?
                    .unwrap_or((&[], object::SectionIndex(0)));
                for r in relas {
                    let r_type = r.r_type(endian, false);
                    let offset = r.r_offset(endian);
                    if r_type != R_AARCH64_RELATIVE {
                        return Err(err(format!(
                            "dynamic relocation type {r_type} ({}) at offset {offset:#x} in {sec_name}: \
                             only R_AARCH64_RELATIVE ({R_AARCH64_RELATIVE}) can be applied by the binary itself",
                            relocation_name(r_type)
                        )));
                    }
                    if offset.checked_add(8).is_none_or(|end| end > mem_size) {
                        return Err(err(format!(
                            "R_AARCH64_RELATIVE at offset {offset:#x} lies outside the binary (size {mem_size:#x})"
                        )));
                    }
                }
                count += relas.len();
            }
            elf::SHT_REL | elf::SHT_RELR => {
                return Err(err(format!(
                    "section {sec_name} holds REL or RELR relocations; only RELA with R_AARCH64_RELATIVE is \
                     supported (do not link with -z pack-relative-relocs)"
                )));
            }
            _ => {}
        }
    }
    Ok(count)
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Packs el2 and the host (both ELF files' contents) into the image.
///
/// # Errors
/// A binary that cannot be flattened, an el2 without the arm64 Image header
/// and its zeroed package header slot, or a result the header check rejects.
pub fn pack(el2_elf: &[u8], host_elf: &[u8]) -> Result<Packed, String> {
    let el2 = flatten("ferrovisor-el2", el2_elf)?;
    let header_end = PACKAGE_HEADER_OFFSET + PACKAGE_HEADER_SIZE;
    if el2.bytes.len() < header_end {
        return Err(format!(
            "ferrovisor-el2: flat binary is {:#x} bytes, shorter than the arm64 Image header ({header_end:#x})",
            el2.bytes.len()
        ));
    }
    let magic = u32::from_le_bytes(el2.bytes[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4].try_into().unwrap());
    if magic != ARM64_IMAGE_MAGIC {
        return Err(format!(
            "ferrovisor-el2: no arm64 Image magic (\"ARM\\x64\") at offset {ARM64_MAGIC_OFFSET:#x} (found {magic:#010x}): \
             el2 must start with the Image header"
        ));
    }
    if let Some(i) = el2.bytes[PACKAGE_HEADER_OFFSET..header_end].iter().position(|&b| b != 0) {
        return Err(format!(
            "ferrovisor-el2: the package header slot {PACKAGE_HEADER_OFFSET:#x}..{header_end:#x} must be zero \
             (byte at {:#x} is not): is this binary packed already, or does code sit there?",
            PACKAGE_HEADER_OFFSET + i
        ));
    }
    let host = flatten("ferrovisor-host", host_elf)?;

    let host_offset = align_up(el2.mem_size, HOST_ALIGN);
    let header = PackageHeader {
        magic: PACKAGE_MAGIC,
        el2_mem_size: el2.mem_size,
        host_offset,
        host_file_size: host.bytes.len() as u64,
        host_mem_size: host.mem_size,
        host_entry: host.entry,
        _reserved: [0; 2],
    };
    let el2_file_size = el2.bytes.len() as u64;
    let el2_relocations = el2.relocations;
    let mut image = el2.bytes;
    image.resize(host_offset as usize, 0);
    image.extend_from_slice(&host.bytes);
    image[PACKAGE_HEADER_OFFSET..header_end].copy_from_slice(&header.to_bytes());
    image[IMAGE_SIZE_OFFSET..IMAGE_SIZE_OFFSET + 8].copy_from_slice(&header.image_size().to_le_bytes());

    let parsed = PackageHeader::parse(&image).map_err(|e| format!("packed image fails its own check: {e}"))?;
    if parsed != header {
        return Err("packed image reads back a different package header".into());
    }
    Ok(Packed { image, header, el2_file_size, relocations: (el2_relocations, host.relocations) })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One PT_LOAD segment of a fake ELF file.
    pub(crate) struct Seg {
        pub vaddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// Builds a little-endian ELF64 file by hand: header, program headers,
    /// segment contents, a `.rela.dyn` (SHF_ALLOC) and `.shstrtab`.
    pub(crate) fn fake_elf(e_type: u16, machine: u16, entry: u64, segs: &[Seg], relas: &[(u64, u32, i64)]) -> Vec<u8> {
        fn put16(v: &mut Vec<u8>, x: u16) {
            v.extend_from_slice(&x.to_le_bytes());
        }
        fn put32(v: &mut Vec<u8>, x: u32) {
            v.extend_from_slice(&x.to_le_bytes());
        }
        fn put64(v: &mut Vec<u8>, x: u64) {
            v.extend_from_slice(&x.to_le_bytes());
        }
        let align16 = |x: usize| x.div_ceil(16) * 16;
        let phoff = 64usize;
        let mut off = align16(phoff + 56 * segs.len());
        let mut seg_offsets = Vec::new();
        for s in segs {
            seg_offsets.push(off);
            off = align16(off + s.data.len());
        }
        let rela_off = off;
        let rela_size = 24 * relas.len();
        let shstrtab: &[u8] = b"\0.rela.dyn\0.shstrtab\0";
        let shstr_off = rela_off + rela_size;
        let shoff = align16(shstr_off + shstrtab.len());

        let mut v = Vec::new();
        v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        v.extend_from_slice(&[0; 8]);
        put16(&mut v, e_type);
        put16(&mut v, machine);
        put32(&mut v, 1);
        put64(&mut v, entry);
        put64(&mut v, phoff as u64);
        put64(&mut v, shoff as u64);
        put32(&mut v, 0);
        put16(&mut v, 64);
        put16(&mut v, 56);
        put16(&mut v, segs.len() as u16);
        put16(&mut v, 64);
        put16(&mut v, 3);
        put16(&mut v, 2);
        for (s, &o) in segs.iter().zip(&seg_offsets) {
            put32(&mut v, elf::PT_LOAD);
            put32(&mut v, elf::PF_R | elf::PF_W | elf::PF_X);
            put64(&mut v, o as u64);
            put64(&mut v, s.vaddr);
            put64(&mut v, s.vaddr);
            put64(&mut v, s.data.len() as u64);
            put64(&mut v, s.memsz);
            put64(&mut v, 0x1_0000);
        }
        for (s, &o) in segs.iter().zip(&seg_offsets) {
            v.resize(o, 0);
            v.extend_from_slice(&s.data);
        }
        v.resize(rela_off, 0);
        for &(offset, r_type, addend) in relas {
            put64(&mut v, offset);
            put64(&mut v, u64::from(r_type));
            put64(&mut v, addend as u64);
        }
        v.extend_from_slice(shstrtab);
        v.resize(shoff, 0);
        v.extend_from_slice(&[0; 64]);
        // .rela.dyn
        put32(&mut v, 1);
        put32(&mut v, elf::SHT_RELA);
        put64(&mut v, u64::from(elf::SHF_ALLOC));
        put64(&mut v, 0);
        put64(&mut v, rela_off as u64);
        put64(&mut v, rela_size as u64);
        put32(&mut v, 0);
        put32(&mut v, 0);
        put64(&mut v, 8);
        put64(&mut v, 24);
        // .shstrtab
        put32(&mut v, 11);
        put32(&mut v, elf::SHT_STRTAB);
        put64(&mut v, 0);
        put64(&mut v, 0);
        put64(&mut v, shstr_off as u64);
        put64(&mut v, shstrtab.len() as u64);
        put32(&mut v, 0);
        put32(&mut v, 0);
        put64(&mut v, 1);
        put64(&mut v, 0);
        v
    }

    /// el2's code: a branch at 0, the arm64 magic at 0x38, a zeroed package
    /// header slot, then some code.
    fn el2_code() -> Vec<u8> {
        let mut code = vec![0u8; 0x100];
        code[0..4].copy_from_slice(&0x1400_0020u32.to_le_bytes());
        code[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4].copy_from_slice(&ARM64_IMAGE_MAGIC.to_le_bytes());
        code[0x80..0x100].fill(0xaa);
        code
    }

    fn el2_elf(relas: &[(u64, u32, i64)]) -> Vec<u8> {
        let segs = [
            Seg { vaddr: 0, data: el2_code(), memsz: 0x100 },
            Seg { vaddr: 0x1_0000, data: vec![0xbb; 0x20], memsz: 0x2_1000 },
        ];
        fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0, &segs, relas)
    }

    fn host_elf(relas: &[(u64, u32, i64)]) -> Vec<u8> {
        let segs = [
            Seg { vaddr: 0, data: vec![0xcc; 0x800], memsz: 0x800 },
            Seg { vaddr: 0x1000, data: vec![0xdd; 0x10], memsz: 0x5000 },
        ];
        fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0x40, &segs, relas)
    }

    #[test]
    fn flattens_segments_at_their_addresses() {
        let flat = flatten("x", &host_elf(&[(0x1008, R_AARCH64_RELATIVE, 0x10)])).unwrap();
        assert_eq!(flat.bytes.len(), 0x1010);
        assert_eq!(flat.mem_size, 0x6000);
        assert_eq!(flat.entry, 0x40);
        assert_eq!(flat.relocations, 1);
        assert!(flat.bytes[..0x800].iter().all(|&b| b == 0xcc));
        assert!(flat.bytes[0x800..0x1000].iter().all(|&b| b == 0));
        assert!(flat.bytes[0x1000..].iter().all(|&b| b == 0xdd));
    }

    #[test]
    fn packs_the_layout() {
        let packed = pack(&el2_elf(&[(0x1_0000, R_AARCH64_RELATIVE, 0x80)]), &host_elf(&[])).unwrap();
        let img = &packed.image;
        let h = packed.header;
        // el2 ends at 0x3_1000 in memory, so the host starts at the next 64 KiB.
        assert_eq!(h.el2_mem_size, 0x3_1000);
        assert_eq!(h.host_offset, 0x4_0000);
        assert_eq!(h.host_file_size, 0x1010);
        assert_eq!(h.host_mem_size, 0x6000);
        assert_eq!(h.host_entry, 0x40);
        assert_eq!(packed.el2_file_size, 0x1_0020);
        assert_eq!(packed.relocations, (1, 0));
        assert_eq!(img.len(), 0x4_1010);
        assert_eq!(PackageHeader::parse(img), Ok(h));
        assert_eq!(packed.image_size(), 0x4_6000);
        assert_eq!(u64::from_le_bytes(img[0x10..0x18].try_into().unwrap()), 0x4_6000);
        assert_eq!(&img[0..4], &0x1400_0020u32.to_le_bytes());
        assert!(img[0x80..0x100].iter().all(|&b| b == 0xaa));
        assert!(img[0x1_0000..0x1_0020].iter().all(|&b| b == 0xbb));
        assert!(img[0x1_0020..0x4_0000].iter().all(|&b| b == 0));
        assert!(img[0x4_0000..0x4_0800].iter().all(|&b| b == 0xcc));
        assert!(img[0x4_1000..].iter().all(|&b| b == 0xdd));
    }

    #[test]
    fn rejects_other_relocations() {
        let e = pack(&el2_elf(&[(0x1_0008, elf::R_AARCH64_ABS64, 0)]), &host_elf(&[])).unwrap_err();
        assert!(e.contains("ferrovisor-el2"), "{e}");
        assert!(e.contains("257") && e.contains("R_AARCH64_ABS64") && e.contains("0x10008"), "{e}");
        let host = host_elf(&[(0x1000, R_AARCH64_RELATIVE, 0), (0x1008, elf::R_AARCH64_GLOB_DAT, 0)]);
        let e = pack(&el2_elf(&[]), &host).unwrap_err();
        assert!(e.contains("ferrovisor-host") && e.contains("1025") && e.contains("0x1008"), "{e}");
        let e = flatten("x", &host_elf(&[(0x9000, R_AARCH64_RELATIVE, 0)])).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn rejects_a_bad_el2_head() {
        let mut code = el2_code();
        code[ARM64_MAGIC_OFFSET] = 0;
        let no_magic = fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0, &[Seg { vaddr: 0, data: code, memsz: 0x100 }], &[]);
        assert!(pack(&no_magic, &host_elf(&[])).unwrap_err().contains("magic"));
        let mut code = el2_code();
        code[0x48] = 1;
        let dirty = fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0, &[Seg { vaddr: 0, data: code, memsz: 0x100 }], &[]);
        assert!(pack(&dirty, &host_elf(&[])).unwrap_err().contains("0x48"));
    }

    #[test]
    fn rejects_wrong_elf_kinds() {
        let seg = || vec![Seg { vaddr: 0, data: vec![0; 0x100], memsz: 0x100 }];
        let exec = fake_elf(elf::ET_EXEC, elf::EM_AARCH64, 0, &seg(), &[]);
        assert!(flatten("x", &exec).unwrap_err().contains("ET_DYN"));
        let x86 = fake_elf(elf::ET_DYN, elf::EM_X86_64, 0, &seg(), &[]);
        assert!(flatten("x", &x86).unwrap_err().contains("aarch64"));
        let high =
            fake_elf(elf::ET_DYN, elf::EM_AARCH64, 0x1000, &[Seg { vaddr: 0x1000, data: vec![0; 16], memsz: 16 }], &[]);
        assert!(flatten("x", &high).unwrap_err().contains("not 0"));
        assert!(flatten("x", b"not an elf file at all, just text").is_err());
    }
}
