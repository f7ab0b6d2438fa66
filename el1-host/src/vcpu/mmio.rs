//! MMIO accesses from stage-2 data aborts: which address, which register,
//! how wide, how a read's value lands in the guest's register, and which
//! device on the VM's bus takes the access ([`dispatch`]).

use crate::devices::bus::MmioBus;
use crate::gic::vgic::Kicks;
use crate::vm::stats::{ExitKind, VmStats};
use ferrovisor_shared::esr::{DataAbortIss, Esr};
use ferrovisor_shared::vcpu::{ExitInfo, VcpuContext};

/// A decoded guest load or store to an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    pub ipa: u64,
    pub iss: DataAbortIss,
}

/// The faulting IPA: `HPFAR_EL2.FIPA` gives bits 47:12, `FAR_EL2` the rest.
pub fn fault_ipa(exit: &ExitInfo) -> u64 {
    ((exit.hpfar & 0x0fff_ffff_ffff_fff0) << 8) | (exit.far & 0xfff)
}

/// Decodes a data abort; `Err(ipa)` when it carries no instruction syndrome
/// (ISV = 0: a load/store pair, a writeback or a cache operation), which the
/// host cannot emulate.
pub fn decode(exit: &ExitInfo) -> Result<MmioAccess, u64> {
    let ipa = fault_ipa(exit);
    Esr(exit.esr).data_abort().map(|iss| MmioAccess { ipa, iss }).ok_or(ipa)
}

impl MmioAccess {
    /// The value a store writes, truncated to the access size.
    pub fn write_value(&self, ctx: &VcpuContext) -> u64 {
        // Register 31 is XZR here: the one index past `x`.
        let v = ctx.regs.x.get(usize::from(self.iss.register)).copied().unwrap_or(0);
        let shift = self.unused_bits();
        (v << shift) >> shift
    }

    /// Puts a load's value in the target register (sign- or zero-extended as
    /// the instruction asked) and steps past the instruction.
    pub fn complete_read(&self, ctx: &mut VcpuContext, value: u64) {
        let v = self.iss.load_value(value);
        // A load to register 31 (XZR) is discarded.
        if let Some(x) = ctx.regs.x.get_mut(usize::from(self.iss.register)) {
            *x = v;
        }
        super::inject::skip_instruction(ctx);
    }

    /// Steps past a store.
    pub fn complete_write(&self, ctx: &mut VcpuContext) {
        super::inject::skip_instruction(ctx);
    }
}

/// What became of a stage-2 data abort (counted already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// A device on the bus took the access and the guest steps past it:
    /// kick `kicks` (none after a read).
    Done { kicks: Kicks },
    /// No instruction syndrome (ISV = 0) to emulate: an external abort was
    /// injected; `pc` is where the guest was.
    NoSyndrome { ipa: u64, pc: u64 },
    /// No device at `ipa`: an external abort was injected.
    Unmapped { ipa: u64, write: bool, pc: u64 },
    /// A cache maintenance instruction (ISS.CM) on an address outside the
    /// VM's RAM: there is no cache line of it to maintain, and the guest
    /// steps past it (as KVM does).
    CacheMaintenance { ipa: u64 },
}

