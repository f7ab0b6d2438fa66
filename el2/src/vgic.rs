//! The GIC virtual CPU interface at world switch (docs/interrupts.md §4): the list
//! registers, `HCR`, `VMCR` and active-priority registers the host's vGIC
//! filled in the vCPU context go into the hardware at entry and come back at
//! exit. GICv3 has them as `ICH_*_EL2` system registers; GICv2 (GIC-400) as
//! the GICH MMIO frame, whose address el2 reads from the device tree.

use aarch64_cpu::registers::*;
use core::sync::atomic::{AtomicU64, Ordering};
use ferrovisor_shared::dt::GicDesc;
use ferrovisor_shared::gic::{lr_v2, lr_v3};
use ferrovisor_shared::sgi::{self, SgiMailbox, SGI_EL2_POST};
use ferrovisor_shared::vcpu::{VgicCpuState, MAX_LIST_REGS};

/// Which virtual CPU interface this machine has, found at boot.
const IF_NONE: u64 = 0;
const IF_V3: u64 = 1;
const IF_V2: u64 = 2;
static INTERFACE: AtomicU64 = AtomicU64::new(IF_NONE);
/// The GICH frame and the CPU interface (GICv2).
static GICH: AtomicU64 = AtomicU64::new(0);
static GICC: AtomicU64 = AtomicU64::new(0);
/// GICv2: the distributor, for el2's own SGIs (`GICD_SGIR`).
static GICD: AtomicU64 = AtomicU64::new(0);
static NR_LRS: AtomicU64 = AtomicU64::new(0);

// GICH registers (GICv2 spec, table 5-1).
const GICH_HCR: u64 = 0x000;
const GICH_VTR: u64 = 0x004;
const GICH_VMCR: u64 = 0x008;
const GICH_MISR: u64 = 0x010;
const GICH_ELRSR0: u64 = 0x030;
const GICH_APR: u64 = 0x0f0;
const GICH_LR0: u64 = 0x100;

// GICC registers (GICv2 spec, table 4-2).
const GICC_IAR: u64 = 0x00c;
const GICC_EOIR: u64 = 0x010;
const GICC_HPPIR: u64 = 0x018;
const GICC_DIR: u64 = 0x1000;
// GICD registers (GICv2 spec, table 4-1).
const GICD_ITARGETSR0: u64 = 0x800;
const GICD_SGIR: u64 = 0xf00;

const V3_VINTID: u64 = lr_v3::VINTID_MASK;
const V3_PINTID_SHIFT: u32 = lr_v3::PINTID_SHIFT;
const V3_PINTID: u64 = lr_v3::PINTID_MASK;
const V3_STATE_SHIFT: u32 = lr_v3::STATE_SHIFT;
const V2_VINTID: u64 = lr_v2::VINTID_MASK;
const V2_PINTID_SHIFT: u32 = lr_v2::PINTID_SHIFT;
const V2_PINTID: u64 = lr_v2::PINTID_MASK;
const V2_STATE_SHIFT: u32 = lr_v2::STATE_SHIFT;
/// `ICC_IAR1_EL1.INTID` / `GICC_IAR.InterruptID`.
const V3_IAR_INTID: u64 = 0xff_ffff;
const V2_IAR_INTID: u64 = 0x3ff;

/// What became of an IRQ exit that may be the guest's virtual timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwIrq {
    /// In a list register: back to the guest.
    Injected,
    /// `SGI_EL2_POST`: what other CPUs posted is in list registers.
    Posted,
    /// Not the timer, or no list register for it: nothing acknowledged.
    NotOurs,
    /// Another interrupt came first: acknowledged (this `IAR` value), for
    /// the host to finish.
    Acked(u64),
}

