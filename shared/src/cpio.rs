//! cpio archives in the "newc" format (the `070701` magic, and `070702`, the
//! same with a checksum), as Linux's initramfs and `cpio -o -H newc` have
//! them: the reader the host takes its guest bundle with, and the writer
//! xtask packs bundles and initramfs images with.
//!
//! An archive is a sequence of entries, each a 110-byte ASCII header (the
//! magic, then 13 eight-digit hex fields), the NUL-terminated name padded so
//! the data starts on a 4-byte boundary, then the data padded to a 4-byte
//! boundary. The entry named `TRAILER!!!` ends it; anything after the trailer
//! is ignored.
//!
//! [`Archive::parse`] checks the whole archive once, so lookups afterwards
//! cannot fail; any byte string is safe to give it, and what is wrong is an
//! [`Error`] naming the entry, never a panic. Files are borrowed from the
//! archive, not copied. [`Writer`] appends to anything that is
//! `Extend<u8>` (a `Vec<u8>`), so this module needs no allocator.
//!
//! Not the `cpio_reader` crate: it stops silently at the first bad header, so
//! a broken bundle could not be told from a short one, nor the user told
//! where it breaks. Not the `cpio` crate: it reads and writes through
//! `std::io`, which the host (`no_std`) has not.

use core::fmt;

/// Size of an entry header.
pub const HEADER_LEN: usize = 110;
/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Longest entry name accepted (Linux's `PATH_MAX`).
pub const MAX_NAME: usize = 4096;

const MAGIC_NEWC: &[u8; 6] = b"070701";
const MAGIC_CRC: &[u8; 6] = b"070702";
/// `st_mode`'s file type bits and the types written here.
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFCHR: u32 = 0o020_000;

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
const RDEVMAJOR: usize = 9;
const RDEVMINOR: usize = 10;
const CHECK: usize = 12;

/// Why an archive was refused. `offset` is where the entry's header starts
/// in the archive. `Display` gives the message to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
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

impl fmt::Display for Error {
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
    /// A device file's major and minor number (`rdevmajor`, `rdevminor`).
    pub rdev: (u32, u32),
}

impl Entry<'_> {
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

/// A checked cpio newc archive.
#[derive(Clone, Copy, Debug)]
pub struct Archive<'a> {
    /// The archive up to and including the trailer's header and name.
    bytes: &'a [u8],
    files: usize,
}

impl<'a> Archive<'a> {
    /// Checks the archive from its first entry to `TRAILER!!!`.
    ///
    /// # Errors
    /// The first thing wrong, with the offset of the entry it is in: a
    /// truncated header, name or data, a bad magic, a header field that is not
    /// hex, a bad name size or name, a checksum mismatch (`070702`), or no
    /// trailer.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            return Err(Error::Compressed);
        }
        let mut off = 0;
        let mut files = 0;
        loop {
            if off >= bytes.len() {
                return Err(Error::NoTrailer);
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

/// `path` without leading `./` and `/` components, as names are compared.
pub fn normalize(mut path: &str) -> &str {
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

/// The entries of a [`Archive`].
#[derive(Clone)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        // `Archive::parse` checked every entry; an error here cannot happen
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
fn parse_hex8(field: &[u8]) -> Option<u32> {
    if field.len() != 8 {
        return None;
    }
    field.iter().try_fold(0u32, |acc, &b| Some(acc << 4 | char::from(b).to_digit(16)?))
}

/// The entry whose header is at `off`, and the offset of the next one.
fn read_entry(bytes: &[u8], off: usize) -> Result<(Entry<'_>, usize), Error> {
    let header = off
        .checked_add(HEADER_LEN)
        .and_then(|end| bytes.get(off..end))
        .ok_or(Error::TruncatedHeader { offset: off })?;
    let magic = header.get(..6).unwrap_or(&[]);
    let with_crc = match magic {
        m if m == MAGIC_NEWC => false,
        m if m == MAGIC_CRC => true,
        _ => return Err(Error::BadMagic { offset: off }),
    };
    let mut fields = [0u32; 13];
    for (i, (slot, name)) in fields.iter_mut().zip(FIELDS).enumerate() {
        let at = 6 + 8 * i;
        *slot = header.get(at..at + 8).and_then(parse_hex8).ok_or(Error::BadField { offset: off, field: name })?;
    }
    let namesize = fields[NAMESIZE];
    if namesize == 0 || namesize as usize > MAX_NAME + 1 {
        return Err(Error::BadNameSize { offset: off, namesize });
    }
    let name_start = off + HEADER_LEN;
    let name_end = name_start + namesize as usize;
    let raw_name = bytes.get(name_start..name_end).ok_or(Error::TruncatedName { offset: off })?;
    let (&last, name) = raw_name.split_last().ok_or(Error::BadName { offset: off })?;
    if last != 0 || name.contains(&0) {
        return Err(Error::BadName { offset: off });
    }
    let name = core::str::from_utf8(name).map_err(|_| Error::NameNotUtf8 { offset: off })?;
    let data_start = align4(name_end);
    if name == TRAILER {
        // Tolerate an archive cut right after the trailer's name.
        return Ok((Entry { name, mode: fields[MODE], data: &[], rdev: (0, 0) }, data_start.min(bytes.len())));
    }
    if data_start > bytes.len() {
        return Err(Error::TruncatedName { offset: off });
    }
    let filesize = fields[FILESIZE];
    let data_end = data_start + filesize as usize;
    let next = align4(data_end);
    let data = match bytes.get(data_start..data_end) {
        Some(d) if next <= bytes.len() => d,
        _ => return Err(Error::TruncatedData { offset: off, filesize }),
    };
    if with_crc {
        let actual = data.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)));
        if actual != fields[CHECK] {
            return Err(Error::BadChecksum { offset: off, expected: fields[CHECK], actual });
        }
    }
    Ok((Entry { name, mode: fields[MODE], data, rdev: (fields[RDEVMAJOR], fields[RDEVMINOR]) }, next))
}