/// Decodes the data abort in `ctx.exit`, has the device on `bus` at its
/// address read or write (as vCPU `vcpu` of `vm`), and completes the
/// instruction; else makes it a synchronous external abort for the guest.
/// Counts the exit in `stats`: as the kind the device registered with, or
/// [`ExitKind::Abort`].
#[inline(always)]
pub fn dispatch<H: ?Sized>(bus: &MmioBus<H>, vm: &H, vcpu: usize, ctx: &mut VcpuContext, stats: &VmStats) -> Dispatch {
    let access = match decode(&ctx.exit) {
        Ok(a) => a,
        // A cache maintenance instruction has no instruction syndrome
        // (ISV 0), so it is looked for only here, off the emulated path.
        Err(ipa) if Esr(ctx.exit.esr).cache_maintenance() => {
            stats.count(ExitKind::Mmio);
            super::inject::skip_instruction(ctx);
            return Dispatch::CacheMaintenance { ipa };
        }
        Err(ipa) => {
            stats.count(ExitKind::Abort);
            let pc = ctx.regs.pc;
            super::inject::inject_data_abort(ctx, ctx.exit.far);
            return Dispatch::NoSyndrome { ipa, pc };
        }
    };
    let Some(hit) = bus.lookup(access.ipa) else {
        stats.count(ExitKind::Abort);
        let pc = ctx.regs.pc;
        super::inject::inject_data_abort(ctx, ctx.exit.far);
        return Dispatch::Unmapped { ipa: access.ipa, write: access.iss.write, pc };
    };
    // Before the call: the kind need not be kept across it.
    stats.count(hit.kind);
    let size = access.iss.access_size;
    if access.iss.write {
        let kicks = hit.device.write(vm, vcpu, hit.offset, size, access.write_value(ctx));
        access.complete_write(ctx);
        Dispatch::Done { kicks }
    } else {
        let value = hit.device.read(vm, vcpu, hit.offset, size);
        access.complete_read(ctx, value);
        Dispatch::Done { kicks: Kicks::default() }
    }
}

