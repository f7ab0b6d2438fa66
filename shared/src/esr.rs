//! `ESR_ELx` decoding (Arm ARM D24.2.40), shared by el2's trap handler, the
//! host's exit handling and both sides' register dumps.

/// An exception syndrome register value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

/// Exception classes (`ESR_ELx.EC`) that Ferrovisor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    Unknown,
    WfxTrap,
    FpAccess,
    IllegalState,
    Svc64,
    Hvc64,
    Smc64,
    SysRegTrap,
    SveAccess,
    PacFail,
    InstAbortLowerEl,
    InstAbortSameEl,
    PcAlignment,
    DataAbortLowerEl,
    DataAbortSameEl,
    SpAlignment,
    SError,
    BreakpointLowerEl,
    SoftwareStepLowerEl,
    WatchpointLowerEl,
    Brk64,
    /// Any class not listed, with its raw value.
    Other(u8),
}

impl ExceptionClass {
    #[inline]
    pub fn from_ec(ec: u8) -> Self {
        match ec {
            0x00 => Self::Unknown,
            0x01 => Self::WfxTrap,
            0x07 => Self::FpAccess,
            0x0e => Self::IllegalState,
            0x15 => Self::Svc64,
            0x16 => Self::Hvc64,
            0x17 => Self::Smc64,
            0x18 => Self::SysRegTrap,
            0x19 => Self::SveAccess,
            0x1c => Self::PacFail,
            0x20 => Self::InstAbortLowerEl,
            0x21 => Self::InstAbortSameEl,
            0x22 => Self::PcAlignment,
            0x24 => Self::DataAbortLowerEl,
            0x25 => Self::DataAbortSameEl,
            0x26 => Self::SpAlignment,
            0x2f => Self::SError,
            0x30 => Self::BreakpointLowerEl,
            0x32 => Self::SoftwareStepLowerEl,
            0x34 => Self::WatchpointLowerEl,
            0x3c => Self::Brk64,
            other => Self::Other(other),
        }
    }

    /// The short name the Arm ARM's tables use, for dumps.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown reason",
            Self::WfxTrap => "WFI/WFE trap",
            Self::FpAccess => "FP/SIMD access trap",
            Self::IllegalState => "illegal execution state",
            Self::Svc64 => "SVC",
            Self::Hvc64 => "HVC",
            Self::Smc64 => "SMC",
            Self::SysRegTrap => "MSR/MRS trap",
            Self::SveAccess => "SVE access trap",
            Self::PacFail => "pointer authentication failure",
            Self::InstAbortLowerEl => "instruction abort from a lower EL",
            Self::InstAbortSameEl => "instruction abort from the same EL",
            Self::PcAlignment => "PC alignment fault",
            Self::DataAbortLowerEl => "data abort from a lower EL",
            Self::DataAbortSameEl => "data abort from the same EL",
            Self::SpAlignment => "SP alignment fault",
            Self::SError => "SError",
            Self::BreakpointLowerEl => "breakpoint from a lower EL",
            Self::SoftwareStepLowerEl => "software step from a lower EL",
            Self::WatchpointLowerEl => "watchpoint from a lower EL",
            Self::Brk64 => "BRK",
            Self::Other(_) => "unlisted class",
        }
    }
}

/// Data/instruction abort status codes (DFSC/IFSC) grouped the way a reader of
/// a dump wants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    AddressSize(u8),
    Translation(u8),
    AccessFlag(u8),
    Permission(u8),
    SyncExternal,
    Alignment,
    Other(u8),
}

impl Esr {
    #[inline]
    pub fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    #[inline]
    pub fn class(self) -> ExceptionClass {
        ExceptionClass::from_ec(self.ec())
    }

