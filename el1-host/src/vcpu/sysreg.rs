//! System-register accesses the host emulates after el2 traps them: the EL1
//! physical timer (`CNTHCTL_EL2.EL1PCEN` is clear for guests) and the GICv3
//! SGI generation registers (trapped while `HCR_EL2.IMO` is set; the vGIC
//! turns them into virtual SGIs). Anything else is unknown: the guest gets an
//! UNDEFINED exception.

use ferrovisor_shared::esr::{SysReg, SysRegAccess};
use ferrovisor_shared::vcpu::TimerState;

pub const CNTP_TVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 0);
pub const CNTP_CTL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 1);
pub const CNTP_CVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 2);
pub const ICC_SGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 5);
pub const ICC_ASGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 6);
pub const ICC_SGI0R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 7);

const CTL_ENABLE: u64 = 1 << 0;
const CTL_IMASK: u64 = 1 << 1;
const CTL_ISTATUS: u64 = 1 << 2;

/// What happened to an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; for a read, this value goes to the register.
    Done(u64),
    /// A write to an SGI generation register: `value` for the vGIC, with the
    /// group the register names.
    Sgi { value: u64, group: u8 },
    /// The guest gets an UNDEFINED exception.
    Undefined,
}

/// Emulates `access`; `value` is what a write writes; `now` the physical
/// counter.
pub fn emulate(access: &SysRegAccess, value: u64, timer: &mut TimerState, now: u64) -> Outcome {
    let reg = access.reg;
    if reg == CNTP_CTL_EL0 {
        if access.read {
            let fired = timer.cntp_ctl & CTL_ENABLE != 0 && now >= timer.cntp_cval;
            Outcome::Done((timer.cntp_ctl & (CTL_ENABLE | CTL_IMASK)) | if fired { CTL_ISTATUS } else { 0 })
        } else {
            timer.cntp_ctl = value & (CTL_ENABLE | CTL_IMASK);
            Outcome::Done(0)
        }
    } else if reg == CNTP_CVAL_EL0 {
        if access.read {
            Outcome::Done(timer.cntp_cval)
        } else {
            timer.cntp_cval = value;
            Outcome::Done(0)
        }
    } else if reg == CNTP_TVAL_EL0 {
        if access.read {
            // TVAL is the signed 32-bit distance to CVAL.
            Outcome::Done(timer.cntp_cval.wrapping_sub(now) as u32 as i32 as i64 as u64)
        } else {
            timer.cntp_cval = now.wrapping_add(value as u32 as i32 as i64 as u64);
            Outcome::Done(0)
        }
    } else if !access.read && reg == ICC_SGI1R_EL1 {
        Outcome::Sgi { value, group: 1 }
    } else if !access.read && (reg == ICC_SGI0R_EL1 || reg == ICC_ASGI1R_EL1) {
        // With one security state (GICD_CTLR.DS = 1) ASGI1R acts as SGI0R.
        Outcome::Sgi { value, group: 0 }
    } else {
        Outcome::Undefined
    }
}

/// Whether the emulated physical timer's interrupt condition holds.
pub fn ptimer_pending(timer: &TimerState, now: u64) -> bool {
    timer.cntp_ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE && now >= timer.cntp_cval
}

/// Whether the virtual timer's interrupt condition holds (`cntvct` is the
/// guest's virtual count).
pub fn vtimer_pending(timer: &TimerState, cntvct: u64) -> bool {
    timer.cntv_ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE && cntvct >= timer.cntv_cval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(reg: SysReg, read: bool) -> SysRegAccess {
        SysRegAccess { reg, register: 0, read }
    }

    #[test]
    fn physical_timer_is_emulated() {
        let mut t = TimerState::default();
        assert_eq!(emulate(&acc(CNTP_CVAL_EL0, false), 1000, &mut t, 0), Outcome::Done(0));
        assert_eq!(emulate(&acc(CNTP_CTL_EL0, false), CTL_ENABLE | CTL_ISTATUS, &mut t, 0), Outcome::Done(0));
        assert_eq!(emulate(&acc(CNTP_CTL_EL0, true), 0, &mut t, 999), Outcome::Done(CTL_ENABLE));
        assert_eq!(emulate(&acc(CNTP_CTL_EL0, true), 0, &mut t, 1000), Outcome::Done(CTL_ENABLE | CTL_ISTATUS));
        assert!(ptimer_pending(&t, 1000));
        assert_eq!(emulate(&acc(CNTP_TVAL_EL0, true), 0, &mut t, 900), Outcome::Done(100));
        assert_eq!(emulate(&acc(CNTP_TVAL_EL0, true), 0, &mut t, 1100), Outcome::Done((-100i64) as u64));
        emulate(&acc(CNTP_TVAL_EL0, false), 50, &mut t, 2000);
        assert_eq!(t.cntp_cval, 2050);
        emulate(&acc(CNTP_CTL_EL0, false), CTL_ENABLE | CTL_IMASK, &mut t, 0);
        assert!(!ptimer_pending(&t, 5000), "masked");
    }

    #[test]
    fn unknown_registers_are_undefined() {
        let mut t = TimerState::default();
        assert_eq!(emulate(&acc(SysReg::new(3, 0, 15, 0, 0), true), 0, &mut t, 0), Outcome::Undefined);
        assert_eq!(emulate(&acc(SysReg::new(3, 3, 9, 12, 0), false), 0, &mut t, 0), Outcome::Undefined, "PMCR");
        assert_eq!(emulate(&acc(ICC_SGI1R_EL1, true), 0, &mut t, 0), Outcome::Undefined, "write-only");
    }

    #[test]
    fn sgi_writes_go_to_the_vgic() {
        let mut t = TimerState::default();
        assert_eq!(
            emulate(&acc(ICC_SGI1R_EL1, false), 0x1_0005, &mut t, 0),
            Outcome::Sgi { value: 0x1_0005, group: 1 }
        );
        assert_eq!(emulate(&acc(ICC_ASGI1R_EL1, false), 7, &mut t, 0), Outcome::Sgi { value: 7, group: 0 });
        assert_eq!(emulate(&acc(ICC_SGI0R_EL1, false), 9, &mut t, 0), Outcome::Sgi { value: 9, group: 0 });
    }

    #[test]
    fn virtual_timer_condition() {
        let t = TimerState { cntv_ctl: CTL_ENABLE, cntv_cval: 10, ..Default::default() };
        assert!(!vtimer_pending(&t, 9));
        assert!(vtimer_pending(&t, 10));
        let t = TimerState { cntv_ctl: CTL_ENABLE | CTL_IMASK, cntv_cval: 10, ..Default::default() };
        assert!(!vtimer_pending(&t, 10));
    }
}
