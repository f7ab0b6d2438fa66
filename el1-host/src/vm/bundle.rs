//! The guest bundle: the files guests are made from (kernels, initrds, the
//! `default.vms` manifest), packed as a cpio archive in the "newc" format and
//! handed to the host as its initrd (QEMU's `-initrd`, the Pi firmware's
//! `initramfs`).
//!
//! The archive is a sequence of entries, each a 110-byte ASCII header (the
//! magic `070701`, or `070702` for the variant with a checksum, then 13
//! eight-digit hex fields), the NUL-terminated name padded so the data starts
//! on a 4-byte boundary, then the data padded to a 4-byte boundary. The entry
//! named `TRAILER!!!` ends it; anything after the trailer is ignored.
//!
//! [`Bundle::parse`] checks the whole archive once, so lookups afterwards
//! cannot fail; any byte string is safe to give it. Files are borrowed from
//! the archive, not copied.
#![cfg_attr(target_os = "none", allow(dead_code, reason = "introspection used by the tests"))]

use core::fmt;

/// Size of an entry header.
pub const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Longest entry name accepted (Linux's `PATH_MAX`).
pub const MAX_NAME: usize = 4096;

const MAGIC_NEWC: &[u8; 6] = b"070701";
const MAGIC_CRC: &[u8; 6] = b"070702";
/// `st_mode`'s file type bits and the regular-file type.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;

/// The header's fields after the magic, in order.
const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];
const MODE: usize = 1;
const FILESIZE: usize = 6;
const NAMESIZE: usize = 11;
const CHECK: usize = 12;

/// Why an archive was refused. `offset` is where the entry's header starts
/// in the archive. `Display` gives the message to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    /// The archive ends before an entry's 110-byte header does.
    TruncatedHeader { offset: usize },
    /// The header does not start with `070701` or `070702`.
    BadMagic { offset: usize },
    /// The archive starts with a gzip header: compressed bundles are not
    /// supported.
    Compressed,
    /// A header field is not eight hex digits; `field` is its name.
    BadField { offset: usize, field: &'static str },
    /// `namesize` is 0 or larger than [`MAX_NAME`] + 1.
    BadNameSize { offset: usize, namesize: u32 },
    /// The name (with its padding) runs past the end of the archive.
    TruncatedName { offset: usize },
    /// The name's last byte (at `namesize - 1`) is not NUL, or a NUL comes
    /// before it.
    BadName { offset: usize },
    /// The name is not UTF-8.
    NameNotUtf8 { offset: usize },
    /// The file's data (with its padding) runs past the end of the archive.
    TruncatedData { offset: usize, filesize: u32 },
    /// A `070702` entry's data does not add up to its `check` field.
    BadChecksum { offset: usize, expected: u32, actual: u32 },
    /// The archive ends without the `TRAILER!!!` entry.
    NoTrailer,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TruncatedHeader { offset } => {
                write!(f, "entry at {offset:#x}: the archive ends inside its {HEADER_LEN}-byte header")
            }
            Self::BadMagic { offset } => {
                write!(f, "entry at {offset:#x}: bad magic (expected 070701 or 070702): not a cpio newc archive")
            }
            Self::Compressed => f.write_str("the archive is gzip-compressed; give an uncompressed cpio newc archive"),
            Self::BadField { offset, field } => {
                write!(f, "entry at {offset:#x}: header field \"{field}\" is not 8 hex digits")
            }
            Self::BadNameSize { offset, namesize } => write!(
                f,
                "entry at {offset:#x}: namesize {namesize} is out of range (1 to {} with the NUL)",
                MAX_NAME + 1
            ),
            Self::TruncatedName { offset } => write!(f, "entry at {offset:#x}: the archive ends inside the name"),
            Self::BadName { offset } => {
                write!(f, "entry at {offset:#x}: the name is not NUL-terminated at namesize")
            }
            Self::NameNotUtf8 { offset } => write!(f, "entry at {offset:#x}: the name is not UTF-8"),
            Self::TruncatedData { offset, filesize } => {
                write!(f, "entry at {offset:#x}: the archive ends inside its {filesize} bytes of data")
            }
            Self::BadChecksum { offset, expected, actual } => write!(
                f,
                "entry at {offset:#x}: checksum mismatch (header says {expected:#010x}, data sums to {actual:#010x})"
            ),
            Self::NoTrailer => write!(f, "the archive ends without its {TRAILER} entry"),
        }
    }
}