    /// Instruction length: true for a 32-bit instruction.
    pub fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// The 16-bit immediate of `HVC`/`SMC`/`SVC`/`BRK`.
    pub fn imm16(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// For aborts: the fault status code.
    pub fn fault_status(self) -> FaultStatus {
        let fsc = (self.0 & 0x3f) as u8;
        let level = fsc & 3;
        match fsc >> 2 {
            0 => FaultStatus::AddressSize(level),
            1 => FaultStatus::Translation(level),
            2 => FaultStatus::AccessFlag(level),
            3 => FaultStatus::Permission(level),
            _ if fsc == 0x10 => FaultStatus::SyncExternal,
            _ if fsc == 0x21 => FaultStatus::Alignment,
            _ => FaultStatus::Other(fsc),
        }
    }

    /// For data aborts: `ISS.WnR`, the access was a write.
    pub fn is_write(self) -> bool {
        self.0 & (1 << 6) != 0
    }

    /// For data aborts: ISS.CM, the abort came from a cache maintenance
    /// or address translation instruction (WnR then reads 1 whatever the
    /// instruction did; Arm ARM D24.2.40, "ISS encoding for an exception
    /// from a Data Abort").
    pub fn cache_maintenance(self) -> bool {
        self.0 & (1 << 8) != 0
    }

    /// For a data abort: the instruction syndrome, when ISV says it is valid.
    pub fn data_abort(self) -> Option<DataAbortIss> {
        if self.0 & (1 << 24) == 0 {
            return None;
        }
        Some(DataAbortIss {
            access_size: 1 << ((self.0 >> 22) & 3),
            sign_extend: self.0 & (1 << 21) != 0,
            register: ((self.0 >> 16) & 0x1f) as u8,
            sixty_four: self.0 & (1 << 15) != 0,
            write: self.is_write(),
        })
    }

    /// For a trapped WFI/WFE/WFIT/WFET (EC 0x01): which one, and for the
    /// two with a timeout (FEAT_WFxT) the register that holds it: ISS.TI
    /// is bits [1:0], ISS.RV bit 2 says whether ISS.RN (bits [9:5]) is valid
    /// (Arm ARM D24.2.40, ESR_EL2, "ISS encoding for an exception from a WF*
    /// instruction").
    pub fn wfx(self) -> Wfx {
        let timeout = (self.0 & (1 << 2) != 0).then_some(((self.0 >> 5) & 0x1f) as u8);
        match self.0 & 0b11 {
            0b00 => Wfx::Wfi,
            0b01 => Wfx::Wfe,
            0b10 => Wfx::Wfit { timeout },
            _ => Wfx::Wfet { timeout },
        }
    }

    /// For a trapped `MSR`/`MRS` (EC 0x18): which register and which way.
    pub fn sys_reg(self) -> SysRegAccess {
        let iss = self.0;
        SysRegAccess {
            reg: SysReg {
                op0: ((iss >> 20) & 3) as u8,
                op2: ((iss >> 17) & 7) as u8,
                op1: ((iss >> 14) & 7) as u8,
                crn: ((iss >> 10) & 0xf) as u8,
                crm: ((iss >> 1) & 0xf) as u8,
            },
            register: ((iss >> 5) & 0x1f) as u8,
            read: iss & 1 != 0,
        }
    }
}

/// A trapped wait instruction. `timeout` is the register (0..=30, or 31 for
/// XZR) holding the deadline on the virtual count, `None` when ISS.RV says
/// the syndrome does not name one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wfx {
    Wfi,
    Wfe,
    Wfit { timeout: Option<u8> },
    Wfet { timeout: Option<u8> },
}

/// A data abort's instruction syndrome (ISV=1): what a load or store did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbortIss {
    /// Bytes: 1, 2, 4 or 8 (SAS).
    pub access_size: u8,
    /// SSE: a load sign-extends to the register.
    pub sign_extend: bool,
    /// SRT: the register loaded or stored (31 = XZR).
    pub register: u8,
    /// SF: the register is 64-bit.
    pub sixty_four: bool,
    /// WnR.
    pub write: bool,
}