/// An IRQ exit: if the interrupt is the guest's virtual timer and it can
/// take it (`s.vtimer_lr` non-zero), acknowledge its physical PPI, drop the
/// priority (EOImode 1 leaves it active for the guest's deactivation to
/// end through HW = 1), and write `vtimer_lr` into the list register that
/// held the same virtual INTID (now invalid, since the physical interrupt
/// was inactive) or the next free one (docs/interrupts.md §6). Out of
/// line, so that the hypercall fast path stays short.
#[inline(never)]
pub fn take_hw_irq(s: &mut VgicCpuState, posts: Option<&SgiMailbox>) -> HwIrq {
    let lr = s.vtimer_lr;
    if lr == 0 && posts.is_none() {
        return HwIrq::NotOurs;
    }
    let v3 = match INTERFACE.load(Ordering::Relaxed) {
        IF_V3 => true,
        IF_V2 => false,
        _ => return HwIrq::NotOurs,
    };
    let (vintid, pintid) = if v3 {
        (lr & V3_VINTID, (lr >> V3_PINTID_SHIFT) & V3_PINTID)
    } else {
        (lr & V2_VINTID, (lr >> V2_PINTID_SHIFT) & V2_PINTID)
    };
    let hppir = if v3 { read_hppir1() & V3_IAR_INTID } else { u64::from(read_gicc(GICC_HPPIR)) & V2_IAR_INTID };
    if let Some(mb) = posts.filter(|_| hppir == u64::from(SGI_EL2_POST)) {
        let iar = if v3 { read_iar1() } else { u64::from(read_gicc(GICC_IAR)) };
        if iar & if v3 { V3_IAR_INTID } else { V2_IAR_INTID } != u64::from(SGI_EL2_POST) {
            return HwIrq::Acked(iar);
        }
        // el2's own: ended here (EOImode 1: drop, then deactivate).
        if v3 {
            write_eoir1(iar);
            write_dir(iar);
        } else {
            write_gicc(GICC_EOIR, iar as u32);
            write_gicc(GICC_DIR, iar as u32);
        }
        take_posted(s, mb, sgi::take(&mb.pending));
        return HwIrq::Posted;
    }
    if lr == 0 || hppir != pintid {
        return HwIrq::NotOurs;
    }
    let nr = nr_lrs() as usize;
    let used = (s.used_lrs as usize).min(nr);
    let mut slot = used;
    for i in 0..used {
        let (cur, vmask, state) = if v3 {
            (read_lr_v3(i), V3_VINTID, V3_STATE_SHIFT)
        } else {
            (u64::from(read_gich(lr_at(i))), V2_VINTID, V2_STATE_SHIFT)
        };
        if cur & vmask == vintid {
            if (cur >> state) & 3 != 0 {
                // Still pending or active in the guest: the host sorts it out.
                return HwIrq::NotOurs;
            }
            slot = i;
            break;
        }
    }
    if slot >= nr {
        return HwIrq::NotOurs;
    }
    let iar = if v3 { read_iar1() } else { u64::from(read_gicc(GICC_IAR)) };
    let intid = iar & if v3 { V3_IAR_INTID } else { V2_IAR_INTID };
    if intid != pintid {
        return HwIrq::Acked(iar);
    }
    if v3 {
        write_eoir1(iar);
        write_lr_v3(slot, lr);
    } else {
        write_gicc(GICC_EOIR, iar as u32);
        write_gich(lr_at(slot), lr as u32);
    }
    if slot == used {
        s.used_lrs = used as u64 + 1;
    }
    s.el2_lrs |= 1 << slot;
    HwIrq::Injected
}

