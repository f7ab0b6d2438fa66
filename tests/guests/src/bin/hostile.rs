//! `hostile`: things a guest may do wrong, which must cost it no more than an
//! exception or an error code, and never stop the hypervisor.
//!
//! Sub-tests: `unknown-sysreg` (an IMPLEMENTATION DEFINED register read is
//! UNDEFINED at EL1), `unknown-smc` and `unknown-hvc` (unknown SMCCC
//! functions return NOT_SUPPORTED), `outside-map` (a load from an IPA with
//! neither RAM nor a device is a synchronous external abort), `abort-flood`
//! (so is each of thousands, which the hypervisor's log does not repeat
//! line by line), `debug-regs` (breakpoint and watchpoint registers keep
//! what this vCPU wrote across thousands of exits: never another VM's;
//! `salt=N` picks the values), `ipa-probe` (only when named: a load from
//! every page below RAM outside the device tree's devices, the pages past
//! its end and one per GiB to the top of a 40-bit IPA space, each an
//! external abort: nothing outside its map answers), `ram-pattern` (the
//! last eighth of its RAM reads zero, then holds the pattern of its
//! `salt=N` across thousands of exits: two VMs never see each other's
//! memory), `wfi-wfe`
//! (`wfe` returns).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;

    use aarch64_cpu::registers::{Readable, Writeable, CNTKCTL_EL1};
    use ferrovisor_shared::dt::GicDesc;
    use ferrovisor_test_guests::exception::catch;
    use ferrovisor_test_guests::{guest_main, psci, report, report_info, report_skip, time, Env, SubTest};
    use smccc::psci::error::NOT_SUPPORTED;
    use smccc::{Call, Hvc, Smc};

    guest_main!(
        "hostile",
        &[
            SubTest { name: "unknown-sysreg", run: unknown_sysreg },
            SubTest { name: "unknown-smc", run: unknown_smc },
            SubTest { name: "unknown-hvc", run: unknown_hvc },
            SubTest { name: "outside-map", run: outside_map },
            SubTest { name: "abort-flood", run: abort_flood },
            SubTest { name: "mmio-no-syndrome", run: mmio_no_syndrome },
            SubTest { name: "wfi-wfe", run: wfi_wfe },
            SubTest { name: "debug-regs", run: debug_regs },
            SubTest { name: "ipa-probe", run: ipa_probe },
            SubTest { name: "ram-pattern", run: ram_pattern },
        ]
    );

    const EC_UNKNOWN: u8 = 0x00;
    const EC_DATA_ABORT_SAME_EL: u8 = 0x25;
    /// DFSC: synchronous external abort, not on a translation table walk.
    const DFSC_SYNC_EXTERNAL: u64 = 0x10;
    /// ESR_ELx.ISS.FnV: FAR is not valid.
    const ESR_FNV: u64 = 1 << 10;
    /// Neither RAM nor a device in the guest's map (nor in QEMU virt's).
    const OUTSIDE_MAP: u64 = 0x20_0000_0000;
    const UNKNOWN_SMC_FUNCTION: u32 = 0xc300_0099;
    const UNKNOWN_HVC_FUNCTION: u32 = 0xc600_00ff;
    const WAKE_LIMIT_US: u64 = 1_000_000;

    fn unknown_sysreg(_: &Env) {
        let ((at, value), e) = catch(|| {
            let (at, value): (u64, u64);
            // SAFETY: reading an IMPLEMENTATION DEFINED register changes
            // nothing; if it is UNDEFINED our vectors resume after it.
            unsafe { asm!("adr {at}, 2f", "2: mrs {v}, s3_0_c15_c0_0", at = out(reg) at, v = out(reg) value) };
            (at, value)
        });
        match e {
            Some(e) => {
                report(
                    e.ec() == EC_UNKNOWN && !e.from_el0,
                    format_args!("mrs S3_0_C15_C0_0: UNDEFINED at EL1 (EC {:#04x}, want 0x00)", e.ec()),
                );
                report(e.elr == at, format_args!("mrs S3_0_C15_C0_0: ELR {:#x} (want {at:#x})", e.elr));
            }
            None => {
                report(false, format_args!("mrs S3_0_C15_C0_0 read {value:#x} instead of being UNDEFINED"));
            }
        }
    }

    /// Checks an SMCCC call that must return NOT_SUPPORTED in W0.
    fn not_supported(what: &str, function: u32, r: ([u64; 18], Option<ferrovisor_test_guests::exception::Exception>)) {
        match r {
            (_, Some(e)) => {
                report(
                    false,
                    format_args!("{what} {function:#x}: taken at EL1 (EC {:#04x}) instead of returning", e.ec()),
                );
            }
            (ret, None) => {
                report(
                    psci::w0(ret[0]) == NOT_SUPPORTED,
                    format_args!("{what} {function:#x} returns NOT_SUPPORTED (x0 = {:#x})", ret[0]),
                );
            }
        }
    }

    fn unknown_smc(_: &Env) {
        not_supported("smc #0", UNKNOWN_SMC_FUNCTION, catch(|| Smc::call64(UNKNOWN_SMC_FUNCTION, [0; 17])));
    }

    fn unknown_hvc(_: &Env) {
        not_supported("hvc #0", UNKNOWN_HVC_FUNCTION, catch(|| Hvc::call64(UNKNOWN_HVC_FUNCTION, [0; 17])));
    }

    fn outside_map(_: &Env) {
        let (at, e) = catch(|| {
            let at: u64;
            // SAFETY: a load from an address with nothing behind it: it aborts
            // (and our vectors resume after it) or reads something; it writes
            // nothing.
            unsafe {
                asm!("adr {at}, 2f", "2: ldr {v}, [{a}]", at = out(reg) at, v = out(reg) _, a = in(reg) OUTSIDE_MAP)
            };
            at
        });
        let Some(e) = e else {
            report(false, format_args!("a load from {OUTSIDE_MAP:#x} completed without an exception"));
            return;
        };
        report(
            e.ec() == EC_DATA_ABORT_SAME_EL && !e.from_el0,
            format_args!("load from {OUTSIDE_MAP:#x}: data abort at EL1 (EC {:#04x}, want 0x25)", e.ec()),
        );
        let dfsc = e.esr.0 & 0x3f;
        report(dfsc == DFSC_SYNC_EXTERNAL, format_args!("DFSC {dfsc:#04x} (want 0x10, synchronous external abort)"));
        report(
            e.esr.0 & ESR_FNV == 0 && e.far == OUTSIDE_MAP,
            format_args!("FAR {:#x} (want {OUTSIDE_MAP:#x}, valid)", e.far),
        );
        report(e.elr == at, format_args!("ELR {:#x} at the load (want {at:#x})", e.elr));
    }

    /// Breakpoint and watchpoint value registers 0 and 1 (every Armv8 PE
    /// has at least two of each: Arm ARM D24.3.2, ID_AA64DFR0_EL1.BRPs and
    /// WRPs) hold what this vCPU wrote while it takes thousands of exits to
    /// the hypervisor (console reads): a VM beside it on the same CPU writes
    /// others. The control registers stay 0: nothing is armed.
    fn debug_regs(env: &Env) {
        let salt = env.args.number("salt").ok().flatten().unwrap_or(0) & 0xff;
        let Some(uart) = env.board.console() else {
            report_skip("no console UART in the device tree");
            return;
        };
        let want = |i: u64| 0x0000_7f00_0000_0000 | salt << 32 | i << 12;
        let [b0, b1, w0, w1] = [want(1), want(2), want(3), want(4)];
        // SAFETY: writes of the value registers of breakpoints and
        // watchpoints 0 and 1, whose control registers stay 0 (disabled):
        // nothing can fire.
        unsafe {
            asm!(
                "msr dbgbvr0_el1, {b0}", "msr dbgbvr1_el1, {b1}", "msr dbgwvr0_el1, {w0}", "msr dbgwvr1_el1, {w1}",
                "isb",
                b0 = in(reg) b0, b1 = in(reg) b1, w0 = in(reg) w0, w1 = in(reg) w1,
            )
        };
        let mut got = [0u64; 4];
        let mut first_bad = None;
        for round in 0..2000u32 {
            // The PL011's flag register: an exit to the host under a hypervisor.
            // SAFETY: a read of the UART's FR, which has no side effects.
            let _ = unsafe { core::ptr::read_volatile((uart.base + 0x18) as *const u32) };
            // SAFETY: reads of the registers written above.
            unsafe {
                asm!(
                    "mrs {0}, dbgbvr0_el1", "mrs {1}, dbgbvr1_el1", "mrs {2}, dbgwvr0_el1", "mrs {3}, dbgwvr1_el1",
                    out(reg) got[0], out(reg) got[1], out(reg) got[2], out(reg) got[3],
                )
            };
            // DBGWVR<n>.VA[1:0] are RES0; the values above keep them clear.
            if got != [b0, b1, w0, w1] && first_bad.is_none() {
                first_bad = Some((round, got));
            }
        }
        let _ = match first_bad {
            None => report(true, format_args!("DBGBVR0/1, DBGWVR0/1 kept salt {salt:#x}'s values over 2000 exits")),
            Some((round, got)) => report(
                false,
                format_args!("round {round}: DBGBVR0/1, DBGWVR0/1 read {got:#x?}, want {:#x?}", [b0, b1, w0, w1]),
            ),
        };
        let (bcr0, wcr0): (u64, u64);
        // SAFETY: reads of two control registers.
        unsafe { asm!("mrs {0}, dbgbcr0_el1", "mrs {1}, dbgwcr0_el1", out(reg) bcr0, out(reg) wcr0) };
        let _ = report(
            bcr0 & 1 == 0 && wcr0 & 1 == 0,
            format_args!("DBGBCR0.E and DBGWCR0.E clear ({bcr0:#x}, {wcr0:#x})"),
        );
    }

    /// Whether the device tree at `dtb` holds `needle` (a compatible string).
    fn dtb_mentions(dtb: usize, needle: &[u8]) -> bool {
        // SAFETY: the device tree the loader passed; its header's totalsize
        // (big-endian, at offset 4) bounds it.
        let size = u32::from_be(unsafe { core::ptr::read_volatile((dtb + 4) as *const u32) }) as usize;
        // SAFETY: as above, within totalsize.
        let bytes = unsafe { core::slice::from_raw_parts(dtb as *const u8, size.min(1 << 20)) };
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Every page of guest-physical space below RAM that the device tree
    /// names no device at, the 2 MiB past RAM and one page per GiB above
    /// it to 1 TiB (the 40-bit IPA space ID_AA64MMFR0_EL1.PARange shows):
    /// each load a synchronous external abort with FAR the address, none
    /// returning data (the hypervisor maps nothing else to a guest).
    fn ipa_probe(env: &Env) {
        if env.args.subtest() != Some("ipa-probe") {
            report_info("`ipa-probe` runs only when named in the bootargs");
            return;
        }
        // Bare QEMU has devices of its own (flash, fw_cfg, PCIe, RTC) that
        // the probe would read.
        if dtb_mentions(env.dtb, b"qemu,fw-cfg-mmio") {
            report_skip("a QEMU board with its own devices (fw_cfg): the probe is of a hypervisor's map");
            return;
        }
        let Some(ram) = env.board.memory().first().copied() else {
            report(false, "no memory node");
            return;
        };
        let mut devices: [(u64, u64); 8] = [(0, 0); 8];
        let mut n = 0;
        let mut add = |base: u64, size: u64| {
            if n < devices.len() {
                devices[n] = (base, base + size);
                n += 1;
            }
        };
        match env.board.gic() {
            Some(GicDesc::V2 { gicd, gicc, .. }) => {
                add(gicd.base, gicd.size);
                add(gicc.base, gicc.size);
            }
            Some(GicDesc::V3 { gicd, gicr, its, .. }) => {
                add(gicd.base, gicd.size);
                add(gicr.base, gicr.size);
                if let Some(its) = its {
                    add(its.base, its.size);
                }
            }
            None => {}
        }
        if let Some(uart) = env.board.console() {
            add(uart.base, 0x1000);
        }
        // The virtio-mmio transports (QEMU virt's place, as the hypervisor's map).
        add(0x0a00_0000, 0x4000);
        let known = |a: u64| devices[..n].iter().any(|&(s, e)| (s..e).contains(&a));
        let ram_end = ram.base + ram.size;
        let below = (0..ram.base).step_by(4096).filter(|&a| !known(a));
        let past = (ram_end..ram_end + (2 << 20)).step_by(4096);
        let above = (1u64..1024).map(|g| g << 30).filter(|&a| a >= ram_end + (2 << 20));
        let (mut probed, mut wrong) = (0u64, None);
        for addr in below.chain(past).chain(above) {
            probed += 1;
            let (value, e) = catch(|| {
                let v: u64;
                // SAFETY: a load from an address with nothing behind it
                // (as in `outside_map`); it writes nothing.
                unsafe { asm!("ldr {v}, [{a}]", v = out(reg) v, a = in(reg) addr) };
                v
            });
            let ok = e.is_some_and(|e| {
                e.ec() == EC_DATA_ABORT_SAME_EL && e.esr.0 & 0x3f == DFSC_SYNC_EXTERNAL && e.far == addr
            });
            if !ok && wrong.is_none() {
                wrong = Some((addr, value, e.map(|e| e.esr.0)));
            }
        }
        let _ = match wrong {
            None => report(
                true,
                format_args!("{probed} pages outside its RAM and devices: each load a synchronous external abort"),
            ),
            Some((addr, value, esr)) => report(
                false,
                format_args!("a load from {addr:#x}: {value:#x}, exception {esr:x?} (want an external abort)"),
            ),
        };
    }

    /// Word `i` of the RAM pattern of `salt`: every word differs, none is 0.
    fn ram_word(salt: u64, i: usize) -> u64 {
        ferrovisor_test_guests::pattern::data_word(i) ^ salt.wrapping_mul(0x0101_0101_0101_0101) | 1
    }

    /// The last eighth of the first RAM range (nothing of the guest's
    /// image, device tree or initrd is there) reads zero as it was given,
    /// then keeps the pattern this VM writes there while it takes 2000
    /// exits; a VM beside it on the same CPU writes another salt's.
    fn ram_pattern(env: &Env) {
        let salt = env.args.number("salt").ok().flatten().unwrap_or(0) & 0xff;
        let Some(ram) = env.board.memory().first().copied() else {
            report(false, "no memory node");
            return;
        };
        let start = ram.base + ram.size / 8 * 7;
        let end = ram.base + ram.size;
        let dtb = env.dtb as u64;
        let overlaps = |b: u64, e: u64| b < end && e > start;
        if overlaps(dtb, dtb + (1 << 20)) || env.board.initrd().is_some_and(|i| overlaps(i.base, i.base + i.size)) {
            report_skip("the device tree or initrd is in the last eighth of RAM");
            return;
        }
        let words = ((end - start) / 8) as usize;
        // SAFETY: the last eighth of this VM's RAM, which nothing of the
        // guest uses (checked above for the device tree and initrd; the image
        // and stacks are at the start of RAM); only this vCPU runs.
        let region = unsafe { core::slice::from_raw_parts_mut(start as *mut u64, words) };
        let nonzero = region.iter().position(|&w| w != 0);
        let _ = report(
            nonzero.is_none(),
            format_args!("{} MiB at {start:#x} read zero before written ({nonzero:?})", (end - start) >> 20),
        );
        for (i, w) in region.iter_mut().enumerate() {
            // SAFETY: a word of the region above.
            unsafe { core::ptr::write_volatile(w, ram_word(salt, i)) };
        }
        if let Some(uart) = env.board.console() {
            for _ in 0..2000 {
                // SAFETY: a read of the UART's FR, which has no side effects:
                // an exit to the host under a hypervisor.
                let _ = unsafe { core::ptr::read_volatile((uart.base + 0x18) as *const u32) };
            }
        }
        // SAFETY: as for the writes.
        let bad = region.iter().enumerate().find(|&(i, w)| unsafe { core::ptr::read_volatile(w) } != ram_word(salt, i));
        let _ = match bad {
            None => report(true, format_args!("it kept salt {salt:#x}'s pattern over 2000 exits")),
            Some((i, w)) => report(
                false,
                format_args!(
                    "word {i} at {:#x}: {w:#x}, want salt {salt:#x}'s {:#x}",
                    start + 8 * i as u64,
                    ram_word(salt, i)
                ),
            ),
        };
    }

    /// Loads this many pages outside the map, one after the other.
    const FLOOD: u64 = 2000;

    /// Each of a flood of loads outside the map is its own synchronous
    /// external abort (Arm ARM D24.2.40, DFSC 0b010000), however many come.
    fn abort_flood(_: &Env) {
        let mut wrong = None;
        for i in 0..FLOOD {
            let addr = OUTSIDE_MAP + (i << 12);
            let (_, e) = catch(|| {
                // SAFETY: a load from an address with nothing behind it, as in
                // `outside_map`; it writes nothing.
                unsafe { asm!("ldr {v}, [{a}]", v = out(reg) _, a = in(reg) addr) };
            });
            let ok = e.is_some_and(|e| {
                e.ec() == EC_DATA_ABORT_SAME_EL && e.esr.0 & 0x3f == DFSC_SYNC_EXTERNAL && e.far == addr
            });
            if !ok && wrong.is_none() {
                wrong = Some((i, e.map(|e| (e.esr.0, e.far))));
            }
        }
        let _ = match wrong {
            None => report(true, format_args!("{FLOOD} loads outside the map: each a synchronous external abort")),
            Some((i, e)) => report(false, format_args!("load {i} of {FLOOD} outside the map: (ESR, FAR) {e:x?}")),
        };
    }

    /// A load pair from an emulated device's frame gives the hypervisor no
    /// instruction syndrome (ISV = 0) to emulate: the guest gets an external
    /// abort, and goes on.
    fn mmio_no_syndrome(env: &Env) {
        let Some(uart) = env.board.console() else {
            report_skip("no console UART in the device tree");
            return;
        };
        let base = uart.base;
        let (at, e) = catch(|| {
            let at: u64;
            // SAFETY: reads two words of the UART's ID area (no side effects on
            // a PL011) or aborts; writes nothing.
            unsafe {
                asm!("adr {at}, 2f", "2: ldp {a}, {b}, [{p}]", at = out(reg) at, a = out(reg) _, b = out(reg) _,
                     p = in(reg) base + 0xfe0)
            };
            at
        });
        let Some(e) = e else {
            report(false, format_args!("ldp from the UART at {:#x} completed without an exception", base + 0xfe0));
            return;
        };
        let dfsc = e.esr.0 & 0x3f;
        report(
            e.ec() == EC_DATA_ABORT_SAME_EL && dfsc == DFSC_SYNC_EXTERNAL,
            format_args!("ldp from the UART: external abort (EC {:#04x}, DFSC {dfsc:#04x})", e.ec()),
        );
        report(e.elr == at, format_args!("ELR {:#x} at the ldp (want {at:#x})", e.elr));
    }

    fn wfi_wfe(_: &Env) {
        // The timer's event stream (an event every 2^(8+1) counter ticks)
        // wakes a WFE that nothing else would.
        let old = CNTKCTL_EL1.get();
        CNTKCTL_EL1.set((old & !0xfc) | (8 << 4) | (1 << 2));
        let start = time::counter();
        aarch64_cpu::asm::wfe();
        let us = time::us_since(start);
        report(us < WAKE_LIMIT_US, format_args!("wfe returned within 1 s (after {us} us)"));
        let start = time::counter();
        aarch64_cpu::asm::sevl();
        aarch64_cpu::asm::wfe();
        let us = time::us_since(start);
        report(us < WAKE_LIMIT_US, format_args!("sevl; wfe returned within 1 s (after {us} us)"));
        CNTKCTL_EL1.set(old);
        report_info("bare wfi not tried: with interrupts masked and none pending nothing need wake it");
    }
}