impl DataAbortIss {
    /// What a load of `value` (the device's, possibly wider than the
    /// access) leaves in its target register: the access's bits, sign- or
    /// zero-extended as SSE says, and as a W register (the upper half zero)
    /// unless SF is set (Arm ARM D24.2.40, ISS.SSE and ISS.SF).
    #[inline(always)]
    pub fn load_value(&self, value: u64) -> u64 {
        // The access's bits to the top, then back down arithmetically
        // (sign-extended) or logically (zero-extended). 56, 48, 32 or 0:
        // 64 less the access's width in bits.
        let shift = 64u32.wrapping_sub(u32::from(self.access_size) * 8) & 63;
        let v = if self.sign_extend { (((value << shift) as i64) >> shift) as u64 } else { (value << shift) >> shift };
        if self.sixty_four {
            v
        } else {
            v & 0xffff_ffff
        }
    }
}

/// A system register by encoding (op0, op1, CRn, CRm, op2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysReg {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

impl SysReg {
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self { op0, op1, crn, crm, op2 }
    }
}

impl core::fmt::Display for SysReg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "S{}_{}_C{}_C{}_{}", self.op0, self.op1, self.crn, self.crm, self.op2)
    }
}

/// A trapped system-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    pub reg: SysReg,
    /// Rt (31 = XZR).
    pub register: u8,
    /// `MRS` (a read) rather than `MSR`.
    pub read: bool,
}

