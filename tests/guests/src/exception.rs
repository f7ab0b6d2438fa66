//! EL1 exception vectors, "expect an exception", and running code at EL0.
//!
//! The vectors save every general and FP/SIMD register, so an exception the
//! test expected is invisible to the code it interrupted. A synchronous
//! exception taken while [`catch`] runs is recorded (ESR, FAR, ELR, from
//! which EL) and skipped: the return address moves past the instruction that
//! caused it (for `SVC`, `HVC` and `SMC` it already points past). An
//! `SVC` from EL0 ends [`run_at_el0`]. [`catch_resume`] resumes at a given
//! address instead (an instruction fetch that faults has nothing to skip). An IRQ goes to the handler
//! [`irq::set_handler`] installed. Anything else is a failure that ends the
//! test with a register dump.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aarch64_cpu::registers::{Readable, ESR_EL1, FAR_EL1};
use ferrovisor_shared::boot::MAX_CPUS;
use ferrovisor_shared::esr::Esr;
use ferrovisor_shared::trap::{ExceptionReport, GeneralRegs};

use crate::{console, irq, rt};

use ferrovisor_shared::trap::EL1_VECTOR_NAMES as VECTOR_NAMES;
const SYNC_EL1_SPX: u64 = 4;
const IRQ_EL1_SPX: u64 = 5;
const SYNC_EL0_A64: u64 = 8;
const IRQ_EL0_A64: u64 = 9;

const EC_SVC64: u8 = 0x15;
const EC_HVC64: u8 = 0x16;
const EC_SMC64: u8 = 0x17;

/// SPSR for a return to EL1h with DAIF masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// SPSR for an entry to EL0t with DAIF masked.
const SPSR_EL0T_MASKED: u64 = 0x3c0;
/// Each CPU's EL0 stack.
const EL0_STACK_SIZE: usize = 16 * 1024;

/// What the vectors save, lowest address first.
#[repr(C)]
pub struct TrapFrame {
    pub elr: u64,
    pub spsr: u64,
    pub fpsr: u64,
    pub fpcr: u64,
    pub q: [u128; 32],
    pub regs: GeneralRegs,
}

const FRAME_FP: usize = core::mem::offset_of!(TrapFrame, q);
const FRAME_GENERAL: usize = core::mem::offset_of!(TrapFrame, regs);
const _: () = assert!(core::mem::offset_of!(TrapFrame, fpsr) == 16 && FRAME_FP == 32 && FRAME_GENERAL == 544);
const _: () = assert!(core::mem::size_of::<GeneralRegs>() == 256);