/// Moves SGIs `bits` posted for this vCPU into list registers (GICv3): one
/// already pending there stays as it is, one active there becomes pending
/// and active, the others take the list register that held them or the
/// next free one (noted in `el2_lrs`). What the guest cannot take now, or
/// finds no list register, goes back to the mailbox, with the maintenance
/// interrupt for "no pending list register" on, so that the guest exits
/// soon and the host raises it in the vGIC.
#[inline(never)]
pub fn take_posted(s: &mut VgicCpuState, mb: &SgiMailbox, bits: u64) {
    let v3 = match INTERFACE.load(Ordering::Relaxed) {
        IF_V3 => true,
        IF_V2 => false,
        _ => {
            mb.pending.fetch_or(bits, Ordering::Relaxed);
            return;
        }
    };
    let takeable = mb.takeable.load(Ordering::Acquire);
    let mut keep = 0;
    let mut todo = bits;
    let nr = nr_lrs() as usize;
    let mut used = (s.used_lrs as usize).min(nr);
    while todo != 0 {
        let k = todo.trailing_zeros();
        let bit = 1u64 << k;
        todo &= !bit;
        // GICv3: bit n is SGI n; GICv2: bit 8n + source.
        let (n, source) = if v3 { (k, 0) } else { (k / 8, k % 8) };
        if n >= 16 || takeable & (1 << n) == 0 {
            keep |= bit;
            continue;
        }
        let (want, id_mask, state_shift) = if v3 {
            (u64::from(n), V3_VINTID, V3_STATE_SHIFT)
        } else {
            (
                u64::from(n) | u64::from(source) << lr_v2::CPUID_SHIFT,
                V2_VINTID | lr_v2::CPUID_MASK << lr_v2::CPUID_SHIFT,
                V2_STATE_SHIFT,
            )
        };
        let mut slot = used;
        let mut done = false;
        for i in 0..used {
            let cur = if v3 { read_lr_v3(i) } else { u64::from(read_gich(lr_at(i))) };
            if cur & id_mask != want {
                continue;
            }
            match (cur >> state_shift) & 3 {
                0 => slot = i,
                2 => {
                    let lr = cur | 1 << state_shift;
                    if v3 {
                        write_lr_v3(i, lr);
                    } else {
                        write_gich(lr_at(i), lr as u32);
                    }
                    s.el2_lrs |= 1 << i;
                    done = true;
                }
                _ => done = true,
            }
            break;
        }
        if done {
            continue;
        }
        if slot >= nr {
            keep |= bit | todo;
            break;
        }
        if v3 {
            write_lr_v3(slot, mb.lr_v3(n, takeable));
        } else {
            write_gich(lr_at(slot), mb.lr_v2(n, source, takeable) as u32);
        }
        s.el2_lrs |= 1 << slot;
        if slot == used {
            used += 1;
        }
    }
    s.used_lrs = used as u64;
    if keep != 0 {
        mb.pending.fetch_or(keep, Ordering::Relaxed);
        if v3 {
            ICH_HCR_EL2.set(ICH_HCR_EL2.get() | ICH_HCR_NPIE);
        } else {
            write_gich(GICH_HCR, read_gich(GICH_HCR) | ICH_HCR_NPIE as u32);
        }
    }
}

/// The routing bits el2's own SGI needs to reach this CPU (never 0 where
/// it can be sent): GICv3 `ICC_SGI1R_EL1`'s affinity fields, GICv2
/// `GICD_SGIR`'s CPUTargetList (this CPU's interface, from the banked
/// `GICD_ITARGETSR0`; 0 on a uniprocessor GICv2, where it reads as zero).
pub fn this_cpu_route() -> u64 {
    match INTERFACE.load(Ordering::Relaxed) {
        IF_V3 => sgi::route_of(MPIDR_EL1.get()),
        IF_V2 => {
            let base = GICD.load(Ordering::Relaxed);
            // SAFETY: the device tree's distributor (device memory in el2's
            // map); reading ITARGETSR0 has no side effect.
            let mask = unsafe { core::ptr::read_volatile((base + GICD_ITARGETSR0) as *const u32) } & 0xff;
            u64::from(mask) << 16
        }
        _ => 0,
    }
}

/// Sends `SGI_EL2_POST` to the CPU `route` names (its `resident` bits).
pub fn send_post_sgi(route: u64) {
    if INTERFACE.load(Ordering::Relaxed) == IF_V2 {
        let base = GICD.load(Ordering::Relaxed);
        // SAFETY: GICD_SGIR of the device tree's distributor, filter 0 (the
        // list): a physical SGI to one CPU, which its el2 (or host) ends.
        unsafe { core::ptr::write_volatile((base + GICD_SGIR) as *mut u32, (route as u32) | SGI_EL2_POST) };
        return;
    }
    let value = route | u64::from(SGI_EL2_POST) << sgi::SGI1R_INTID_SHIFT;
    // SAFETY: a physical SGI to one CPU, which that CPU's el2 (or host)
    // ends; ICC_SGI1R_EL1 has no other effect.
    unsafe { core::arch::asm!("msr s3_0_c12_c11_5, {}", in(reg) value, options(nomem, nostack, preserves_flags)) };
}

/// `ICH_HCR_EL2.NPIE` (IHI 0069 §12.4.4).
const ICH_HCR_NPIE: u64 = 1 << 3;

const fn lr_at(i: usize) -> u64 {
    GICH_LR0 + 4 * i as u64
}

