//! A64 encodings of the instructions the `fuzz` guest writes into its code
//! page at run time (Arm ARM DDI 0487, C4 "A64 Instruction Set Encoding").
//! Register numbers are 0-30 and 31 (XZR/WZR as a data register; never a
//! base, where 31 would be SP). The tests compare each encoder with what
//! `llvm-mc -triple=aarch64 -show-encoding` gives for the same instruction.

use ferrovisor_shared::esr::SysReg;

/// `RET` (to x30).
pub const RET: u32 = 0xd65f_03c0;

/// Bytes moved by a load or store: the `size` field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B = 0,
    H = 1,
    W = 2,
    X = 3,
}

impl Size {
    pub const ALL: [Size; 4] = [Size::B, Size::H, Size::W, Size::X];

    pub const fn bytes(self) -> u64 {
        1 << self as u64
    }

    pub const fn from_bytes(bytes: u64) -> Size {
        match bytes {
            1 => Size::B,
            2 => Size::H,
            4 => Size::W,
            _ => Size::X,
        }
    }
}

/// What a single-register load or store does with its data register
/// (`opc` of the load/store register encodings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    Store = 0,
    /// Zero-extended into W (or X for `Size::X`).
    Load = 1,
    /// Sign-extended into X (`LDRSB`/`LDRSH`/`LDRSW`; not for `Size::X`).
    SignX = 2,
    /// Sign-extended into W (`LDRSB`/`LDRSH`; `Size::B` and `Size::H` only).
    SignW = 3,
}

impl Ext {
    /// Whether `ext` exists for accesses of `size`.
    pub const fn valid(self, size: Size) -> bool {
        match self {
            Ext::Store | Ext::Load => true,
            Ext::SignX => !matches!(size, Size::X),
            Ext::SignW => matches!(size, Size::B | Size::H),
        }
    }

    /// The value a load of `size` with this extension leaves in the
    /// register, from the `raw` bytes read (Arm ARM C6.2, LDR/LDRS*).
    pub const fn extend(self, size: Size, raw: u64) -> u64 {
        let bits = size.bytes() * 8;
        let raw = if bits == 64 { raw } else { raw & ((1 << bits) - 1) };
        let shift = 64 - bits;
        match self {
            Ext::Store | Ext::Load => raw,
            Ext::SignX => (((raw << shift) as i64) >> shift) as u64,
            Ext::SignW => ((((raw << shift) as i64) >> shift) as u64) & 0xffff_ffff,
        }
    }
}

fn reg(r: u8) -> u32 {
    u32::from(r & 31)
}

/// `MRS Xt, S<op0>_<op1>_C<n>_C<m>_<op2>`.
pub fn mrs(r: SysReg, rt: u8) -> u32 {
    0xd520_0000 | sysreg_fields(r) | reg(rt)
}

/// `MSR S<op0>_<op1>_C<n>_C<m>_<op2>, Xt`.
pub fn msr(r: SysReg, rt: u8) -> u32 {
    0xd500_0000 | sysreg_fields(r) | reg(rt)
}

fn sysreg_fields(r: SysReg) -> u32 {
    (u32::from(r.op0 & 3) << 19)
        | (u32::from(r.op1 & 7) << 16)
        | (u32::from(r.crn & 15) << 12)
        | (u32::from(r.crm & 15) << 8)
        | (u32::from(r.op2 & 7) << 5)
}

/// `HVC #imm`.
pub fn hvc(imm: u16) -> u32 {
    0xd400_0002 | (u32::from(imm) << 5)
}

/// `SMC #imm`.
pub fn smc(imm: u16) -> u32 {
    0xd400_0003 | (u32::from(imm) << 5)
}

/// `WFIT Xt` (FEAT_WFxT).
pub fn wfit(rt: u8) -> u32 {
    0xd503_1020 | reg(rt)
}

/// `WFET Xt` (FEAT_WFxT).
pub fn wfet(rt: u8) -> u32 {
    0xd503_1000 | reg(rt)
}

