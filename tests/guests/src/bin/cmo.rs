//! `cmo`: with the MMU and caches off, the guest reads what the loader wrote
//! into its memory. A hypervisor that wrote through cacheable mappings and
//! did not clean them to the point of coherency before the first run shows
//! up here as stale words.
//!
//! Sub-tests: `data` (a 64 KiB pattern in the guest's own `.data`), `initrd`
//! (byte i of the initrd is `(i * 7 + 3) & 0xff`; `initrd-size=N` checks its
//! length; SKIP without an initrd), `dtb` (the device tree's header), and
//! `reset` (only when named: it spoils `.data`, leaves a marker at the top
//! of RAM and calls PSCI `SYSTEM_RESET`; after the restart the hypervisor has
//! reloaded the image, so `.data` must hold the pattern again — which with
//! caches off it does only if the reload's cache maintenance was performed
//! again: docs/run-loop.md §7).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};

    use ferrovisor_shared::dt::{Board, FDT_MAGIC};
    use ferrovisor_test_guests::pattern::{data_word, first_mismatch, initrd_byte, DATA_WORDS};
    use ferrovisor_test_guests::{guest_main, psci, report, report_info, report_skip, Env, SubTest};

    guest_main!(
        "cmo",
        &[
            SubTest { name: "data", run: data },
            SubTest { name: "initrd", run: initrd },
            SubTest { name: "dtb", run: dtb },
            SubTest { name: "reset", run: reset },
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

    /// "Reset requested" in the last word of RAM.
    const RESET_MARKER: u64 = 0x7265_7365_742d_636d;

    fn reset(env: &Env) {
        if env.args.subtest() != Some("reset") {
            report_skip("reset runs only when named (bootargs `reset`): it restarts the VM");
            return;
        }
        let Some(top) = env.board.memory().iter().map(|m| m.end()).max() else {
            report(false, "no memory in the device tree");
            return;
        };
        let marker = (top - 8) as usize as *mut u64;
        // SAFETY: the last word of the VM's RAM, above the image, initrd and
        // device tree the loader placed, and used by nothing else.
        let seen = unsafe { marker.read_volatile() };
        if seen == RESET_MARKER {
            // SAFETY: as above.
            unsafe { marker.write_volatile(0) };
            report(true, "the VM restarted after SYSTEM_RESET (the marker survived in RAM)");
            let bad = first_mismatch(PATTERN.iter().map(|w| w.load(Ordering::Relaxed)), data_word);
            report(bad.is_none(), format_args!("after the reset .data holds the build's pattern again ({bad:?})"));
            return;
        }
        for w in PATTERN.iter() {
            w.store(!0, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { marker.write_volatile(RESET_MARKER) };
        report_info(".data spoilt and the marker set; calling SYSTEM_RESET");
        let r = psci::system_reset();
        report(false, format_args!("SYSTEM_RESET returned ({r:?})"));
    }
}
