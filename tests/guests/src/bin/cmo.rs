//! `cmo`: with the MMU and caches off, the guest reads what the loader wrote
//! into its memory. A hypervisor that wrote through cacheable mappings and
//! did not clean them to the point of coherency before the first run shows
//! up here as stale words.
//!
//! Sub-tests: `data` (a 64 KiB pattern in the guest's own `.data`), `initrd`
//! (byte i of the initrd is `(i * 7 + 3) & 0xff`; `initrd-size=N` checks its
//! length; SKIP without an initrd), `dtb` (the device tree's header).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};

    use ferrovisor_shared::dt::{Board, FDT_MAGIC};
    use ferrovisor_test_guests::pattern::{data_word, first_mismatch, initrd_byte, DATA_WORDS};
    use ferrovisor_test_guests::{guest_main, report, report_info, report_skip, Env, SubTest};

    guest_main!(
        "cmo",
        &[
            SubTest { name: "data", run: data },
            SubTest { name: "initrd", run: initrd },
            SubTest { name: "dtb", run: dtb },
        ]
    );

    /// Built by the compiler into `.data` (atomics are writable, so the array
    /// cannot go to `.rodata`, and reading it cannot be folded into constants).
    static PATTERN: [AtomicU64; DATA_WORDS] = pattern();

    const fn pattern() -> [AtomicU64; DATA_WORDS] {
        let mut words = [const { AtomicU64::new(0) }; DATA_WORDS];
        let mut i = 0;
        while i < DATA_WORDS {
            words[i] = AtomicU64::new(data_word(i));
            i += 1;
        }
        words
    }

    fn data(_: &Env) {
        let words = PATTERN.iter().map(|w| w.load(Ordering::Relaxed));
        let bad = first_mismatch(words, data_word);
        let at = PATTERN.as_ptr() as usize;
        match bad {
            None => report(true, format_args!("{DATA_WORDS} words of .data at {at:#x} hold the build's pattern")),
            Some((i, got, want)) => {
                report(false, format_args!("{:#x} (.data word {i}) holds {got:#018x}, not {want:#018x}", at + 8 * i))
            }
        };
    }

    fn initrd(env: &Env) {
        let size_arg = match env.args.number("initrd-size") {
            Ok(s) => s,
            Err(e) => {
                report(false, e);
                None
            }
        };
        let Some(rd) = env.board.initrd() else {
            report_skip("no initrd in the device tree");
            return;
        };
        report_info(format_args!("initrd at {:#x}, {} bytes", rd.base, rd.size));
        if let Some(n) = size_arg {
            report(rd.size == n, format_args!("initrd-size={n}: the device tree's initrd has {} bytes", rd.size));
        } else {
            report(rd.size > 0, "the initrd is not empty");
        }
        if !env.board.memory().iter().any(|m| m.base <= rd.base && rd.end() <= m.end()) {
            report(false, format_args!("initrd {:#x}..{:#x} is not inside RAM", rd.base, rd.end()));
            return;
        }
        let (Ok(base), Ok(len)) = (usize::try_from(rd.base), usize::try_from(rd.size)) else { return };
        // SAFETY: the range lies in the VM's RAM (checked above), where the
        // loader put the initrd, and nothing in the guest writes there.
        let bytes = unsafe { core::slice::from_raw_parts(base as *const u8, len) };
        match first_mismatch(bytes.iter().copied(), initrd_byte) {
            None => report(true, format_args!("all {len} initrd bytes hold (i * 7 + 3) & 0xff")),
            Some((i, got, want)) => {
                report(false, format_args!("initrd byte {i} ({:#x}) is {got:#04x}, not {want:#04x}", base + i))
            }
        };
    }

    /// A big-endian word of the device tree header, read byte by byte from
    /// memory (not from the parsed copy).
    fn be32(addr: usize) -> u32 {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: `addr..addr + 4` is within the device tree's header,
            // which start-up parsed at this address.
            *b = unsafe { core::ptr::read_volatile((addr + i) as *const u8) };
        }
        u32::from_be_bytes(bytes)
    }

    fn dtb(env: &Env) {
        let magic = be32(env.dtb);
        report(magic == FDT_MAGIC, format_args!("header magic {magic:#010x} at {:#x}", env.dtb));
        let total = be32(env.dtb + 4) as usize;
        report(
            total == env.board.totalsize(),
            format_args!("header totalsize {total} matches the blob parsed at start-up"),
        );
        report(Board::from_slice(env.board.as_bytes()).is_ok(), "the blob parses again");
    }
}