/// Why [`Writer`] refused an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The data is 4 GiB or more (`filesize` is 32 bits).
    TooLarge,
    /// The name holds a NUL or is longer than [`MAX_NAME`], so no reader
    /// (this one included) would take it.
    BadName,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("4 GiB or more"),
            Self::BadName => write!(f, "the name holds a NUL or is longer than {MAX_NAME} bytes"),
        }
    }
}

/// Writes an archive as `cpio -o -H newc` (or `-H crc`) does: entries
/// numbered from inode 1, uid, gid and mtime 0, then [`TRAILER`] at
/// [`Writer::finish`].
pub struct Writer<W> {
    out: W,
    len: usize,
    entries: u32,
    checksums: bool,
}

impl<W: Extend<u8>> Writer<W> {
    /// A `070701` archive appended to `out`.
    pub fn new(out: W) -> Self {
        Writer { out, len: 0, entries: 0, checksums: false }
    }

    /// A `070702` archive (each entry's `check` the sum of its data bytes).
    pub fn with_checksums(out: W) -> Self {
        Writer { out, len: 0, entries: 0, checksums: true }
    }

    /// A regular file, mode 0644.
    ///
    /// # Errors
    /// As [`Writer::entry`].
    pub fn file(&mut self, name: &str, data: &[u8]) -> Result<(), WriteError> {
        self.entry(name, S_IFREG | 0o644, data, (0, 0))
    }

    /// An entry of any type: `mode` is `st_mode`, `rdev` a device file's
    /// major and minor number. Directories get 2 links, the rest 1.
    ///
    /// # Errors
    /// [`WriteError::TooLarge`], [`WriteError::BadName`]; nothing is written then.
    pub fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> Result<(), WriteError> {
        let size = u32::try_from(data.len()).map_err(|_| WriteError::TooLarge)?;
        if name.len() > MAX_NAME || name.as_bytes().contains(&0) {
            return Err(WriteError::BadName);
        }
        self.entries += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        self.push(self.entries, name, mode, nlink, size, data, rdev);
        Ok(())
    }

    /// Ends the archive with its trailer and gives the output back.
    pub fn finish(mut self) -> W {
        self.push(0, TRAILER, 0, 1, 0, &[], (0, 0));
        self.out
    }

    #[allow(clippy::too_many_arguments, reason = "the header's own fields")]
    fn push(&mut self, ino: u32, name: &str, mode: u32, nlink: u32, size: u32, data: &[u8], rdev: (u32, u32)) {
        let check = if self.checksums { data.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b))) } else { 0 };
        let namesize = name.len() as u32 + 1;
        // In the order of FIELDS.
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, check];
        self.bytes(if self.checksums { MAGIC_CRC } else { MAGIC_NEWC });
        for f in fields {
            self.bytes(&hex8(f));
        }
        self.bytes(name.as_bytes());
        self.bytes(&[0]);
        self.pad();
        self.bytes(data);
        self.pad();
    }

    fn bytes(&mut self, b: &[u8]) {
        self.out.extend(b.iter().copied());
        self.len += b.len();
    }

    fn pad(&mut self) {
        let n = align4(self.len) - self.len;
        self.bytes(&[0; 3][..n]);
    }
}