/// `BR Xn`.
pub fn br(rn: u8) -> u32 {
    0xd61f_0000 | (reg(rn) << 5)
}

/// Load/store register, unsigned immediate offset: `[Xn, #imm12 * size]`.
pub fn ldst_uimm(size: Size, ext: Ext, scaled: u16, rn: u8, rt: u8) -> u32 {
    0x3900_0000
        | ((size as u32) << 30)
        | ((ext as u32) << 22)
        | (u32::from(scaled & 0xfff) << 10)
        | (reg(rn) << 5)
        | reg(rt)
}

/// The 9-bit signed immediate forms of a single-register load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// `LDUR`/`STUR`: `[Xn, #imm]`, no write-back.
    Unscaled = 0,
    /// `[Xn], #imm`: access at Xn, then Xn += imm.
    Post = 1,
    /// `[Xn, #imm]!`: Xn += imm, then access at Xn.
    Pre = 3,
}

/// Load/store register with a 9-bit signed immediate (`imm` in -256..=255).
pub fn ldst_imm9(size: Size, ext: Ext, index: Index, imm: i16, rn: u8, rt: u8) -> u32 {
    0x3800_0000
        | ((size as u32) << 30)
        | ((ext as u32) << 22)
        | ((imm as u32 & 0x1ff) << 12)
        | ((index as u32) << 10)
        | (reg(rn) << 5)
        | reg(rt)
}

/// Load/store register, register offset: `[Xn, Xm]`.
pub fn ldst_reg(size: Size, ext: Ext, rm: u8, rn: u8, rt: u8) -> u32 {
    0x3820_6800 | ((size as u32) << 30) | ((ext as u32) << 22) | (reg(rm) << 16) | (reg(rn) << 5) | reg(rt)
}

/// Which registers a load/store pair moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    /// Two W registers.
    W = 0,
    /// `LDPSW`: two words, sign-extended into X registers (loads only).
    Sw = 1,
    /// Two X registers.
    X = 2,
}

impl PairKind {
    pub const fn bytes(self) -> u64 {
        match self {
            PairKind::W | PairKind::Sw => 4,
            PairKind::X => 8,
        }
    }
}

/// The addressing of a load/store pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairIndex {
    Post = 1,
    Offset = 2,
    Pre = 3,
}

/// `LDP`/`STP`/`LDPSW` with an offset of `scaled` (-64..=63) registers.
pub fn ldstp(kind: PairKind, index: PairIndex, load: bool, scaled: i8, rt2: u8, rn: u8, rt: u8) -> u32 {
    0x2800_0000
        | ((kind as u32) << 30)
        | ((index as u32) << 23)
        | (u32::from(load) << 22)
        | ((scaled as u32 & 0x7f) << 15)
        | (reg(rt2) << 10)
        | (reg(rn) << 5)
        | reg(rt)
}

/// `LDXR`/`LDAXR` (`acquire`).
pub fn ldxr(size: Size, acquire: bool, rn: u8, rt: u8) -> u32 {
    0x085f_7c00 | ((size as u32) << 30) | (u32::from(acquire) << 15) | (reg(rn) << 5) | reg(rt)
}

/// `STXR`/`STLXR` (`release`) with the status in Ws.
pub fn stxr(size: Size, release: bool, rs: u8, rn: u8, rt: u8) -> u32 {
    0x0800_7c00 | ((size as u32) << 30) | (u32::from(release) << 15) | (reg(rs) << 16) | (reg(rn) << 5) | reg(rt)
}

/// `LDAR`.
pub fn ldar(size: Size, rn: u8, rt: u8) -> u32 {
    0x08df_fc00 | ((size as u32) << 30) | (reg(rn) << 5) | reg(rt)
}

/// `STLR`.
pub fn stlr(size: Size, rn: u8, rt: u8) -> u32 {
    0x089f_fc00 | ((size as u32) << 30) | (reg(rn) << 5) | reg(rt)
}

/// `LDAPR` (FEAT_LRCPC).
pub fn ldapr(size: Size, rn: u8, rt: u8) -> u32 {
    0x38bf_c000 | ((size as u32) << 30) | (reg(rn) << 5) | reg(rt)
}