/// One entry of the archive (directories, links and devices included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The name as stored (often with a leading `./`).
    pub name: &'a str,
    /// `st_mode`: file type and permissions.
    pub mode: u32,
    pub data: &'a [u8],
}

impl Entry<'_> {
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

/// A checked cpio newc archive.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    /// The archive up to and including the trailer's header and name.
    bytes: &'a [u8],
    files: usize,
}

impl<'a> Bundle<'a> {
    /// Checks the archive from its first entry to `TRAILER!!!`.
    ///
    /// # Errors
    /// The first thing wrong, with the offset of the entry it is in: a
    /// truncated header, name or data, a bad magic, a header field that is not
    /// hex, a bad name size or name, a checksum mismatch (`070702`), or no
    /// trailer.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BundleError> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            return Err(BundleError::Compressed);
        }
        let mut off = 0;
        let mut files = 0;
        loop {
            if off >= bytes.len() {
                return Err(BundleError::NoTrailer);
            }
            let (entry, next) = read_entry(bytes, off)?;
            if entry.name == TRAILER {
                return Ok(Self { bytes: bytes.get(..next).unwrap_or(bytes), files });
            }
            files += usize::from(entry.is_file());
            off = next;
        }
    }

    /// Every entry before the trailer, in archive order.
    pub fn entries(&self) -> Entries<'a> {
        Entries { bytes: self.bytes, off: 0 }
    }

    /// How many regular files the archive holds.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// The contents of the regular file at `path`. A leading `./` or `/` on
    /// either `path` or the stored name does not matter. When the archive
    /// holds the same path twice, the later entry wins (as when unpacking).
    pub fn get(&self, path: &str) -> Option<&'a [u8]> {
        let want = normalize(path);
        self.entries().filter(|e| e.is_file() && normalize(e.name) == want).last().map(|e| e.data)
    }
}

/// `path` without leading `./` and `/` components.
fn normalize(mut path: &str) -> &str {
    loop {
        if let Some(rest) = path.strip_prefix("./") {
            path = rest;
        } else if let Some(rest) = path.strip_prefix('/') {
            path = rest;
        } else {
            return path;
        }
    }
}

/// The entries of a [`Bundle`].
#[derive(Clone)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        // `Bundle::parse` checked every entry; an error here cannot happen
        // and simply ends the iteration.
        let (entry, next) = read_entry(self.bytes, self.off).ok()?;
        if entry.name == TRAILER {
            self.off = self.bytes.len();
            return None;
        }
        self.off = next;
        Some(entry)
    }
}

fn align4(x: usize) -> usize {
    x.saturating_add(3) & !3
}

/// Eight ASCII hex digits.
fn hex8(field: &[u8]) -> Option<u32> {
    if field.len() != 8 {
        return None;
    }
    field.iter().try_fold(0u32, |acc, &b| Some(acc << 4 | char::from(b).to_digit(16)?))
}