impl MmioAccess {
    /// 64 less the access's width in bits: 56, 48, 32 or 0 (the syndrome's
    /// sizes are 1, 2, 4 and 8 bytes).
    #[inline(always)]
    fn unused_bits(&self) -> u32 {
        64u32.wrapping_sub(u32::from(self.iss.access_size) * 8) & 63
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(esr: u64, ipa: u64) -> ExitInfo {
        ExitInfo { reason: 1, esr, far: ipa, hpfar: (ipa >> 12) << 4, acked: 0, kick: 0 }
    }

    const DABT: u64 = 0x24 << 26 | 1 << 25 | 1 << 24;

    #[test]
    fn ipa_comes_from_hpfar_and_far() {
        let e = exit(DABT, 0x0900_0018);
        assert_eq!(fault_ipa(&e), 0x0900_0018);
        let e = ExitInfo { reason: 1, esr: DABT, far: 0xdead_b018, hpfar: 0x0a000 << 4, acked: 0, kick: 0 };
        assert_eq!(fault_ipa(&e), 0x0a00_0018);
    }

    #[test]
    fn store_values_are_truncated() {
        // strb w2, [x1]
        let a = decode(&exit(DABT | 2 << 16 | 1 << 6, 0x0900_0000)).unwrap();
        let mut ctx = VcpuContext::default();
        ctx.regs.x[2] = 0x1234_5641;
        assert_eq!(a.write_value(&ctx), 0x41);
        a.complete_write(&mut ctx);
        assert_eq!(ctx.regs.pc, 4);
        // str xzr
        let a = decode(&exit(DABT | 3 << 22 | 31 << 16 | 1 << 6, 0x0900_0000)).unwrap();
        assert_eq!(a.write_value(&ctx), 0);
    }

    #[test]
    fn loads_extend_as_asked() {
        let mut ctx = VcpuContext::default();
        // ldrsb x3 (SSE, SF, byte)
        let a = decode(&exit(DABT | 1 << 21 | 3 << 16 | 1 << 15, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, 0x80);
        assert_eq!(ctx.regs.x[3], 0xffff_ffff_ffff_ff80);
        // ldrsh w3 (SSE, 32-bit)
        let a = decode(&exit(DABT | 1 << 22 | 1 << 21 | 3 << 16, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, 0x8000);
        assert_eq!(ctx.regs.x[3], 0xffff_8000);
        // ldr w4: upper bits of the device value dropped
        let a = decode(&exit(DABT | 2 << 22 | 4 << 16, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, 0xffff_ffff_7472_6976);
        assert_eq!(ctx.regs.x[4], 0x7472_6976);
        // ldr x5
        let a = decode(&exit(DABT | 3 << 22 | 5 << 16 | 1 << 15, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, u64::MAX);
        assert_eq!(ctx.regs.x[5], u64::MAX);
        assert_eq!(ctx.regs.pc, 16);
    }

    #[test]
    fn every_width_keeps_only_its_bits() {
        let mut ctx = VcpuContext::default();
        // ldrh w6: zero-extended, the device's upper bits dropped
        let a = decode(&exit(DABT | 1 << 22 | 6 << 16, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, 0xdead_beef_cafe_8001);
        assert_eq!(ctx.regs.x[6], 0x8001);
        // ldrsw x6 (SSE, SF, word)
        let a = decode(&exit(DABT | 2 << 22 | 1 << 21 | 6 << 16 | 1 << 15, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, 0x1_8000_0000);
        assert_eq!(ctx.regs.x[6], 0xffff_ffff_8000_0000);
        // ldrsb w6 of a positive byte
        let a = decode(&exit(DABT | 1 << 21 | 6 << 16, 0x0a00_0000)).unwrap();
        a.complete_read(&mut ctx, 0x17f);
        assert_eq!(ctx.regs.x[6], 0x7f);
        // ldr xzr: the value goes nowhere, the instruction is still done
        let a = decode(&exit(DABT | 3 << 22 | 31 << 16 | 1 << 15, 0x0a00_0000)).unwrap();
        let before = ctx.regs.x;
        a.complete_read(&mut ctx, u64::MAX);
        assert_eq!((ctx.regs.x, ctx.regs.pc), (before, 16));
        // strh w7 and str x7
        ctx.regs.x[7] = 0x8765_4321_fedc_ba98;
        let a = decode(&exit(DABT | 1 << 22 | 7 << 16 | 1 << 6, 0x0a00_0000)).unwrap();
        assert_eq!(a.write_value(&ctx), 0xba98);
        let a = decode(&exit(DABT | 3 << 22 | 7 << 16 | 1 << 15 | 1 << 6, 0x0a00_0000)).unwrap();
        assert_eq!(a.write_value(&ctx), 0x8765_4321_fedc_ba98);
    }

    #[test]
    fn no_syndrome_is_an_error_with_the_address() {
        assert_eq!(decode(&exit(0x24 << 26 | 1 << 25 | 0x07, 0x0900_0040)), Err(0x0900_0040));
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        /// What an `LDR{S}{B,H,W}` of `size` bytes leaves in its register
        /// (Arm ARM C6.2: zero- or sign-extended from the access to the
        /// register, a W register's upper half cleared).
        fn loaded(size: u8, sse: bool, sf: bool, value: u64) -> u64 {
            let v = match (size, sse) {
                (1, false) => u64::from(value as u8),
                (1, true) => value as u8 as i8 as i64 as u64,
                (2, false) => u64::from(value as u16),
                (2, true) => value as u16 as i16 as i64 as u64,
                (4, false) => u64::from(value as u32),
                (4, true) => value as u32 as i32 as i64 as u64,
                _ => value,
            };
            if sf {
                v
            } else {
                u64::from(v as u32)
            }
        }

        proptest! {
            #![proptest_config(crate::fuzz::config(1024))]

            /// Any data-abort syndrome with ISV: a store hands the device the
            /// low `size` bytes of Rt (XZR: 0), a load puts the device's value
            /// in Rt as the instruction would (XZR: nowhere), and either steps
            /// past the instruction and touches no other register.
            #[test]
            fn loads_and_stores_match_the_instructions(
                iss in 0u64..1 << 24,
                regs in any::<[u64; 31]>(),
                device_value: u64,
                ipa in 0u64..1 << 44,
                far_noise: u64,
            ) {
                // FAR_EL2 gives the offset in the page, HPFAR_EL2.FIPA the page (Arm ARM, HPFAR_EL2).
                let far = far_noise & !0xfff | ipa & 0xfff;
                let e = ExitInfo { reason: 1, esr: 0x24 << 26 | 1 << 25 | 1 << 24 | iss, far, hpfar: (ipa >> 12) << 4, acked: 0, kick: 0 };
                let a = decode(&e).unwrap();
                prop_assert_eq!(a.ipa, ipa);
                let mut ctx = VcpuContext::default();
                ctx.regs.x = regs;
                let rt = usize::from(a.iss.register);
                let size = a.iss.access_size;
                let stored = if rt == 31 { 0 } else { regs[rt] };
                let mask = if size == 8 { u64::MAX } else { (1 << (8 * u32::from(size))) - 1 };
                prop_assert_eq!(a.write_value(&ctx), stored & mask);
                a.complete_read(&mut ctx, device_value);
                let mut want = regs;
                if rt < 31 {
                    want[rt] = loaded(size, a.iss.sign_extend, a.iss.sixty_four, device_value);
                }
                prop_assert_eq!(ctx.regs.x, want);
                prop_assert_eq!(ctx.regs.pc, 4);
                a.complete_write(&mut ctx);
                prop_assert_eq!((ctx.regs.x, ctx.regs.pc), (want, 8));
            }
        }
    }

    mod dispatch {
        use super::super::*;
        use super::{exit, DABT};
        use crate::devices::bus::MmioDevice;
        use alloc::boxed::Box;
        use alloc::vec::Vec;
        use ferrovisor_shared::esr::{ExceptionClass, FaultStatus};

        /// The VM the fake devices see: it keeps what they were asked.
        #[derive(Default)]
        struct FakeVm {
            calls: spin::Mutex<Vec<Call>>,
        }

        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Call {
            Read { dev: u8, vcpu: usize, offset: u64, size: u8 },
            Write { dev: u8, vcpu: usize, offset: u64, size: u8, value: u64 },
        }

        /// Reads give `value`; writes kick `kicks`.
        struct FakeDevice {
            dev: u8,
            value: u64,
            kicks: Kicks,
        }

        impl MmioDevice<FakeVm> for FakeDevice {
            fn read(&self, vm: &FakeVm, vcpu: usize, offset: u64, size: u8) -> u64 {
                vm.calls.lock().push(Call::Read { dev: self.dev, vcpu, offset, size });
                self.value
            }

            fn write(&self, vm: &FakeVm, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
                vm.calls.lock().push(Call::Write { dev: self.dev, vcpu, offset, size, value });
                self.kicks
            }
        }

        /// A UART-like device at 0x0900_0000 (4 KiB) and a GIC-like one at
        /// 0x0800_0000 (64 KiB), nothing in between.
        fn bus() -> MmioBus<FakeVm> {
            let mut bus = MmioBus::new();
            let uart = FakeDevice { dev: 1, value: 0x90, kicks: Kicks(0b10) };
            let gic = FakeDevice { dev: 2, value: 0x4658_0000_0000_4658, kicks: Kicks(0b101) };
            bus.register(0x0900_0000, 0x1000, ExitKind::Mmio, Box::new(uart)).unwrap();
            bus.register(0x0800_0000, 0x1_0000, ExitKind::Gic, Box::new(gic)).unwrap();
            bus
        }

        const VBAR: u64 = 0x4009_0000;

        fn context(esr: u64, ipa: u64) -> VcpuContext {
            let mut ctx = VcpuContext { exit: exit(esr, ipa), ..VcpuContext::default() };
            ctx.regs.pc = 0x4008_0000;
            ctx.regs.pstate = 0x3c5; // EL1h, DAIF masked
            ctx.el1.vbar = VBAR;
            ctx
        }

        #[test]
        fn a_read_lands_in_the_register_it_names() {
            let (bus, vm, stats) = (bus(), FakeVm::default(), VmStats::default());
            // ldr w7, [GICD + 8] (GICD_IIDR), as vCPU 3
            let mut ctx = context(DABT | 2 << 22 | 7 << 16, 0x0800_0008);
            ctx.regs.x[7] = u64::MAX;
            let d = dispatch(&bus, &vm, 3, &mut ctx, &stats);
            assert_eq!(d, Dispatch::Done { kicks: Kicks::default() });
            assert_eq!((stats.exits(ExitKind::Gic), stats.exits(ExitKind::Mmio)), (1, 0), "counted as the GIC's");
            assert_eq!(ctx.regs.x[7], 0x4658, "32 bits of the device's value, zero-extended");
            assert_eq!(ctx.regs.pc, 0x4008_0004);
            assert_eq!(*vm.calls.lock(), [Call::Read { dev: 2, vcpu: 3, offset: 8, size: 4 }]);
        }

        #[test]
        fn a_write_passes_the_value_and_returns_the_kicks() {
            let (bus, vm, stats) = (bus(), FakeVm::default(), VmStats::default());
            // strb w2, [UART + 0] (UARTDR), as vCPU 0
            let mut ctx = context(DABT | 2 << 16 | 1 << 6, 0x0900_0000);
            ctx.regs.x[2] = 0x1234_5641;
            let d = dispatch(&bus, &vm, 0, &mut ctx, &stats);
            assert_eq!(d, Dispatch::Done { kicks: Kicks(0b10) });
            assert_eq!((stats.exits(ExitKind::Gic), stats.exits(ExitKind::Mmio)), (0, 1), "counted as the UART's");
            assert_eq!(*vm.calls.lock(), [Call::Write { dev: 1, vcpu: 0, offset: 0, size: 1, value: 0x41 }]);
            assert_eq!(ctx.regs.pc, 0x4008_0004);
            assert_eq!(ctx.regs.x[2], 0x1234_5641, "a store leaves its register alone");
        }

        /// The guest takes a synchronous external abort at its data abort
        /// vector (Arm ARM D1.3: from EL1h, `VBAR_EL1` + 0x200; ESR_EL1.EC
        /// 0x25, DFSC 0b010000), with the IPA's address in FAR_EL1.
        fn assert_external_abort(ctx: &VcpuContext, pc: u64, far: u64) {
            assert_eq!(ctx.regs.pc, VBAR + 0x200, "taken to the vector, not stepped past");
            assert_eq!(ctx.el1.elr_el1, pc);
            assert_eq!(ctx.el1.far_el1, far);
            let esr = Esr(ctx.el1.esr_el1);
            assert_eq!(esr.class(), ExceptionClass::DataAbortSameEl);
            assert_eq!(esr.fault_status(), FaultStatus::SyncExternal);
        }

        #[test]
        fn an_unmapped_address_is_an_external_abort() {
            let (bus, vm, stats) = (bus(), FakeVm::default(), VmStats::default());
            for (ipa, write) in [(0x0801_0000, false), (0x08ff_fffc, true), (0x0900_1000, false), (0x07ff_fffc, true)] {
                let mut ctx = context(DABT | 2 << 22 | u64::from(write) << 6 | 1 << 16, ipa);
                ctx.regs.x[1] = 0x55;
                let d = dispatch(&bus, &vm, 0, &mut ctx, &stats);
                assert_eq!(d, Dispatch::Unmapped { ipa, write, pc: 0x4008_0000 });
                assert_external_abort(&ctx, 0x4008_0000, ipa);
                assert_eq!(ctx.regs.x[1], 0x55, "a load from nothing leaves its register alone");
            }
            assert!(vm.calls.lock().is_empty(), "no device was asked");
            assert_eq!(stats.exits(ExitKind::Abort), 4);
            assert_eq!(stats.exits(ExitKind::Mmio) + stats.exits(ExitKind::Gic), 0);
        }

        #[test]
        fn no_syndrome_is_an_external_abort_even_on_a_device() {
            let (bus, vm, stats) = (bus(), FakeVm::default(), VmStats::default());
            // ISV = 0 (a load pair, say) in the UART's range.
            let mut ctx = context(0x24 << 26 | 1 << 25 | 0x07, 0x0900_0040);
            let d = dispatch(&bus, &vm, 0, &mut ctx, &stats);
            assert_eq!(d, Dispatch::NoSyndrome { ipa: 0x0900_0040, pc: 0x4008_0000 });
            assert_external_abort(&ctx, 0x4008_0000, 0x0900_0040);
            assert!(vm.calls.lock().is_empty());
            assert_eq!((stats.exits(ExitKind::Abort), stats.exits(ExitKind::Mmio)), (1, 0));
        }
    }
}