/// The FEAT_LSE atomic memory operations (`LD<op>`, `SWP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atomic {
    Add = 0,
    Clr = 1,
    Eor = 2,
    Set = 3,
    Smax = 4,
    Smin = 5,
    Umax = 6,
    Umin = 7,
    Swp = 8,
}

impl Atomic {
    pub const ALL: [Atomic; 9] = [
        Atomic::Add,
        Atomic::Clr,
        Atomic::Eor,
        Atomic::Set,
        Atomic::Smax,
        Atomic::Smin,
        Atomic::Umax,
        Atomic::Umin,
        Atomic::Swp,
    ];
}

/// `LD<op>{A}{L}` / `SWP{A}{L}` Rs, Rt, [Xn] (Rt = 31: the `ST<op>` alias).
pub fn atomic(op: Atomic, size: Size, acquire: bool, release: bool, rs: u8, rn: u8, rt: u8) -> u32 {
    let o3_opc = op as u32; // o3 is bit 15, opc bits 14:12: SWP is o3 = 1, opc = 0.
    0x3820_0000
        | ((size as u32) << 30)
        | (u32::from(acquire) << 23)
        | (u32::from(release) << 22)
        | (reg(rs) << 16)
        | (o3_opc << 12)
        | (reg(rn) << 5)
        | reg(rt)
}