/// Finds the virtual CPU interface on the boot CPU (before the host runs):
/// the system registers when the GIC is a v3 and the CPU has them, else the
/// device tree's GICH frame.
pub fn init(gic: Option<GicDesc>) {
    let (kind, lrs) = match gic {
        Some(GicDesc::V3 { .. }) if crate::arch::regs::has_gic_sysregs() => (IF_V3, (ICH_VTR_EL2.get() & 0x1f) + 1),
        Some(GicDesc::V2 { gich: Some(gich), gicc, gicd, .. }) => {
            GICH.store(gich.base, Ordering::Relaxed);
            GICC.store(gicc.base, Ordering::Relaxed);
            GICD.store(gicd.base, Ordering::Relaxed);
            (IF_V2, (read_gich(GICH_VTR) as u64 & 0x3f) + 1)
        }
        _ => (IF_NONE, 0),
    };
    NR_LRS.store(lrs.min(MAX_LIST_REGS as u64), Ordering::Relaxed);
    INTERFACE.store(kind, Ordering::Relaxed);
    reset_cpu();
}

/// The number of list registers (0: no virtual CPU interface).
pub fn nr_lrs() -> u64 {
    NR_LRS.load(Ordering::Relaxed)
}

/// Every list register empty and the interface off, on this CPU.
pub fn reset_cpu() {
    let n = nr_lrs() as usize;
    match INTERFACE.load(Ordering::Relaxed) {
        IF_V3 => {
            ICH_HCR_EL2.set(0);
            for i in 0..n {
                write_lr_v3(i, 0);
            }
        }
        IF_V2 => {
            write_gich(GICH_HCR, 0);
            for i in 0..n {
                write_gich(GICH_LR0 + 4 * i as u64, 0);
            }
        }
        _ => {}
    }
}

/// Loads the guest's virtual CPU interface (entry).
pub fn restore(s: &VgicCpuState) {
    let used = (s.used_lrs as usize).min(nr_lrs() as usize);
    match INTERFACE.load(Ordering::Relaxed) {
        IF_V3 => {
            ICH_VMCR_EL2.set(s.vmcr);
            ICH_AP0R0_EL2.set(s.ap0r[0]);
            ICH_AP1R0_EL2.set(s.ap1r[0]);
            for (i, &lr) in s.lr.iter().enumerate().take(used) {
                write_lr_v3(i, lr);
            }
            ICH_HCR_EL2.set(s.hcr);
        }
        IF_V2 => {
            write_gich(GICH_VMCR, s.vmcr as u32);
            write_gich(GICH_APR, s.ap1r[0] as u32);
            for (i, &lr) in s.lr.iter().enumerate().take(used) {
                write_gich(GICH_LR0 + 4 * i as u64, lr as u32);
            }
            write_gich(GICH_HCR, s.hcr as u32);
        }
        _ => {}
    }
}

/// Saves the guest's virtual CPU interface and turns it off, so that its
/// maintenance interrupt cannot fire while the host runs (exit).
pub fn save(s: &mut VgicCpuState) {
    let used = (s.used_lrs as usize).min(nr_lrs() as usize);
    match INTERFACE.load(Ordering::Relaxed) {
        IF_V3 => {
            s.vmcr = ICH_VMCR_EL2.get();
            s.misr = ICH_MISR_EL2.get();
            s.elrsr = read_elrsr_v3();
            s.ap0r[0] = ICH_AP0R0_EL2.get();
            s.ap1r[0] = ICH_AP1R0_EL2.get();
            for (i, lr) in s.lr.iter_mut().enumerate().take(used) {
                *lr = read_lr_v3(i);
                write_lr_v3(i, 0);
            }
            ICH_HCR_EL2.set(0);
        }
        IF_V2 => {
            s.vmcr = u64::from(read_gich(GICH_VMCR));
            s.misr = u64::from(read_gich(GICH_MISR));
            s.elrsr = u64::from(read_gich(GICH_ELRSR0));
            s.ap1r[0] = u64::from(read_gich(GICH_APR));
            for (i, lr) in s.lr.iter_mut().enumerate().take(used) {
                let at = GICH_LR0 + 4 * i as u64;
                *lr = u64::from(read_gich(at));
                write_gich(at, 0);
            }
            write_gich(GICH_HCR, 0);
        }
        _ => {}
    }
}

