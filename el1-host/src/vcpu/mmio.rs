//! MMIO accesses from stage-2 data aborts: which address, which register,
//! how wide, and how a read's value lands in the guest's register.

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
        let v = match self.iss.register {
            31 => 0,
            r => ctx.regs.x[r as usize],
        };
        v & size_mask(self.iss.access_size)
    }

    /// Puts a load's value in the target register (sign- or zero-extended as
    /// the instruction asked) and steps past the instruction.
    pub fn complete_read(&self, ctx: &mut VcpuContext, value: u64) {
        let bits = u32::from(self.iss.access_size) * 8;
        let mut v = value & size_mask(self.iss.access_size);
        if self.iss.sign_extend && bits < 64 {
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if !self.iss.sixty_four {
            v &= 0xffff_ffff;
        }
        if self.iss.register != 31 {
            ctx.regs.x[self.iss.register as usize] = v;
        }
        super::inject::skip_instruction(ctx);
    }

    /// Steps past a store.
    pub fn complete_write(&self, ctx: &mut VcpuContext) {
        super::inject::skip_instruction(ctx);
    }
}

fn size_mask(bytes: u8) -> u64 {
    match bytes {
        8 => u64::MAX,
        b => (1u64 << (u32::from(b) * 8)) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(esr: u64, ipa: u64) -> ExitInfo {
        ExitInfo { reason: 1, esr, far: ipa, hpfar: (ipa >> 12) << 4 }
    }

    const DABT: u64 = 0x24 << 26 | 1 << 25 | 1 << 24;

    #[test]
    fn ipa_comes_from_hpfar_and_far() {
        let e = exit(DABT, 0x0900_0018);
        assert_eq!(fault_ipa(&e), 0x0900_0018);
        let e = ExitInfo { reason: 1, esr: DABT, far: 0xdead_b018, hpfar: 0x0a000 << 4 };
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
    fn no_syndrome_is_an_error_with_the_address() {
        assert_eq!(decode(&exit(0x24 << 26 | 1 << 25 | 0x07, 0x0900_0040)), Err(0x0900_0040));
    }
}