/// `value` as eight upper-case hex digits.
fn hex8(value: u32) -> [u8; 8] {
    let mut digits = [0; 8];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = b"0123456789ABCDEF"[(value >> (28 - 4 * i)) as usize & 15];
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn archive(magic: &str, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut w = if magic == "070702" { Writer::with_checksums(Vec::new()) } else { Writer::new(Vec::new()) };
        for &(name, mode, data) in entries {
            w.entry(name, mode, data, (0, 0)).unwrap();
        }
        w.finish()
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

    /// One file, spelled out byte by byte: a hand check of the layout the
    /// writer produces.
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
        let trailer = &a[120..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[6..14], b"00000000", "trailer ino");
        assert_eq!(&trailer[6 + 8 * 6..6 + 8 * 7], b"00000000", "trailer filesize");
        assert_eq!(&trailer[6 + 8 * 11..6 + 8 * 12], b"0000000B", "trailer namesize");
        assert_eq!(&trailer[HEADER_LEN..], b"TRAILER!!!\0\0\0\0", "name, NUL and padding to 4");
        // The empty archive is just the trailer.
        assert_eq!(Writer::new(Vec::new()).finish().len(), 124);
    }

    /// A directory has two links and a device its numbers; inodes count up.
    #[test]
    fn modes_links_and_devices() {
        let mut w = Writer::new(Vec::new());
        w.entry("dev", S_IFDIR | 0o755, b"", (0, 0)).unwrap();
        w.entry("dev/console", S_IFCHR | 0o600, b"", (5, 1)).unwrap();
        let a = w.finish();
        let field = |entry: usize, i: usize| &a[entry + 6 + 8 * i..entry + 14 + 8 * i];
        // "dev" and NUL: 114 bytes, padded to 116.
        assert_eq!([field(0, 0), field(0, 1), field(0, 4)], [b"00000001", b"000041ED", b"00000002"]);
        assert_eq!([field(116, 0), field(116, 1), field(116, 4)], [b"00000002", b"00002180", b"00000001"]);
        assert_eq!([field(116, 9), field(116, 10)], [b"00000005", b"00000001"]);
        let entries: Vec<_> = Archive::parse(&a).unwrap().entries().map(|e| (e.name, e.mode, e.rdev)).collect();
        assert_eq!(entries, [("dev", S_IFDIR | 0o755, (0, 0)), ("dev/console", S_IFCHR | 0o600, (5, 1))]);
    }

    #[test]
    fn the_writer_refuses_what_no_reader_takes() {
        let mut w = Writer::new(Vec::new());
        assert_eq!(w.file("a\0b", b""), Err(WriteError::BadName));
        assert_eq!(w.file(&"n".repeat(MAX_NAME + 1), b""), Err(WriteError::BadName));
        w.file(&"n".repeat(MAX_NAME), b"x").unwrap();
        let a = w.finish();
        assert_eq!(Archive::parse(&a).unwrap().file_count(), 1, "nothing written for the refused ones");
        assert_eq!(WriteError::TooLarge.to_string(), "4 GiB or more");
    }

    #[test]
    fn reads_entries_and_files() {
        for magic in ["070701", "070702"] {
            let a = sample(magic);
            let b = Archive::parse(&a).unwrap();
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
        let b = Archive::parse(&a).unwrap();
        assert_eq!(b.get("later"), None);
        assert_eq!(b.entries().count(), 7);
        // The trailer's padding may be missing (110 + 11 bytes, padded to 124), not its NUL.
        assert_eq!(Archive::parse(&a[..end - 3]).unwrap().entries().count(), 7);
        assert_eq!(err(&a[..end - 4]), Error::TruncatedName { offset: end - 124 });
    }

    #[test]
    fn later_duplicates_win() {
        let a = archive("070701", &[("x", FILE, b"one"), ("./x", FILE, b"two")]);
        assert_eq!(Archive::parse(&a).unwrap().get("x"), Some(&b"two"[..]));
    }

    fn err(bytes: &[u8]) -> Error {
        Archive::parse(bytes).unwrap_err()
    }

    #[test]
    fn malformed_archives_say_what_is_wrong() {
        let good = sample("070701");
        assert_eq!(err(&[]), Error::NoTrailer);
        assert_eq!(err(&good[..50]), Error::TruncatedHeader { offset: 0 });
        assert_eq!(err(b"\x1f\x8b\x08\x00rest"), Error::Compressed);
        assert_eq!(err(&[b'0'; 200]), Error::BadMagic { offset: 0 });
        let mut crc = sample("070702");
        let at = crc.windows(12).position(|w| w == b"demo/kernel\0").unwrap();
        let data_at = align4(at + 12);
        crc[data_at + 3] ^= 1;
        let entry = at - HEADER_LEN;
        assert!(matches!(err(&crc), Error::BadChecksum { offset, .. } if offset == entry));

        let field = |i: usize, v: &[u8; 8]| {
            let mut a = good.clone();
            a[6 + 8 * i..14 + 8 * i].copy_from_slice(v);
            err(&a)
        };
        assert_eq!(field(FILESIZE, b"0000000g"), Error::BadField { offset: 0, field: "filesize" });
        assert_eq!(field(0, b" 0000001"), Error::BadField { offset: 0, field: "ino" });
        assert_eq!(field(NAMESIZE, b"00000000"), Error::BadNameSize { offset: 0, namesize: 0 });
        assert_eq!(field(NAMESIZE, b"00100000"), Error::BadNameSize { offset: 0, namesize: 0x10_0000 });
        // Entry 0 is "." (namesize 2): 1 puts the end on the "." byte, 3 past the NUL.
        assert_eq!(field(NAMESIZE, b"00000001"), Error::BadName { offset: 0 });
        assert_eq!(field(NAMESIZE, b"00000003"), Error::BadName { offset: 0 });
        assert_eq!(field(FILESIZE, b"00001000"), Error::TruncatedData { offset: 0, filesize: 0x1000 });
        assert_eq!(field(NAMESIZE, b"00001000"), Error::TruncatedName { offset: 0 });

        let mut bad_utf8 = good.clone();
        bad_utf8[HEADER_LEN] = 0xff;
        assert_eq!(err(&bad_utf8), Error::NameNotUtf8 { offset: 0 });
        // No trailer: the archive just stops after an entry.
        let no_trailer = archive("070701", &[("a", FILE, b"1")]);
        let cut = no_trailer.len() - 124;
        assert_eq!(err(&no_trailer[..cut]), Error::NoTrailer);
        // A bad second entry is found at its offset.
        let mut second = good.clone();
        let off = align4(HEADER_LEN + 2);
        second[off] = b'9';
        assert_eq!(err(&second), Error::BadMagic { offset: off });

        let msg = format!("{}", Error::BadField { offset: 0x74, field: "mode" });
        assert_eq!(msg, "entry at 0x74: header field \"mode\" is not 8 hex digits");
        assert_eq!(format!("{}", Error::NoTrailer), "the archive ends without its TRAILER!!! entry");
    }

    #[test]
    fn every_truncation_is_refused() {
        let a = sample("070702");
        let complete = a.len() - 3; // the trailer's padding is optional
        for len in 0..a.len() {
            let r = Archive::parse(&a[..len]);
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
        let dir = std::env::temp_dir().join(format!("ferrovisor-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vm/sub")).unwrap();
        let big: Vec<u8> = (0..70_001u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.join("vm/kernel"), &big).unwrap();
        std::fs::write(dir.join("vm/sub/x"), b"odd").unwrap();
        std::fs::write(dir.join("default.vms"), b"vm 1 64 vm/kernel\n").unwrap();
        for format in ["newc", "crc"] {
            let script = format!("find . | LC_ALL=C sort | cpio --quiet -o -H {format}");
            let out = Command::new("sh").arg("-c").arg(&script).current_dir(&dir).stderr(Stdio::inherit()).output();
            let out = out.unwrap();
            assert!(out.status.success(), "{script}");
            let b = Archive::parse(&out.stdout).unwrap();
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
        match Archive::parse(bytes) {
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
            Err(e) => assert!(!format!("{e}").is_empty()),
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2000))]

        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600), magic in 0..3usize) {
            exercise(&body);
            // A valid magic and hex-looking fields get further in.
            let mut a = [&b"070701"[..], b"070702", b"0707"][magic].to_vec();
            a.extend(body.iter().map(|b| b"0123456789abcdef"[usize::from(b & 15)]).take(104));
            a.extend_from_slice(&body);
            exercise(&a);
        }

        /// What the writer writes reads back as it was given.
        #[test]
        fn round_trip(
            crc in any::<bool>(),
            entries in prop::collection::vec(
                ("[a-z./]{1,12}", prop_oneof![Just(S_IFREG | 0o644), Just(S_IFDIR | 0o755), Just(S_IFCHR | 0o600)],
                 prop::collection::vec(any::<u8>(), 0..40), (0..300u32, 0..300u32)),
                0..6,
            ),
        ) {
            let mut w = if crc { Writer::with_checksums(Vec::new()) } else { Writer::new(Vec::new()) };
            for (name, mode, data, rdev) in &entries {
                w.entry(name, *mode, data, *rdev).unwrap();
            }
            let a = w.finish();
            prop_assert_eq!(a.len() % 4, 0);
            let b = Archive::parse(&a).unwrap();
            let back: Vec<_> = b.entries().map(|e| (e.name.to_string(), e.mode, e.data.to_vec(), e.rdev)).collect();
            prop_assert_eq!(back, entries);
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