fn read_gich(offset: u64) -> u32 {
    let base = GICH.load(Ordering::Relaxed);
    // SAFETY: `base` is the device tree's GICH frame, which el2's identity map
    // covers as device memory; offsets are the architected registers.
    unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
}

fn write_gich(offset: u64, value: u32) {
    let base = GICH.load(Ordering::Relaxed);
    // SAFETY: as for `read_gich`; GICH is el2's alone.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u32, value) }
}

fn read_gicc(offset: u64) -> u32 {
    let base = GICC.load(Ordering::Relaxed);
    // SAFETY: `base` is the device tree's GICC frame (el2's identity map
    // covers it as device memory), banked per CPU; only the acknowledge
    // registers are read, for an interrupt el2 then finishes or hands over.
    unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
}

fn write_gicc(offset: u64, value: u32) {
    let base = GICC.load(Ordering::Relaxed);
    // SAFETY: as for `read_gicc`; the EOI of an interrupt this CPU just
    // acknowledged.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u32, value) }
}

fn read_hppir1() -> u64 {
    let v: u64;
    // SAFETY: reading ICC_HPPIR1_EL1 has no side effects. Only on GICv3.
    unsafe { core::arch::asm!("mrs {}, s3_0_c12_c12_2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_iar1() -> u64 {
    let v: u64;
    // SAFETY: acknowledging an interrupt changes only the GIC's state; the
    // caller finishes it or hands it to the host (`HwIrq::Acked`).
    unsafe { core::arch::asm!("mrs {}, s3_0_c12_c12_0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn write_eoir1(iar: u64) {
    // SAFETY: the priority drop of the interrupt just acknowledged; with
    // the host's EOImode 1 it stays active.
    unsafe { core::arch::asm!("msr s3_0_c12_c12_1, {}", in(reg) iar, options(nomem, nostack, preserves_flags)) };
}

fn write_dir(iar: u64) {
    // SAFETY: deactivates the interrupt just acknowledged and ended (el2's
    // own SGI); ICC_DIR_EL1 has no other effect.
    unsafe { core::arch::asm!("msr s3_0_c12_c11_1, {}", in(reg) iar, options(nomem, nostack, preserves_flags)) };
}

fn read_elrsr_v3() -> u64 {
    let v: u64;
    // SAFETY: reading ICH_ELRSR_EL2 has no side effects; aarch64-cpu has no
    // accessor for it. Only called when the CPU has the GICv3 interface.
    unsafe { core::arch::asm!("mrs {}, s3_4_c12_c11_5", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

macro_rules! lr_regs {
    ($m:ident, $i:expr, $v:expr) => {
        match $i {
            0 => $m!(ICH_LR0_EL2, $v),
            1 => $m!(ICH_LR1_EL2, $v),
            2 => $m!(ICH_LR2_EL2, $v),
            3 => $m!(ICH_LR3_EL2, $v),
            4 => $m!(ICH_LR4_EL2, $v),
            5 => $m!(ICH_LR5_EL2, $v),
            6 => $m!(ICH_LR6_EL2, $v),
            7 => $m!(ICH_LR7_EL2, $v),
            8 => $m!(ICH_LR8_EL2, $v),
            9 => $m!(ICH_LR9_EL2, $v),
            10 => $m!(ICH_LR10_EL2, $v),
            11 => $m!(ICH_LR11_EL2, $v),
            12 => $m!(ICH_LR12_EL2, $v),
            13 => $m!(ICH_LR13_EL2, $v),
            14 => $m!(ICH_LR14_EL2, $v),
            15 => $m!(ICH_LR15_EL2, $v),
            _ => $m!(NONE, $v),
        }
    };
}

fn read_lr_v3(i: usize) -> u64 {
    macro_rules! rd {
        (NONE, $v:expr) => {
            0
        };
        ($r:ident, $v:expr) => {
            $r.get()
        };
    }
    lr_regs!(rd, i, ())
}

fn write_lr_v3(i: usize, value: u64) {
    macro_rules! wr {
        (NONE, $v:expr) => {{
            let _ = $v;
        }};
        ($r:ident, $v:expr) => {
            $r.set($v)
        };
    }
    lr_regs!(wr, i, value)
}