/// The entry whose header is at `off`, and the offset of the next one.
fn read_entry(bytes: &[u8], off: usize) -> Result<(Entry<'_>, usize), BundleError> {
    let header = off
        .checked_add(HEADER_LEN)
        .and_then(|end| bytes.get(off..end))
        .ok_or(BundleError::TruncatedHeader { offset: off })?;
    let magic = header.get(..6).unwrap_or(&[]);
    let with_crc = match magic {
        m if m == MAGIC_NEWC => false,
        m if m == MAGIC_CRC => true,
        _ => return Err(BundleError::BadMagic { offset: off }),
    };
    let mut fields = [0u32; 13];
    for (i, (slot, name)) in fields.iter_mut().zip(FIELDS).enumerate() {
        let at = 6 + 8 * i;
        *slot = header.get(at..at + 8).and_then(hex8).ok_or(BundleError::BadField { offset: off, field: name })?;
    }
    let namesize = fields[NAMESIZE];
    if namesize == 0 || namesize as usize > MAX_NAME + 1 {
        return Err(BundleError::BadNameSize { offset: off, namesize });
    }
    let name_start = off + HEADER_LEN;
    let name_end = name_start + namesize as usize;
    let raw_name = bytes.get(name_start..name_end).ok_or(BundleError::TruncatedName { offset: off })?;
    let (&last, name) = raw_name.split_last().ok_or(BundleError::BadName { offset: off })?;
    if last != 0 || name.contains(&0) {
        return Err(BundleError::BadName { offset: off });
    }
    let name = core::str::from_utf8(name).map_err(|_| BundleError::NameNotUtf8 { offset: off })?;
    let data_start = align4(name_end);
    if name == TRAILER {
        // Tolerate an archive cut right after the trailer's name.
        return Ok((Entry { name, mode: fields[MODE], data: &[] }, data_start.min(bytes.len())));
    }
    if data_start > bytes.len() {
        return Err(BundleError::TruncatedName { offset: off });
    }
    let filesize = fields[FILESIZE];
    let data_end = data_start + filesize as usize;
    let next = align4(data_end);
    let data = match bytes.get(data_start..data_end) {
        Some(d) if next <= bytes.len() => d,
        _ => return Err(BundleError::TruncatedData { offset: off, filesize }),
    };
    if with_crc {
        let actual = data.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)));
        if actual != fields[CHECK] {
            return Err(BundleError::BadChecksum { offset: off, expected: fields[CHECK], actual });
        }
    }
    Ok((Entry { name, mode: fields[MODE], data }, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// Appends one entry as `cpio -o -H newc` writes it.
    fn push(out: &mut Vec<u8>, magic: &str, name: &str, mode: u32, data: &[u8]) {
        let check = if magic == "070702" { data.iter().map(|&b| u32::from(b)).sum() } else { 0 };
        let fields = [1, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, check];
        out.extend_from_slice(magic.as_bytes());
        for f in fields {
            out.extend_from_slice(alloc::format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(align4(out.len()), 0);
        out.extend_from_slice(data);
        out.resize(align4(out.len()), 0);
    }

    fn archive(magic: &str, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(name, mode, data) in entries {
            push(&mut out, magic, name, mode, data);
        }
        push(&mut out, magic, TRAILER, 0, &[]);
        out
    }

    const FILE: u32 = 0o100_644;
    const DIR: u32 = 0o040_755;

    fn sample(magic: &str) -> Vec<u8> {
        archive(
            magic,
            &[
                (".", DIR, b""),
                ("./default.vms", FILE, b"demo 1 64 demo/kernel\n"),
                ("demo", DIR, b""),
                ("demo/kernel", FILE, b"\x00\x01\x02kernel bytes"),
                ("demo/initrd", FILE, b"abc"),
                ("empty", FILE, b""),
                ("link", 0o120_777, b"demo/kernel"),
            ],
        )
    }

    /// The first entry of `sample`, spelled out byte by byte: a hand check of
    /// the layout the tests' writer (and xtask's) produce.
    #[test]
    fn layout_by_hand() {
        let a = archive("070701", &[("ab", FILE, b"xyz")]);
        let mut expect = String::from("070701");
        // ino, mode (0o100644), uid, gid, nlink, mtime, filesize
        expect += concat!("00000001", "000081A4", "00000000", "00000000", "00000001", "00000000", "00000003");
        // devmajor, devminor, rdevmajor, rdevminor, namesize ("ab" and NUL), check
        expect += concat!("00000000", "00000000", "00000000", "00000000", "00000003", "00000000");
        assert_eq!(&a[..HEADER_LEN], expect.as_bytes());
        // 110 + 3 (name and NUL) = 113, padded to 116; data 3, padded to 4.
        assert_eq!(&a[HEADER_LEN..116], b"ab\0\0\0\0");
        assert_eq!(&a[116..120], b"xyz\0");
        assert_eq!(&a[120..126], b"070701");
        assert_eq!(a.len(), 120 + 124);
    }

    #[test]
    fn reads_entries_and_files() {
        for magic in ["070701", "070702"] {
            let a = sample(magic);
            let b = Bundle::parse(&a).unwrap();
            let names: Vec<_> = b.entries().map(|e| e.name).collect();
            assert_eq!(names, [".", "./default.vms", "demo", "demo/kernel", "demo/initrd", "empty", "link"]);
            assert_eq!(b.file_count(), 4);
            assert_eq!(b.get("default.vms"), Some(&b"demo 1 64 demo/kernel\n"[..]));
            assert_eq!(b.get("./default.vms"), Some(&b"demo 1 64 demo/kernel\n"[..]));
            assert_eq!(b.get("/demo/kernel"), Some(&b"\x00\x01\x02kernel bytes"[..]));
            assert_eq!(b.get("./demo/initrd"), Some(&b"abc"[..]));
            assert_eq!(b.get("empty"), Some(&b""[..]));
            assert_eq!(b.get("demo"), None, "a directory is not a file");
            assert_eq!(b.get("link"), None, "a symlink is not a file");
            assert_eq!(b.get("demo/kern"), None);
            assert_eq!(b.get("nothing"), None);
            assert!(b.entries().find(|e| e.name == "demo").is_some_and(|e| !e.is_file()));
        }
    }

    #[test]
    fn stops_at_the_trailer() {
        let mut a = sample("070701");
        let end = a.len();
        // Another archive after the first (as initramfs images may have), and junk.
        a.extend_from_slice(&archive("070701", &[("later", FILE, b"x")]));
        a.extend_from_slice(b"junk");
        let b = Bundle::parse(&a).unwrap();
        assert_eq!(b.get("later"), None);
        assert_eq!(b.entries().count(), 7);
        // The trailer's padding may be missing (110 + 11 bytes, padded to 124), not its NUL.
        assert_eq!(Bundle::parse(&a[..end - 3]).unwrap().entries().count(), 7);
        assert_eq!(err(&a[..end - 4]), BundleError::TruncatedName { offset: end - 124 });
    }

    #[test]
    fn later_duplicates_win() {
        let a = archive("070701", &[("x", FILE, b"one"), ("./x", FILE, b"two")]);
        assert_eq!(Bundle::parse(&a).unwrap().get("x"), Some(&b"two"[..]));
    }

    fn err(bytes: &[u8]) -> BundleError {
        Bundle::parse(bytes).unwrap_err()
    }

    #[test]
    fn malformed_archives_say_what_is_wrong() {
        let good = sample("070701");
        assert_eq!(err(&[]), BundleError::NoTrailer);
        assert_eq!(err(&good[..50]), BundleError::TruncatedHeader { offset: 0 });
        assert_eq!(err(b"\x1f\x8b\x08\x00rest"), BundleError::Compressed);
        assert_eq!(err(&[b'0'; 200]), BundleError::BadMagic { offset: 0 });
        let mut crc = sample("070702");
        let at = crc.windows(12).position(|w| w == b"demo/kernel\0").unwrap();
        let data_at = align4(at + 12);
        crc[data_at + 3] ^= 1;
        let entry = at - HEADER_LEN;
        assert!(matches!(err(&crc), BundleError::BadChecksum { offset, .. } if offset == entry));

        let field = |i: usize, v: &[u8; 8]| {
            let mut a = good.clone();
            a[6 + 8 * i..14 + 8 * i].copy_from_slice(v);
            err(&a)
        };
        assert_eq!(field(FILESIZE, b"0000000g"), BundleError::BadField { offset: 0, field: "filesize" });
        assert_eq!(field(0, b" 0000001"), BundleError::BadField { offset: 0, field: "ino" });
        assert_eq!(field(NAMESIZE, b"00000000"), BundleError::BadNameSize { offset: 0, namesize: 0 });
        assert_eq!(field(NAMESIZE, b"00100000"), BundleError::BadNameSize { offset: 0, namesize: 0x10_0000 });
        // Entry 0 is "." (namesize 2): 1 puts the end on the "." byte, 3 past the NUL.
        assert_eq!(field(NAMESIZE, b"00000001"), BundleError::BadName { offset: 0 });
        assert_eq!(field(NAMESIZE, b"00000003"), BundleError::BadName { offset: 0 });
        assert_eq!(field(FILESIZE, b"00001000"), BundleError::TruncatedData { offset: 0, filesize: 0x1000 });
        assert_eq!(field(NAMESIZE, b"00001000"), BundleError::TruncatedName { offset: 0 });

        let mut bad_utf8 = good.clone();
        bad_utf8[HEADER_LEN] = 0xff;
        assert_eq!(err(&bad_utf8), BundleError::NameNotUtf8 { offset: 0 });
        // No trailer: the archive just stops after an entry.
        let no_trailer = archive("070701", &[("a", FILE, b"1")]);
        let cut = no_trailer.len() - 124;
        assert_eq!(err(&no_trailer[..cut]), BundleError::NoTrailer);
        // A bad second entry is found at its offset.
        let mut second = good.clone();
        let off = align4(HEADER_LEN + 2);
        second[off] = b'9';
        assert_eq!(err(&second), BundleError::BadMagic { offset: off });

        let msg = alloc::format!("{}", BundleError::BadField { offset: 0x74, field: "mode" });
        assert_eq!(msg, "entry at 0x74: header field \"mode\" is not 8 hex digits");
        assert_eq!(alloc::format!("{}", BundleError::NoTrailer), "the archive ends without its TRAILER!!! entry");
    }

    #[test]
    fn every_truncation_is_refused() {
        let a = sample("070702");
        let complete = a.len() - 3; // the trailer's padding is optional
        for len in 0..a.len() {
            let r = Bundle::parse(&a[..len]);
            assert_eq!(r.is_ok(), len >= complete, "length {len}: {r:?}");
        }
    }

    /// Archives written by GNU cpio itself, when it is installed.
    #[test]
    fn reads_what_gnu_cpio_writes() {
        use std::process::{Command, Stdio};
        if Command::new("cpio").arg("--version").output().is_err() {
            std::eprintln!("SKIP: no cpio (apt-get install cpio)");
            return;
        }
        let dir = std::env::temp_dir().join(alloc::format!("ferrovisor-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vm/sub")).unwrap();
        let big: Vec<u8> = (0..70_001u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.join("vm/kernel"), &big).unwrap();
        std::fs::write(dir.join("vm/sub/x"), b"odd").unwrap();
        std::fs::write(dir.join("default.vms"), b"vm 1 64 vm/kernel\n").unwrap();
        for format in ["newc", "crc"] {
            let script = alloc::format!("find . | LC_ALL=C sort | cpio --quiet -o -H {format}");
            let out = Command::new("sh").arg("-c").arg(&script).current_dir(&dir).stderr(Stdio::inherit()).output();
            let out = out.unwrap();
            assert!(out.status.success(), "{script}");
            let b = Bundle::parse(&out.stdout).unwrap();
            assert_eq!(b.get("vm/kernel"), Some(&big[..]));
            assert_eq!(b.get("./vm/sub/x"), Some(&b"odd"[..]));
            assert_eq!(b.get("default.vms"), Some(&b"vm 1 64 vm/kernel\n"[..]));
            assert_eq!(b.file_count(), 3);
            assert!(b.entries().any(|e| normalize(e.name) == "vm/sub" && !e.is_file()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Parses and, when that works, reads everything: nothing may panic and
    /// every entry must lie inside the input.
    fn exercise(bytes: &[u8]) {
        match Bundle::parse(bytes) {
            Ok(b) => {
                let mut files = 0;
                for e in b.entries() {
                    files += usize::from(e.is_file());
                    let start = e.data.as_ptr() as usize;
                    assert!(start >= bytes.as_ptr() as usize);
                    assert!(start + e.data.len() <= bytes.as_ptr() as usize + bytes.len());
                    if e.is_file() {
                        assert!(b.get(e.name).is_some());
                    }
                }
                assert_eq!(files, b.file_count());
            }
            Err(e) => assert!(!alloc::format!("{e}").is_empty()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600), magic in 0..3usize) {
            exercise(&body);
            // A valid magic and hex-looking fields get further in.
            let mut a = [&b"070701"[..], b"070702", b"0707"][magic].to_vec();
            a.extend(body.iter().map(|b| b"0123456789abcdef"[usize::from(b & 15)]).take(104));
            a.extend_from_slice(&body);
            exercise(&a);
        }

        #[test]
        fn mutated_archives_never_panic(
            crc in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            hex_edits in prop::collection::vec((any::<prop::sample::Index>(), 0..16u8), 0..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut a = sample(if crc { "070702" } else { "070701" });
            for (at, byte) in edits {
                let i = at.index(a.len());
                a[i] = byte;
            }
            // Edits that keep a header field hex, so sizes change but still parse.
            for (at, digit) in hex_edits {
                let i = at.index(a.len());
                a[i] = b"0123456789ABCDEF"[usize::from(digit)];
            }
            if let Some(cut) = cut {
                a.truncate(cut.index(a.len()));
            }
            exercise(&a);
        }
    }
}