global_asm!(
    r#"
.text
.balign 0x800
.global guest_vectors
guest_vectors:
"#,
    ferrovisor_shared::vector_table_asm!("guest_trap_common"),
    r#"
guest_trap_common:
"#,
    ferrovisor_shared::save_x2_x29_asm!(),
    r#"
    add     x2, sp, #256
    stp     x30, x2, [sp, #240]
    sub     sp, sp, #{general}
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp]
    mrs     x2, fpsr
    mrs     x3, fpcr
    stp     x2, x3, [sp, #16]
    add     x2, sp, #{fp}
    stp     q0, q1, [x2, #0]
    stp     q2, q3, [x2, #32]
    stp     q4, q5, [x2, #64]
    stp     q6, q7, [x2, #96]
    stp     q8, q9, [x2, #128]
    stp     q10, q11, [x2, #160]
    stp     q12, q13, [x2, #192]
    stp     q14, q15, [x2, #224]
    stp     q16, q17, [x2, #256]
    stp     q18, q19, [x2, #288]
    stp     q20, q21, [x2, #320]
    stp     q22, q23, [x2, #352]
    stp     q24, q25, [x2, #384]
    stp     q26, q27, [x2, #416]
    stp     q28, q29, [x2, #448]
    stp     q30, q31, [x2, #480]
    mov     x1, sp
    bl      guest_trap
    add     x2, sp, #{fp}
    ldp     q0, q1, [x2, #0]
    ldp     q2, q3, [x2, #32]
    ldp     q4, q5, [x2, #64]
    ldp     q6, q7, [x2, #96]
    ldp     q8, q9, [x2, #128]
    ldp     q10, q11, [x2, #160]
    ldp     q12, q13, [x2, #192]
    ldp     q14, q15, [x2, #224]
    ldp     q16, q17, [x2, #256]
    ldp     q18, q19, [x2, #288]
    ldp     q20, q21, [x2, #320]
    ldp     q22, q23, [x2, #352]
    ldp     q24, q25, [x2, #384]
    ldp     q26, q27, [x2, #416]
    ldp     q28, q29, [x2, #448]
    ldp     q30, q31, [x2, #480]
    ldp     x2, x3, [sp, #16]
    msr     fpsr, x2
    msr     fpcr, x3
    ldp     x2, x3, [sp]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    add     sp, sp, #{general}
"#,
    ferrovisor_shared::restore_all_and_eret_asm!(),
    r#"

// guest_enter_el0(entry, el0_sp, arg): erets to `entry` at EL0t with x0 = arg
// on stack `el0_sp`. The EL0 code's `svc` makes guest_trap return here, to
// guest_el0_return at EL1h with SP_EL1 as it was at the eret and x0 as EL0
// left it; callee-saved registers come back from this frame.
.global guest_enter_el0
guest_enter_el0:
    stp     x29, x30, [sp, #-160]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    msr     sp_el0, x1
    msr     elr_el1, x0
    mov     x9, #{spsr_el0}
    msr     spsr_el1, x9
    mov     x0, x2
    eret
.global guest_el0_return
guest_el0_return:
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    ldp     x29, x30, [sp], #160
    ret

.section .bss.el0_stacks, "aw", @nobits
.balign 16
guest_el0_stacks:
    .space  {el0_stack} * {max_cpus}
"#,
    general = const FRAME_GENERAL,
    fp = const FRAME_FP,
    spsr_el0 = const SPSR_EL0T_MASKED,
    el0_stack = const EL0_STACK_SIZE,
    max_cpus = const MAX_CPUS,
);

unsafe extern "C" {
    fn guest_enter_el0(entry: usize, el0_sp: usize, arg: u64) -> u64;
    fn guest_el0_return();
    static guest_el0_stacks: u8;
}

/// A synchronous exception [`catch`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub esr: Esr,
    pub far: u64,
    /// `ELR_EL1` as the exception set it.
    pub elr: u64,
    /// Taken from EL0 rather than EL1.
    pub from_el0: bool,
}

impl Exception {
    pub fn ec(&self) -> u8 {
        self.esr.ec()
    }
}

struct Slot {
    armed: AtomicBool,
    taken: AtomicBool,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
    from_el0: AtomicBool,
    /// ESR of the `svc` that ended the last [`run_at_el0`].
    el0_svc_esr: AtomicU64,
    /// Where [`catch_resume`] resumes (0: after the faulting instruction).
    resume: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Self {
            armed: AtomicBool::new(false),
            taken: AtomicBool::new(false),
            esr: AtomicU64::new(0),
            far: AtomicU64::new(0),
            elr: AtomicU64::new(0),
            from_el0: AtomicBool::new(false),
            el0_svc_esr: AtomicU64::new(0),
            resume: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; MAX_CPUS] = [const { Slot::new() }; MAX_CPUS];

fn slot() -> &'static Slot {
    &SLOTS[rt::cpu_index() % MAX_CPUS]
}

/// Runs `f`; the first synchronous exception it causes (at EL1, or at EL0
/// through [`run_at_el0`]) is recorded and skipped. A second one is a failure.
pub fn catch<R>(f: impl FnOnce() -> R) -> (R, Option<Exception>) {
    catch_at(0, f)
}

/// As [`catch`], but the exception returns to `resume` instead of past the
/// instruction that caused it: for an instruction fetch that faults, where
/// there is no instruction to skip.
///
/// # Safety
/// `resume` is an address in `f`'s code where execution may continue with
/// the registers as they were at the fault.
pub unsafe fn catch_resume<R>(resume: usize, f: impl FnOnce() -> R) -> (R, Option<Exception>) {
    catch_at(resume as u64, f)
}

fn catch_at<R>(resume: u64, f: impl FnOnce() -> R) -> (R, Option<Exception>) {
    let s = slot();
    s.resume.store(resume, Ordering::SeqCst);
    s.taken.store(false, Ordering::SeqCst);
    s.armed.store(true, Ordering::SeqCst);
    let r = f();
    s.armed.store(false, Ordering::SeqCst);
    let exception = s.taken.load(Ordering::SeqCst).then(|| Exception {
        esr: Esr(s.esr.load(Ordering::SeqCst)),
        far: s.far.load(Ordering::SeqCst),
        elr: s.elr.load(Ordering::SeqCst),
        from_el0: s.from_el0.load(Ordering::SeqCst),
    });
    (r, exception)
}

/// How EL0 code ended.
#[derive(Clone, Copy, Debug)]
pub struct El0Exit {
    /// x0 at the `svc`.
    pub x0: u64,
    /// ESR of the `svc`.
    pub esr: Esr,
}

/// Runs `entry` at EL0 (DAIF masked, MMU still off) on this CPU's EL0 stack
/// with x0 = `arg`, until it executes `svc`.
///
/// # Safety
/// `entry` is code that ends with `svc` and changes no memory the rest of
/// the guest relies on, nor d8-d15 (x19-x29 are restored afterwards).
pub unsafe fn run_at_el0(entry: usize, arg: u64) -> El0Exit {
    let cpu = rt::cpu_index() % MAX_CPUS;
    let stacks = &raw const guest_el0_stacks as usize;
    let sp = stacks + (cpu + 1) * EL0_STACK_SIZE;
    // SAFETY: the caller vouches for `entry`; the stack is this CPU's alone
    // and guest_enter_el0 returns like a function once EL0 makes its svc.
    let x0 = unsafe { guest_enter_el0(entry, sp, arg) };
    El0Exit { x0, esr: Esr(slot().el0_svc_esr.load(Ordering::SeqCst)) }
}

#[unsafe(no_mangle)]
extern "C" fn guest_trap(kind: u64, frame: &mut TrapFrame) {
    if (kind == IRQ_EL1_SPX || kind == IRQ_EL0_A64) && irq::dispatch() {
        return;
    }
    let esr = Esr(ESR_EL1.get());
    let sync = kind == SYNC_EL1_SPX || kind == SYNC_EL0_A64;
    let s = slot();
    if kind == SYNC_EL0_A64 && esr.ec() == EC_SVC64 {
        s.el0_svc_esr.store(esr.0, Ordering::SeqCst);
        frame.elr = guest_el0_return as *const () as usize as u64;
        frame.spsr = SPSR_EL1H_MASKED;
        return;
    }
    if sync && s.armed.swap(false, Ordering::SeqCst) {
        s.esr.store(esr.0, Ordering::SeqCst);
        s.far.store(FAR_EL1.get(), Ordering::SeqCst);
        s.elr.store(frame.elr, Ordering::SeqCst);
        s.from_el0.store(kind == SYNC_EL0_A64, Ordering::SeqCst);
        s.taken.store(true, Ordering::SeqCst);
        let resume = s.resume.swap(0, Ordering::SeqCst);
        if resume != 0 {
            frame.elr = resume;
        } else if !matches!(esr.ec(), EC_SVC64 | EC_HVC64 | EC_SMC64) {
            frame.elr += 4;
        }
        return;
    }
    let report = ExceptionReport {
        kind: VECTOR_NAMES[(kind & 15) as usize],
        el: "EL1",
        esr: esr.0,
        far: FAR_EL1.get(),
        elr: frame.elr,
        spsr: frame.spsr,
        regs: &frame.regs,
    };
    console::fail_and_exit(format_args!("unexpected exception on cpu{}: {report}", rt::cpu_index()))
}