/// `CAS{A}{L}` Rs, Rt, [Xn] (FEAT_LSE).
pub fn cas(size: Size, acquire: bool, release: bool, rs: u8, rn: u8, rt: u8) -> u32 {
    0x08a0_7c00
        | ((size as u32) << 30)
        | (u32::from(acquire) << 22)
        | (u32::from(release) << 15)
        | (reg(rs) << 16)
        | (reg(rn) << 5)
        | reg(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each expected word is llvm-mc's encoding of the instruction in the
    // comment (`llvm-mc -triple=aarch64 -mattr=+v8.7a,+lse,+rcpc,+wfxt -show-encoding`).
    #[test]
    fn system() {
        assert_eq!(mrs(SysReg::new(3, 0, 0, 0, 0), 0), 0xd538_0000); // mrs x0, midr_el1
        assert_eq!(mrs(SysReg::new(3, 1, 15, 2, 7), 5), 0xd539_f2e5); // mrs x5, s3_1_c15_c2_7
        assert_eq!(msr(SysReg::new(3, 1, 15, 2, 7), 5), 0xd519_f2e5); // msr s3_1_c15_c2_7, x5
        assert_eq!(msr(SysReg::new(3, 3, 13, 0, 2), 1), 0xd51b_d041); // msr tpidr_el0, x1
        assert_eq!(RET, 0xd65f_03c0);
        assert_eq!(hvc(0), 0xd400_0002);
        assert_eq!(hvc(0x1234), 0xd402_4682);
        assert_eq!(smc(0), 0xd400_0003);
        assert_eq!(smc(0xffff), 0xd41f_ffe3);
        assert_eq!(wfit(3), 0xd503_1023);
        assert_eq!(wfet(3), 0xd503_1003);
        assert_eq!(br(1), 0xd61f_0020);
    }

    #[test]
    fn single_register() {
        use Ext::*;
        use Size::*;
        assert_eq!(ldst_uimm(B, Store, 0, 1, 2), 0x3900_0022); // strb w2, [x1]
        assert_eq!(ldst_uimm(H, Store, 3, 1, 2), 0x7900_0c22); // strh w2, [x1, #6]
        assert_eq!(ldst_uimm(W, Store, 2, 1, 2), 0xb900_0822); // str w2, [x1, #8]
        assert_eq!(ldst_uimm(X, Store, 2, 1, 2), 0xf900_0822); // str x2, [x1, #16]
        assert_eq!(ldst_uimm(B, Load, 0, 1, 2), 0x3940_0022); // ldrb w2, [x1]
        assert_eq!(ldst_uimm(H, Load, 0, 1, 3), 0x7940_0023); // ldrh w3, [x1]
        assert_eq!(ldst_uimm(W, Load, 0, 1, 3), 0xb940_0023); // ldr w3, [x1]
        assert_eq!(ldst_uimm(X, Load, 0, 1, 3), 0xf940_0023); // ldr x3, [x1]
        assert_eq!(ldst_uimm(B, SignX, 0, 1, 3), 0x3980_0023); // ldrsb x3, [x1]
        assert_eq!(ldst_uimm(B, SignW, 0, 1, 3), 0x39c0_0023); // ldrsb w3, [x1]
        assert_eq!(ldst_uimm(H, SignX, 0, 1, 3), 0x7980_0023); // ldrsh x3, [x1]
        assert_eq!(ldst_uimm(H, SignW, 0, 1, 3), 0x79c0_0023); // ldrsh w3, [x1]
        assert_eq!(ldst_uimm(W, SignX, 0, 1, 3), 0xb980_0023); // ldrsw x3, [x1]
        assert_eq!(ldst_uimm(X, Load, 0, 1, 31), 0xf940_003f); // ldr xzr, [x1]
        assert_eq!(ldst_uimm(W, Store, 0, 1, 31), 0xb900_003f); // str wzr, [x1]
        assert_eq!(ldst_imm9(X, Load, Index::Post, 8, 1, 3), 0xf840_8423); // ldr x3, [x1], #8
        assert_eq!(ldst_imm9(X, Load, Index::Pre, -8, 1, 3), 0xf85f_8c23); // ldr x3, [x1, #-8]!
        assert_eq!(ldst_imm9(W, Store, Index::Post, -4, 1, 3), 0xb81f_c423); // str w3, [x1], #-4
        assert_eq!(ldst_imm9(B, SignW, Index::Pre, 255, 1, 3), 0x38cf_fc23); // ldrsb w3, [x1, #255]!
        assert_eq!(ldst_imm9(X, Load, Index::Unscaled, -1, 1, 3), 0xf85f_f023); // ldur x3, [x1, #-1]
        assert_eq!(ldst_imm9(H, Store, Index::Unscaled, 3, 1, 3), 0x7800_3023); // sturh w3, [x1, #3]
        assert_eq!(ldst_reg(X, Load, 4, 1, 3), 0xf864_6823); // ldr x3, [x1, x4]
        assert_eq!(ldst_reg(B, Store, 4, 1, 3), 0x3824_6823); // strb w3, [x1, x4]
        assert_eq!(ldst_reg(H, SignW, 4, 1, 3), 0x78e4_6823); // ldrsh w3, [x1, x4]
    }

    #[test]
    fn pairs_exclusives_atomics() {
        use Size::*;
        assert_eq!(ldstp(PairKind::X, PairIndex::Offset, true, 0, 3, 1, 2), 0xa940_0c22); // ldp x2, x3, [x1]
        assert_eq!(ldstp(PairKind::W, PairIndex::Offset, true, 2, 3, 1, 2), 0x2941_0c22); // ldp w2, w3, [x1, #8]
        assert_eq!(ldstp(PairKind::X, PairIndex::Pre, false, -2, 3, 1, 2), 0xa9bf_0c22); // stp x2, x3, [x1, #-16]!
        assert_eq!(ldstp(PairKind::X, PairIndex::Post, true, 2, 3, 1, 2), 0xa8c1_0c22); // ldp x2, x3, [x1], #16
        assert_eq!(ldstp(PairKind::Sw, PairIndex::Offset, true, 0, 3, 1, 2), 0x6940_0c22); // ldpsw x2, x3, [x1]
        assert_eq!(ldstp(PairKind::W, PairIndex::Offset, false, 1, 3, 1, 2), 0x2900_8c22); // stp w2, w3, [x1, #4]
        assert_eq!(ldxr(X, false, 1, 2), 0xc85f_7c22); // ldxr x2, [x1]
        assert_eq!(ldxr(W, false, 1, 2), 0x885f_7c22); // ldxr w2, [x1]
        assert_eq!(ldxr(B, false, 1, 2), 0x085f_7c22); // ldxrb w2, [x1]
        assert_eq!(ldxr(H, true, 1, 2), 0x485f_fc22); // ldaxrh w2, [x1]
        assert_eq!(stxr(X, false, 4, 1, 2), 0xc804_7c22); // stxr w4, x2, [x1]
        assert_eq!(stxr(W, true, 4, 1, 2), 0x8804_fc22); // stlxr w4, w2, [x1]
        assert_eq!(stxr(B, false, 4, 1, 2), 0x0804_7c22); // stxrb w4, w2, [x1]
        assert_eq!(ldar(X, 1, 2), 0xc8df_fc22); // ldar x2, [x1]
        assert_eq!(ldar(B, 1, 2), 0x08df_fc22); // ldarb w2, [x1]
        assert_eq!(stlr(W, 1, 2), 0x889f_fc22); // stlr w2, [x1]
        assert_eq!(stlr(H, 1, 2), 0x489f_fc22); // stlrh w2, [x1]
        assert_eq!(ldapr(X, 1, 2), 0xf8bf_c022); // ldapr x2, [x1]
        assert_eq!(ldapr(B, 1, 2), 0x38bf_c022); // ldaprb w2, [x1]
        assert_eq!(atomic(Atomic::Add, X, false, false, 4, 1, 2), 0xf824_0022); // ldadd x4, x2, [x1]
        assert_eq!(atomic(Atomic::Add, W, true, true, 4, 1, 2), 0xb8e4_0022); // ldaddal w4, w2, [x1]
        assert_eq!(atomic(Atomic::Clr, B, false, false, 4, 1, 2), 0x3824_1022); // ldclrb w4, w2, [x1]
        assert_eq!(atomic(Atomic::Eor, H, false, false, 4, 1, 2), 0x7824_2022); // ldeorh w4, w2, [x1]
        assert_eq!(atomic(Atomic::Set, X, false, false, 4, 1, 2), 0xf824_3022); // ldset x4, x2, [x1]
        assert_eq!(atomic(Atomic::Smax, X, false, false, 4, 1, 2), 0xf824_4022); // ldsmax x4, x2, [x1]
        assert_eq!(atomic(Atomic::Umin, X, false, false, 4, 1, 2), 0xf824_7022); // ldumin x4, x2, [x1]
        assert_eq!(atomic(Atomic::Add, X, false, false, 4, 1, 31), 0xf824_003f); // stadd x4, [x1]
        assert_eq!(atomic(Atomic::Swp, X, false, false, 4, 1, 2), 0xf824_8022); // swp x4, x2, [x1]
        assert_eq!(atomic(Atomic::Swp, W, true, true, 4, 1, 2), 0xb8e4_8022); // swpal w4, w2, [x1]
        assert_eq!(cas(X, false, false, 4, 1, 2), 0xc8a4_7c22); // cas x4, x2, [x1]
        assert_eq!(cas(W, true, true, 4, 1, 2), 0x88e4_fc22); // casal w4, w2, [x1]
        assert_eq!(cas(B, false, false, 4, 1, 2), 0x08a4_7c22); // casb w4, w2, [x1]
    }

    #[test]
    fn extension() {
        assert_eq!(Ext::Load.extend(Size::B, 0x1f0), 0xf0);
        assert_eq!(Ext::SignX.extend(Size::B, 0xf0), 0xffff_ffff_ffff_fff0);
        assert_eq!(Ext::SignW.extend(Size::B, 0xf0), 0xffff_fff0);
        assert_eq!(Ext::SignX.extend(Size::H, 0x00f0), 0xf0);
        assert_eq!(Ext::SignX.extend(Size::W, 0x8000_0000), 0xffff_ffff_8000_0000);
        assert_eq!(Ext::Load.extend(Size::X, u64::MAX), u64::MAX);
        assert!(!Ext::SignX.valid(Size::X) && !Ext::SignW.valid(Size::W) && Ext::SignW.valid(Size::H));
    }
}