impl core::fmt::Display for Esr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let class = self.class();
        write!(
            f,
            "{:#x} (EC={:#04x} {}, IL={}, ISS={:#x}",
            self.0,
            self.ec(),
            class.name(),
            self.il() as u8,
            self.iss()
        )?;
        match class {
            ExceptionClass::DataAbortLowerEl
            | ExceptionClass::DataAbortSameEl
            | ExceptionClass::InstAbortLowerEl
            | ExceptionClass::InstAbortSameEl => {
                write!(f, ", {:?}", self.fault_status())?;
                if matches!(class, ExceptionClass::DataAbortLowerEl | ExceptionClass::DataAbortSameEl) {
                    write!(f, ", {}", if self.is_write() { "write" } else { "read" })?;
                }
            }
            ExceptionClass::Hvc64 | ExceptionClass::Smc64 | ExceptionClass::Svc64 | ExceptionClass::Brk64 => {
                write!(f, ", imm16={:#x}", self.imm16())?;
            }
            _ => {}
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hvc() {
        let esr = Esr(0x5a00_0000 | 0x12);
        assert_eq!(esr.class(), ExceptionClass::Hvc64);
        assert!(esr.il());
        assert_eq!(esr.imm16(), 0x12);
        assert_eq!(format!("{esr}"), "0x5a000012 (EC=0x16 HVC, IL=1, ISS=0x12, imm16=0x12)");
    }

    #[test]
    fn decodes_data_abort_iss() {
        // ldr w3, [x1] from a lower EL: ISV, SAS=2 (word), SRT=3, WnR=0.
        let esr = Esr((0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (3 << 16) | 0x07);
        let iss = esr.data_abort().unwrap();
        assert_eq!(
            iss,
            DataAbortIss { access_size: 4, sign_extend: false, register: 3, sixty_four: false, write: false }
        );
        // strb wzr with SSE and SF clear, WnR set.
        let esr = Esr((0x24 << 26) | (1 << 24) | (31 << 16) | (1 << 6));
        let iss = esr.data_abort().unwrap();
        assert_eq!((iss.access_size, iss.register, iss.write), (1, 31, true));
        // ldrsh x5 (SSE, SF, SAS=1).
        let esr = Esr((0x24 << 26) | (1 << 24) | (1 << 22) | (1 << 21) | (5 << 16) | (1 << 15));
        let iss = esr.data_abort().unwrap();
        assert!(iss.sign_extend && iss.sixty_four && iss.access_size == 2);
        // No ISV: no syndrome.
        assert_eq!(Esr((0x24 << 26) | 0x07).data_abort(), None);
    }

    #[test]
    fn decodes_sys_reg_access() {
        // mrs x2, cntp_ctl_el0 = S3_3_C14_C2_1.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (14 << 10) | (2 << 5) | (2 << 1) | 1;
        let a = Esr((0x18 << 26) | (1 << 25) | iss).sys_reg();
        assert_eq!(a.reg, SysReg::new(3, 3, 14, 2, 1));
        assert_eq!(a.register, 2);
        assert!(a.read);
        assert_eq!(a.reg.to_string(), "S3_3_C14_C2_1");
    }

    #[test]
    fn decodes_wait_instructions() {
        // Arm ARM D24.2.40: TI 0b00 WFI, 0b01 WFE, 0b10 WFIT, 0b11 WFET; RV
        // (bit 2) says RN (bits [9:5]) names the timeout register.
        let wfx = |iss: u64| Esr((0x01 << 26) | (1 << 25) | iss).wfx();
        assert_eq!(wfx(0), Wfx::Wfi);
        assert_eq!(wfx(1), Wfx::Wfe);
        assert_eq!(wfx(0b10 | 1 << 2 | 3 << 5), Wfx::Wfit { timeout: Some(3) });
        assert_eq!(wfx(0b11 | 1 << 2 | 30 << 5), Wfx::Wfet { timeout: Some(30) });
        assert_eq!(wfx(0b10 | 3 << 5), Wfx::Wfit { timeout: None });
        // The condition fields (CV, COND) above do not change the kind.
        assert_eq!(wfx(1 << 24 | 0xe << 20), Wfx::Wfi);
    }

    #[test]
    fn decodes_data_abort() {
        // EC=0x25, IL, WnR, level-3 translation fault.
        let esr = Esr((0x25 << 26) | (1 << 25) | (1 << 6) | 0x07);
        assert_eq!(esr.class(), ExceptionClass::DataAbortSameEl);
        assert!(esr.is_write());
        assert_eq!(esr.fault_status(), FaultStatus::Translation(3));
        assert!(format!("{esr}").contains("Translation(3), write"));
    }

    #[test]
    fn unknown_classes_keep_their_value() {
        assert_eq!(Esr(0x3f << 26).class(), ExceptionClass::Other(0x3f));
        assert_eq!(Esr(0).class(), ExceptionClass::Unknown);
        assert_eq!(Esr(0x10).fault_status(), FaultStatus::SyncExternal);
    }

    /// Every decoder on any 64-bit value, as a guest can make el2 see (the
    /// syndrome of whatever it executes): no panic, and each field comes
    /// from the bits Arm ARM D24.2.40 (ESR_EL2) gives it, nothing else.
    mod random {
        use super::*;
        use proptest::prelude::*;

        /// Any value; or each class (EC, bits [31:26]) with any ISS, so
        /// that all 64 are reached often.
        fn esr() -> impl Strategy<Value = u64> {
            prop_oneof![any::<u64>(), (0u64..64, any::<u64>()).prop_map(|(ec, rest)| (rest & !(0x3f << 26)) | ec << 26)]
        }

        /// ISS encoding for an exception from a WF* instruction: TI [1:0],
        /// RV [2], RN [9:5]; CV [24] and COND [23:20] say nothing of the kind.
        const WFX_FIELDS: u64 = 0x3e7;
        /// ISS encoding for an exception from MSR, MRS or a System
        /// instruction: Op0 [21:20] ... Direction [0].
        const SYS_REG_FIELDS: u64 = 0x3f_ffff;

        proptest! {
            #![proptest_config(crate::fuzz::config(5000))]

            #[test]
            fn every_value_decodes(v in esr()) {
                let e = Esr(v);
                prop_assert_eq!(u64::from(e.ec()), (v >> 26) & 0x3f);
                prop_assert_eq!(e.class(), Esr(v & (0x3f << 26)).class(), "the class is EC alone");
                match e.class() {
                    ExceptionClass::Other(ec) => prop_assert_eq!(ec, e.ec()),
                    class => prop_assert_ne!(class.name(), "unlisted class"),
                }
                prop_assert_eq!(e.il(), v & (1 << 25) != 0);
                prop_assert_eq!(u64::from(e.iss()), v & 0x1ff_ffff);
                prop_assert_eq!(u64::from(e.imm16()), v & 0xffff);

                // WF*: only TI, RV and RN count; the register is 0..=31.
                let wfx = e.wfx();
                prop_assert_eq!(wfx, Esr(v & WFX_FIELDS).wfx());
                let rn = ((v >> 5) & 0x1f) as u8;
                let timeout = (v & (1 << 2) != 0).then_some(rn);
                let want = [Wfx::Wfi, Wfx::Wfe, Wfx::Wfit { timeout }, Wfx::Wfet { timeout }][(v & 3) as usize];
                prop_assert_eq!(wfx, want);

                // MSR/MRS: the fields put back together are the ISS's bits [21:0].
                let a = e.sys_reg();
                let r = a.reg;
                prop_assert!(r.op0 < 4 && r.op1 < 8 && r.crn < 16 && r.crm < 16 && r.op2 < 8 && a.register < 32);
                let back = u64::from(r.op0) << 20
                    | u64::from(r.op2) << 17
                    | u64::from(r.op1) << 14
                    | u64::from(r.crn) << 10
                    | u64::from(a.register) << 5
                    | u64::from(r.crm) << 1
                    | u64::from(a.read);
                prop_assert_eq!(back, v & SYS_REG_FIELDS);
                prop_assert_eq!(
                    r.to_string(),
                    format!("S{}_{}_C{}_C{}_{}", r.op0, r.op1, r.crn, r.crm, r.op2)
                );

                // Data aborts: a syndrome only with ISV [24]; SAS [23:22], SSE [21],
                // SRT [20:16], SF [15], WnR [6].
                match e.data_abort() {
                    None => prop_assert_eq!(v & (1 << 24), 0),
                    Some(iss) => {
                        prop_assert_ne!(v & (1 << 24), 0);
                        prop_assert_eq!(u64::from(iss.access_size), 1 << ((v >> 22) & 3));
                        prop_assert_eq!(iss.sign_extend, v & (1 << 21) != 0);
                        prop_assert_eq!(u64::from(iss.register), (v >> 16) & 0x1f);
                        prop_assert_eq!(iss.sixty_four, v & (1 << 15) != 0);
                        prop_assert_eq!(iss.write, v & (1 << 6) != 0);
                    }
                }
                prop_assert_eq!(e.is_write(), v & (1 << 6) != 0);

                // DFSC/IFSC [5:0] alone; levels 0..=3.
                let fsc = e.fault_status();
                prop_assert_eq!(fsc, Esr(v & 0x3f).fault_status());
                match fsc {
                    FaultStatus::AddressSize(l)
                    | FaultStatus::Translation(l)
                    | FaultStatus::AccessFlag(l)
                    | FaultStatus::Permission(l) => prop_assert!(l < 4 && v & 0x30 == 0),
                    FaultStatus::SyncExternal => prop_assert_eq!(v & 0x3f, 0x10),
                    FaultStatus::Alignment => prop_assert_eq!(v & 0x3f, 0x21),
                    FaultStatus::Other(f) => {
                        prop_assert!(u64::from(f) == v & 0x3f && !matches!(f, 0..=0xf | 0x10 | 0x21));
                    }
                }

                // The dump line: the value, the class by number and name, closed.
                let text = e.to_string();
                let (ec, name, il, iss) = (e.ec(), e.class().name(), u8::from(e.il()), e.iss());
                let head = format!("{v:#x} (EC={ec:#04x} {name}, IL={il}, ISS={iss:#x}");
                prop_assert!(text.starts_with(&head) && text.ends_with(')'), "{}", text);
            }
        }
    }
}
