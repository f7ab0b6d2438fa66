//! The world switch: run a vCPU for the host, finish the exits that need no
//! host in el2's shallow exception context, and hand the rest back.
//!
//! On `HC_VCPU_RUN` the host's EL1 state is saved in this CPU's [`El2Cpu`],
//! the guest's is loaded from its [`VcpuContext`] and el2 `eret`s into it
//! (`el2_guest_enter`, in `arch/boot.rs`). An exception from the guest lands in
//! the vectors, which store the guest's x0-x30 straight into the context and
//! return from `el2_guest_enter` with the vector number. The fast paths then
//! either re-enter at once (only the general registers, PC and PSTATE were
//! touched) or the rest of the guest state is saved, the host's restored, and
//! the run call returns the exit. Nothing here locks, allocates or blocks.

use crate::arch::boot;
use crate::fastpath::{self, IdReg};
use crate::vgic::HwIrq;
use crate::{debug, pmu};
use aarch64_cpu::registers::*;
use core::arch::asm;
use core::sync::atomic::Ordering;
use ferrovisor_shared::boot::MAX_CPUS;
use ferrovisor_shared::esr::{Esr, ExceptionClass, SysReg};
use ferrovisor_shared::sgi::{self, SgiMailbox, SgiTable, SGI_TABLE_VCPUS};
use ferrovisor_shared::vcpu::*;

/// What el2 keeps per CPU. `TPIDR_EL2` points at this CPU's; the vectors and
/// `el2_guest_enter` use the first two fields.
#[repr(C)]
pub struct El2Cpu {
    /// The guest context being run, or 0 while the host runs.
    guest: u64,
    /// el2's stack pointer inside `el2_guest_enter`, to return to on an exit.
    host_sp: u64,
    host_el1: El1SysRegs,
    host_sp_el0: u64,
    host_elr: u64,
    host_spsr: u64,
    host_hcr: u64,
    host_mdcr: u64,
    host_cnthctl: u64,
    host_vmpidr: u64,
    vtcr: u64,
    pauth: bool,
    /// `ID_AA64DFR0_EL1.PMUVer` and the event counters the guests get (the
    /// host's `MDCR_EL2.HPMN`: all of them).
    pmuver: u64,
    pmu_counters: usize,
    /// Breakpoints and watchpoints (`debug::points`).
    debug_points: (usize, usize),
    /// The `ICC_SGI1R_EL1` routing bits that reach this CPU (`sgi::route_of`).
    sgi_route: u64,
    /// For the run in progress: the VM's SGI table, checked (0: none).
    sgi_table: u64,
    /// The last SGI table `checked_sgi_table` found in RAM.
    sgi_checked: u64,
    /// Whether `host_el1` holds the host's boot-constant registers
    /// (`save_host_el1`): set by the first run on this CPU since `init_cpu`.
    host_consts_saved: bool,
}

pub const EL2CPU_GUEST: usize = core::mem::offset_of!(El2Cpu, guest);
pub const EL2CPU_HOST_SP: usize = core::mem::offset_of!(El2Cpu, host_sp);
const _: () = assert!(EL2CPU_GUEST == 0 && EL2CPU_HOST_SP == 8);

struct PerCpu([core::cell::UnsafeCell<El2Cpu>; MAX_CPUS]);
// SAFETY: each CPU touches only its own entry (found through TPIDR_EL2).
unsafe impl Sync for PerCpu {}

const EL2CPU_INIT: El2Cpu = El2Cpu {
    guest: 0,
    host_sp: 0,
    host_el1: El1SysRegs {
        sctlr: 0,
        actlr: 0,
        cpacr: 0,
        ttbr0: 0,
        ttbr1: 0,
        tcr: 0,
        mair: 0,
        amair: 0,
        vbar: 0,
        contextidr: 0,
        tpidr_el1: 0,
        tpidr_el0: 0,
        tpidrro_el0: 0,
        sp_el1: 0,
        elr_el1: 0,
        spsr_el1: 0,
        esr_el1: 0,
        far_el1: 0,
        afsr0: 0,
        afsr1: 0,
        par: 0,
        cntkctl: 0,
        csselr: 0,
        mdscr: 0,
    },
    host_sp_el0: 0,
    host_elr: 0,
    host_spsr: 0,
    host_hcr: 0,
    host_mdcr: 0,
    host_cnthctl: 0,
    host_vmpidr: 0,
    vtcr: 0,
    pauth: false,
    pmuver: 0,
    pmu_counters: 0,
    debug_points: (0, 0),
    sgi_route: 0,
    sgi_table: 0,
    sgi_checked: 0,
    host_consts_saved: false,
};

static EL2_CPUS: PerCpu = PerCpu([const { core::cell::UnsafeCell::new(EL2CPU_INIT) }; MAX_CPUS]);

unsafe extern "C" {
    /// Loads x0-x30 from `ctx` and enters the guest (`ELR_EL2`/`SPSR_EL2`
    /// already set); returns the vector number of the exception that ended it,
    /// with the guest's x0-x30 stored back in `ctx`.
    fn el2_guest_enter(ctx: *mut VcpuContext) -> u64;
    fn el2_fp_save(fp: *mut FpRegs);
    fn el2_fp_restore(fp: *const FpRegs);
}

/// Points `TPIDR_EL2` at CPU `index`'s [`El2Cpu`] and records the values the
/// host's EL2 configuration returns to after each run. Called after
/// `configure_for_host` on every CPU.
pub fn init_cpu(index: usize) {
    let cpu = EL2_CPUS.0[index % MAX_CPUS].get();
    // SAFETY: this CPU's own entry; nothing else runs on it yet.
    let c = unsafe { &mut *cpu };
    c.guest = 0;
    c.host_hcr = HCR_EL2.get();
    c.host_mdcr = MDCR_EL2.get();
    c.host_cnthctl = CNTHCTL_EL2.get();
    c.host_vmpidr = VMPIDR_EL2.get();
    c.vtcr = vtcr();
    c.pauth = has_pauth();
    c.pmuver = ID_AA64DFR0_EL1.read(ID_AA64DFR0_EL1::PMUVer);
    c.pmu_counters = (c.host_mdcr & pmu::MDCR_HPMN) as usize;
    c.debug_points = debug::points(ID_AA64DFR0_EL1.get());
    c.sgi_route = crate::vgic::this_cpu_route();
    // A CPU brought up again may come back with other host values.
    c.host_consts_saved = false;
    TPIDR_EL2.set(cpu as u64);
    crate::vgic::reset_cpu();
}

fn this_cpu() -> &'static mut El2Cpu {
    // SAFETY: TPIDR_EL2 was set by `init_cpu` to this CPU's entry, which only
    // this CPU uses, and only from el2 with exceptions masked.
    unsafe { &mut *(TPIDR_EL2.get() as *mut El2Cpu) }
}

fn has_pauth() -> bool {
    ID_AA64ISAR1_EL1.read(ID_AA64ISAR1_EL1::APA) != 0
        || ID_AA64ISAR1_EL1.read(ID_AA64ISAR1_EL1::API) != 0
        || ID_AA64ISAR1_EL1.read(ID_AA64ISAR1_EL1::GPA) != 0
        || ID_AA64ISAR1_EL1.read(ID_AA64ISAR1_EL1::GPI) != 0
        || (crate::arch::regs::id_aa64isar2() >> 12) & 0xf != 0
}

/// `VTCR_EL2` for a [`STAGE2_IPA_BITS`] IPA space walked from
/// [`STAGE2_ROOT_LEVEL`] with 4 KiB pages, inner-shareable write-back walks,
/// the output size this CPU has, and 16-bit VMIDs where the CPU has them.
fn vtcr() -> u64 {
    let parange = ID_AA64MMFR0_EL1.get() & 0xf;
    let ps = parange.min(5); // 48 bits is the most a 4 KiB granule without LPA2 takes.
    let vmid16 = (ID_AA64MMFR1_EL1.get() >> 4) & 0xf == 2;
    const RES1: u64 = 1 << 31;
    let t0sz = 64 - STAGE2_IPA_BITS as u64;
    let sl0 = match STAGE2_ROOT_LEVEL {
        0 => 2,
        1 => 1,
        _ => 0,
    };
    RES1 | t0sz | (sl0 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16) | ((vmid16 as u64) << 19)
}

const HCR_VM: u64 = 1 << 0;
const HCR_SWIO: u64 = 1 << 1;
const HCR_FMO: u64 = 1 << 3;
const HCR_IMO: u64 = 1 << 4;
const HCR_AMO: u64 = 1 << 5;
const HCR_FB: u64 = 1 << 9;
const HCR_BSU_IS: u64 = 1 << 10;
const HCR_TWI: u64 = 1 << 13;
const HCR_TWE: u64 = 1 << 14;
const HCR_TID3: u64 = 1 << 18;
const HCR_TSC: u64 = 1 << 19;
const HCR_TIDCP: u64 = 1 << 20;
const HCR_RW: u64 = 1 << 31;
const HCR_TLOR: u64 = 1 << 35;
const HCR_TERR: u64 = 1 << 36;
const HCR_APK: u64 = 1 << 40;
const HCR_API: u64 = 1 << 41;

/// `HCR_EL2` while a guest runs: stage 2 on, physical interrupts and SErrors
/// to el2, SMC, WFI (and WFE by policy), ID registers, IMPLEMENTATION DEFINED
/// registers, LORegions and RAS registers trapped; broadcast TLB and barrier
/// maintenance inner shareable.
fn guest_hcr(flags: u64, pauth: bool) -> u64 {
    let mut hcr = HCR_VM
        | HCR_SWIO
        | HCR_FMO
        | HCR_IMO
        | HCR_AMO
        | HCR_FB
        | HCR_BSU_IS
        | HCR_TWI
        | HCR_TID3
        | HCR_TSC
        | HCR_TIDCP
        | HCR_RW
        | HCR_TLOR
        | HCR_TERR;
    if flags & CONFIG_TRAP_WFE != 0 {
        hcr |= HCR_TWE;
    }
    if pauth {
        hcr |= HCR_API | HCR_APK;
    }
    hcr
}

/// `CNTHCTL_EL2` for guests: the physical counter readable, the EL1 physical
/// timer trapped (the host emulates it).
const CNTHCTL_GUEST: u64 = 1 << 0;

fn save_el1(r: &mut El1SysRegs) {
    save_el1_boot_constant(r);
    save_el1_per_run(r);
}

/// The registers `crate::hostregs` lists: the host writes them only while
/// it brings a CPU up.
#[inline(always)]
fn save_el1_boot_constant(r: &mut El1SysRegs) {
    r.sctlr = SCTLR_EL1.get();
    r.actlr = ACTLR_EL1.get();
    r.cpacr = CPACR_EL1.get();
    r.ttbr0 = TTBR0_EL1.get();
    r.ttbr1 = TTBR1_EL1.get();
    r.tcr = TCR_EL1.get();
    r.mair = MAIR_EL1.get();
    r.amair = AMAIR_EL1.get();
    r.vbar = VBAR_EL1.get();
    r.tpidr_el1 = TPIDR_EL1.get();
}

#[inline(always)]
fn save_el1_per_run(r: &mut El1SysRegs) {
    r.contextidr = CONTEXTIDR_EL1.get();
    r.tpidr_el0 = TPIDR_EL0.get();
    r.tpidrro_el0 = TPIDRRO_EL0.get();
    r.sp_el1 = SP_EL1.get();
    r.elr_el1 = ELR_EL1.get();
    r.spsr_el1 = SPSR_EL1.get();
    r.esr_el1 = ESR_EL1.get();
    r.far_el1 = FAR_EL1.get();
    r.afsr0 = AFSR0_EL1.get();
    r.afsr1 = AFSR1_EL1.get();
    r.par = PAR_EL1.get();
    r.cntkctl = CNTKCTL_EL1.get();
    r.csselr = CSSELR_EL1.get();
    r.mdscr = MDSCR_EL1.get();
}

/// The host's side of `save_el1`. The registers `crate::hostregs` lists
/// are written by the host only while it brings a CPU up, before its first
/// run, so they are read once per CPU (per `init_cpu`) rather than per
/// run; the rest at every run. `hostregs`'s test keeps the host to that,
/// and a debug build of el2 checks it at every run.
fn save_host_el1(cpu: &mut El2Cpu) {
    let r = &mut cpu.host_el1;
    if !cpu.host_consts_saved {
        save_el1(r);
        cpu.host_consts_saved = true;
        return;
    }
    #[cfg(debug_assertions)]
    {
        let mut now = *r;
        save_el1_boot_constant(&mut now);
        debug_assert!(now == *r, "the host changed a boot-constant EL1 register");
    }
    save_el1_per_run(r);
}

fn restore_el1(r: &El1SysRegs) {
    SCTLR_EL1.set(r.sctlr);
    ACTLR_EL1.set(r.actlr);
    CPACR_EL1.set(r.cpacr);
    TTBR0_EL1.set(r.ttbr0);
    TTBR1_EL1.set(r.ttbr1);
    TCR_EL1.set(r.tcr);
    MAIR_EL1.set(r.mair);
    AMAIR_EL1.set(r.amair);
    VBAR_EL1.set(r.vbar);
    CONTEXTIDR_EL1.set(r.contextidr);
    TPIDR_EL1.set(r.tpidr_el1);
    TPIDR_EL0.set(r.tpidr_el0);
    TPIDRRO_EL0.set(r.tpidrro_el0);
    SP_EL1.set(r.sp_el1);
    ELR_EL1.set(r.elr_el1);
    SPSR_EL1.set(r.spsr_el1);
    ESR_EL1.set(r.esr_el1);
    FAR_EL1.set(r.far_el1);
    AFSR0_EL1.set(r.afsr0);
    AFSR1_EL1.set(r.afsr1);
    PAR_EL1.set(r.par);
    CNTKCTL_EL1.set(r.cntkctl);
    CSSELR_EL1.set(r.csselr);
    MDSCR_EL1.set(r.mdscr);
}

/// The PAuth key registers by encoding (the assembler knows their names only
/// with the `pauth` feature, which this softfloat build does not enable).
macro_rules! pauth_keys {
    ($m:ident) => {
        $m!(apia, 0, "s3_0_c2_c1_0", "s3_0_c2_c1_1");
        $m!(apib, 0, "s3_0_c2_c1_2", "s3_0_c2_c1_3");
        $m!(apda, 0, "s3_0_c2_c2_0", "s3_0_c2_c2_1");
        $m!(apdb, 0, "s3_0_c2_c2_2", "s3_0_c2_c2_3");
        $m!(apga, 0, "s3_0_c2_c3_0", "s3_0_c2_c3_1");
    };
}

fn save_pauth(k: &mut PauthKeys) {
    macro_rules! save {
        ($f:ident, $_z:literal, $lo:literal, $hi:literal) => {
            // SAFETY: reading key registers has no side effects; only called
            // when the CPU has PAuth.
            unsafe {
                asm!(concat!("mrs {}, ", $lo), out(reg) k.$f[0], options(nomem, nostack, preserves_flags));
                asm!(concat!("mrs {}, ", $hi), out(reg) k.$f[1], options(nomem, nostack, preserves_flags));
            }
        };
    }
    pauth_keys!(save);
}

fn restore_pauth(k: &PauthKeys) {
    macro_rules! restore {
        ($f:ident, $_z:literal, $lo:literal, $hi:literal) => {
            // SAFETY: el2 does not use pointer authentication, so changing the
            // keys affects only the EL1 code that runs next (the guest).
            unsafe {
                asm!(concat!("msr ", $lo, ", {}"), in(reg) k.$f[0], options(nomem, nostack, preserves_flags));
                asm!(concat!("msr ", $hi, ", {}"), in(reg) k.$f[1], options(nomem, nostack, preserves_flags));
            }
        };
    }
    pauth_keys!(restore);
}

fn isb() {
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// `HC_VCPU_RUN`: `ctx` has been checked to lie in RAM, outside el2.
pub fn run(ctx: &mut VcpuContext) -> i64 {
    let root = ctx.config.stage2_root;
    if root == 0 || root & 0xfff != 0 || !crate::hyp::in_ram(root, 4096) {
        return RUN_ERROR_BAD_STAGE2;
    }
    let cpu = this_cpu();
    ctx.counters.runs += 1;

    // Host out.
    cpu.host_elr = ELR_EL2.get();
    cpu.host_spsr = SPSR_EL2.get();
    save_host_el1(cpu);
    cpu.host_sp_el0 = SP_EL0.get();

    // Guest in.
    restore_el1(&ctx.el1);
    SP_EL0.set(ctx.regs.sp_el0);
    // SAFETY: `ctx.fp` is a valid FpRegs; el2 and the host never use FP/SIMD,
    // so the registers hold nobody else's state.
    unsafe { el2_fp_restore(&ctx.fp) };
    if cpu.pauth {
        restore_pauth(&ctx.pauth);
    }
    CNTVOFF_EL2.set(ctx.timer.cntvoff);
    CNTV_CVAL_EL0.set(ctx.timer.cntv_cval);
    CNTV_CTL_EL0.set(ctx.timer.cntv_ctl);
    VMPIDR_EL2.set(ctx.config.mpidr);
    VTCR_EL2.set(cpu.vtcr);
    VTTBR_EL2.set(root | ((ctx.config.vmid & 0xffff) << 48));
    let pmu_on = pmu_active(cpu, ctx);
    let debug_on = ctx.debug.active != 0;
    MDCR_EL2.set(guest_mdcr(cpu, pmu_on, debug_on));
    if debug_on {
        debug::restore(&ctx.debug, cpu.debug_points);
    }
    CNTHCTL_EL2.set(CNTHCTL_GUEST);
    HCR_EL2.set(guest_hcr(ctx.config.flags, cpu.pauth));
    crate::vgic::restore(&ctx.vgic);
    cpu.sgi_table = checked_sgi_table(cpu, ctx);
    if cpu.sgi_table != 0 {
        let mb = mailbox(cpu.sgi_table, ctx.config.mpidr & 0xf);
        let posted = sgi::enter(&mb.pending, &mb.resident, cpu.sgi_route);
        if posted != 0 {
            crate::vgic::take_posted(&mut ctx.vgic, mb, posted);
        }
    }
    isb();
    // After the ISB, so that MDCR_EL2.HPMD already keeps el2 out of the
    // counts the guest's PMCR_EL0.E starts.
    if pmu_on {
        pmu::restore(&ctx.pmu, cpu.pmu_counters);
    }

    let reason = loop {
        ELR_EL2.set(ctx.regs.pc);
        SPSR_EL2.set(ctx.regs.pstate);
        cpu.guest = ctx as *mut VcpuContext as u64;
        // SAFETY: the guest's state is loaded and its stage 2 installed; the
        // assembly returns here on the guest's next exception.
        let vector = unsafe { el2_guest_enter(ctx) };
        let (elr, spsr, esr) = read_exit_syndrome();
        ctx.regs.pc = elr;
        ctx.regs.pstate = spsr;
        ctx.counters.exits += 1;
        let reason = match vector & 3 {
            0 => ExitReason::Sync,
            1 => ExitReason::Irq,
            2 => ExitReason::Fiq,
            _ => ExitReason::SError,
        };
        // FAR_EL2 and HPFAR_EL2 only where an abort may need them (`fast_path`).
        ctx.exit.reason = reason as u64;
        ctx.exit.esr = esr;
        if !fast_path(ctx, reason) {
            break reason;
        }
    };

    // Guest out.
    if pmu_active(cpu, ctx) {
        pmu::save(&mut ctx.pmu, cpu.pmu_counters);
    }
    if ctx.debug.active != 0 {
        debug::save(&mut ctx.debug, cpu.debug_points);
    }
    save_el1(&mut ctx.el1);
    ctx.regs.sp_el0 = SP_EL0.get();
    // SAFETY: as for the restore.
    unsafe { el2_fp_save(&mut ctx.fp) };
    if cpu.pauth {
        save_pauth(&mut ctx.pauth);
    }
    ctx.timer.cntv_ctl = CNTV_CTL_EL0.get();
    ctx.timer.cntv_cval = CNTV_CVAL_EL0.get();
    // The guest's timer must not interrupt the host.
    CNTV_CTL_EL0.set(0);
    if cpu.sgi_table != 0 {
        // Before the list registers go: from here on senders leave new SGIs
        // to the host.
        sgi::leave(&mailbox(cpu.sgi_table, ctx.config.mpidr & 0xf).resident);
        cpu.sgi_table = 0;
    }
    crate::vgic::save(&mut ctx.vgic);

    // Host in.
    HCR_EL2.set(cpu.host_hcr);
    VTTBR_EL2.set(0);
    MDCR_EL2.set(cpu.host_mdcr);
    CNTHCTL_EL2.set(cpu.host_cnthctl);
    CNTVOFF_EL2.set(0);
    VMPIDR_EL2.set(cpu.host_vmpidr);
    restore_el1(&cpu.host_el1);
    SP_EL0.set(cpu.host_sp_el0);
    ELR_EL2.set(cpu.host_elr);
    SPSR_EL2.set(cpu.host_spsr);
    isb();
    // `reason`, or what a fast path made of it (`ExitReason::Kick`).
    let _ = reason;
    ctx.exit.reason as i64
}

/// `MDCR_EL2` for a guest: the host's, the PMU's traps or switches, and
/// the debug registers trapped until the vCPU first touches one.
fn guest_mdcr(cpu: &El2Cpu, pmu_on: bool, debug_on: bool) -> u64 {
    let debug = if debug_on { 0 } else { debug::MDCR_TRAP_DEBUG };
    cpu.host_mdcr | pmu::guest_mdcr(cpu.pmuver, pmu_on) | debug
}

/// Whether `ctx`'s PMU state is the hardware's while it runs.
fn pmu_active(cpu: &El2Cpu, ctx: &VcpuContext) -> bool {
    ctx.pmu.active != 0 && guest_has_pmu(cpu, ctx)
}

fn guest_has_pmu(cpu: &El2Cpu, ctx: &VcpuContext) -> bool {
    ctx.config.flags & CONFIG_PMU != 0 && pmu::is_pmuv3(cpu.pmuver)
}

/// The first access of a guest to its PMU: its (reset) state is loaded, the
/// traps go, and the access runs again, now on the hardware. Once per vCPU
/// life, so out of the fast paths' line.
#[cold]
#[inline(never)]
fn activate_pmu(ctx: &mut VcpuContext) -> bool {
    let cpu = this_cpu();
    if !guest_has_pmu(cpu, ctx) || ctx.pmu.active != 0 {
        return false;
    }
    ctx.pmu.active = 1;
    MDCR_EL2.set(guest_mdcr(cpu, true, ctx.debug.active != 0));
    isb();
    pmu::restore(&ctx.pmu, cpu.pmu_counters);
    true
}

/// The first access of a guest to a debug register: its (reset) state is
/// loaded, the traps go, and the access runs again on the hardware. Once
/// per vCPU life.
#[cold]
#[inline(never)]
fn activate_debug(ctx: &mut VcpuContext) -> bool {
    let cpu = this_cpu();
    if ctx.debug.active != 0 {
        return false;
    }
    ctx.debug.active = 1;
    debug::restore(&ctx.debug, cpu.debug_points);
    MDCR_EL2.set(guest_mdcr(cpu, pmu_active(cpu, ctx), true));
    isb();
    true
}

/// A trapped system register access el2 finishes itself: ID registers
/// (read from a sanitised copy of the CPU's), and the first PMU access.
/// Out of line, so that the hypercall fast path stays short.
#[inline(never)]
fn fast_sysreg(ctx: &mut VcpuContext, esr: Esr) -> bool {
    let access = esr.sys_reg();
    if pmu::is_pmu_reg(access.reg) {
        return activate_pmu(ctx);
    }
    if debug::is_debug_reg(access.reg) {
        return activate_debug(ctx);
    }
    if !access.read && access.reg == ICC_SGI1R_EL1 {
        let value = if access.register < 31 { ctx.regs.x[access.register as usize] } else { 0 };
        return fast_sgi(ctx, value);
    }
    if !access.read || !fastpath::is_id_reg(access.reg) {
        return false;
    }
    let features =
        fastpath::GuestFeatures { gicv3: ctx.config.flags & CONFIG_GICV3 != 0, pmu: guest_has_pmu(this_cpu(), ctx) };
    let value = match IdReg::from_sys_reg(access.reg) {
        Some(r) => fastpath::sanitize_id_reg(r, read_id_reg(r), features),
        None => 0,
    };
    if access.register < 31 {
        ctx.regs.x[access.register as usize] = value;
    }
    ctx.regs.pc = ctx.regs.pc.wrapping_add(4);
    ctx.counters.fast_id_reg += 1;
    true
}

/// `ICC_SGI1R_EL1` (IHI 0069 §12.2.21).
const ICC_SGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 5);

/// The VM's SGI table if the host gave one and it is sound: in RAM,
/// aligned, and this vCPU in it (el2 trusts no address it did not check).
/// The last table found in RAM is remembered (`sgi_checked`): every run of
/// a VM's vCPUs names the same one.
#[inline(always)]
fn checked_sgi_table(cpu: &mut El2Cpu, ctx: &VcpuContext) -> u64 {
    let t = ctx.config.sgi_table;
    if t == 0 {
        return 0;
    }
    if t != cpu.sgi_checked {
        if !t.is_multiple_of(64) || !crate::hyp::in_ram(t, core::mem::size_of::<SgiTable>() as u64) {
            return 0;
        }
        cpu.sgi_checked = t;
    }
    // SAFETY: checked above to be a whole, aligned SgiTable in RAM; its
    // fields are atomics or read-only for el2 (`nr_vcpus`).
    let nr = unsafe { (*(t as *const SgiTable)).nr_vcpus };
    let me = ctx.config.mpidr & 0xff_ffff;
    if me >= nr.min(SGI_TABLE_VCPUS as u64) {
        return 0;
    }
    t
}

/// vCPU `index`'s mailbox in a table `checked_sgi_table` accepted.
fn mailbox(table: u64, index: u64) -> &'static SgiMailbox {
    // SAFETY: `table` passed `checked_sgi_table` for this run and the host
    // keeps it while the VM lives; `index` is below SGI_TABLE_VCPUS.
    unsafe { &(*(table as *const SgiTable)).vcpu[(index as usize) % SGI_TABLE_VCPUS] }
}

/// A trapped `ICC_SGI1R_EL1` write el2 delivers itself when every target is
/// a vCPU of the SGI table, in guest mode now, and can take the SGI
/// (docs/interrupts.md §5): posted in each mailbox, and the physical
/// `SGI_EL2_POST` sent to where each runs. A target that left guest mode
/// between the check and the post is the host's to kick (`ExitReason::Kick`).
#[inline(never)]
fn fast_sgi(ctx: &mut VcpuContext, value: u64) -> bool {
    let table = this_cpu().sgi_table;
    if table == 0 {
        return false;
    }
    // SAFETY: as in `mailbox`.
    let nr = unsafe { (*(table as *const SgiTable)).nr_vcpus };
    let Some((targets, intid)) = sgi::table_targets(value, nr) else { return false };
    post_all(ctx, table, targets, intid, 1 << intid) && ctx.exit.reason != ExitReason::Kick as u64
}

/// A GICv2 guest's `GICD_SGIR` write, delivered as `fast_sgi` delivers
/// `ICC_SGI1R_EL1`: each target's mailbox gets bit 8n + source.
#[inline(never)]
fn fast_sgir(ctx: &mut VcpuContext, esr: Esr) -> bool {
    let table = this_cpu().sgi_table;
    // SAFETY: as in `mailbox`.
    let t = unsafe { &*(table as *const SgiTable) };
    let sgir = t.sgir_ipa.load(Ordering::Relaxed);
    if sgir == 0 {
        return false;
    }
    let e = &ctx.exit;
    let Some((ipa, rt, 4)) = fastpath::plain_store(esr, e.hpfar, e.far, ctx.regs.pstate) else { return false };
    if ipa != sgir {
        return false;
    }
    let value = if rt < 31 { ctx.regs.x[rt as usize] as u32 } else { 0 };
    let me = (ctx.config.mpidr & 0xf) as u32;
    let Some((targets, intid)) = sgi::sgir_targets(value, me, t.nr_vcpus) else { return false };
    if !post_all(ctx, table, targets, intid, 1 << (8 * intid + me)) {
        return false;
    }
    ctx.regs.pstate &= !fastpath::PSTATE_BTYPE;
    ctx.exit.reason != ExitReason::Kick as u64
}

/// Posts `bit` for SGI `intid` to every vCPU in `targets` when all run in
/// guest mode and can take it, and steps past the instruction; false
/// (nothing done) otherwise. Targets that left meanwhile are in
/// `exit.kick`, with the exit's reason `Kick`.
#[inline(always)]
fn post_all(ctx: &mut VcpuContext, table: u64, targets: u16, intid: u32, bit: u64) -> bool {
    let mut rest = targets;
    while rest != 0 {
        let t = rest.trailing_zeros();
        rest &= rest - 1;
        let mb = mailbox(table, t.into());
        if mb.resident.load(Ordering::Relaxed) == 0 || !mb.can_take(intid) {
            return false;
        }
    }
    let mut kick = 0;
    let mut rest = targets;
    while rest != 0 {
        let t = rest.trailing_zeros();
        rest &= rest - 1;
        let mb = mailbox(table, t.into());
        match sgi::post(&mb.pending, &mb.resident, bit) {
            Some(route) => crate::vgic::send_post_sgi(route),
            None => kick |= 1 << t,
        }
    }
    ctx.regs.pc = ctx.regs.pc.wrapping_add(4);
    ctx.counters.fast_sgi += 1;
    if kick != 0 {
        ctx.exit.kick = kick;
        ctx.exit.reason = ExitReason::Kick as u64;
    }
    true
}

/// An SMCCC call el2 answers itself. Out of line although it is the
/// hypercall round trip: inlined, the constants its decisions compare with
/// are hoisted out of `run`'s loop and every other exit pays for them.
#[inline(never)]
fn fast_smccc(ctx: &mut VcpuContext, esr: Esr) -> bool {
    let Some(answer) = fastpath::smccc(esr.imm16(), ctx.regs.x[0] as u32, ctx.regs.x[1]) else {
        return false;
    };
    ctx.regs.x[0] = answer as u64;
    if esr.class() == ExceptionClass::Smc64 {
        // A trapped SMC returns to itself.
        ctx.regs.pc = ctx.regs.pc.wrapping_add(4);
    }
    ctx.counters.fast_smccc += 1;
    true
}

/// A plain load of a constant device register (`ctx.config.consts`): the
/// value lands in the register as the host's emulation would put it there
/// and the PC steps. Out of line: the inline test of the fault's page
/// against the table's range keeps other MMIO exits cheap.
#[inline(never)]
fn fast_mmio_const(ctx: &mut VcpuContext, esr: Esr) -> bool {
    let e = &ctx.exit;
    let Some((rt, value)) = fastpath::const_load(esr, e.hpfar, e.far, ctx.regs.pstate, &ctx.config.consts) else {
        return false;
    };
    if rt < 31 {
        ctx.regs.x[rt as usize] = value;
    }
    ctx.regs.pc = ctx.regs.pc.wrapping_add(4);
    ctx.regs.pstate &= !fastpath::PSTATE_BTYPE;
    ctx.counters.fast_mmio_const += 1;
    true
}

/// `FAR_EL2` and `HPFAR_EL2` into the exit: every synchronous exit but
/// the SMCCC and system-register ones (whose syndromes say all) records
/// them; for those and for interrupts the two fields are left as they were.
#[inline(always)]
fn read_fault_address(ctx: &mut VcpuContext) {
    let (far, hpfar): (u64, u64);
    // SAFETY: reading FAR_EL2 and HPFAR_EL2 has no side effects. One asm
    // block, so that the two stores that follow can pair.
    unsafe {
        asm!("mrs {}, far_el2", "mrs {}, hpfar_el2", out(reg) far, out(reg) hpfar, options(nomem, nostack, preserves_flags))
    };
    ctx.exit.far = far;
    ctx.exit.hpfar = hpfar;
}

/// `ELR_EL2`, `SPSR_EL2` and `ESR_EL2` at a guest exit, in one asm block
/// so that the stores into the context pair.
#[inline(always)]
fn read_exit_syndrome() -> (u64, u64, u64) {
    let (elr, spsr, esr): (u64, u64, u64);
    // SAFETY: reading these registers has no side effects.
    unsafe {
        asm!(
            "mrs {}, elr_el2",
            "mrs {}, spsr_el2",
            "mrs {}, esr_el2",
            out(reg) elr,
            out(reg) spsr,
            out(reg) esr,
            options(nomem, nostack, preserves_flags)
        )
    };
    (elr, spsr, esr)
}

/// Finishes an exit in el2 if it can; true means "re-enter the guest".
#[inline(always)]
fn fast_path(ctx: &mut VcpuContext, reason: ExitReason) -> bool {
    match reason {
        ExitReason::Irq | ExitReason::Fiq => {
            // The interrupt went away before we got here: nothing for the host.
            if read_isr_el1() & (0b11 << 6) == 0 {
                ctx.counters.fast_spurious += 1;
                return true;
            }
            if reason == ExitReason::Fiq {
                return false;
            }
            let table = this_cpu().sgi_table;
            let mb = (table != 0).then(|| mailbox(table, ctx.config.mpidr & 0xf));
            match crate::vgic::take_hw_irq(&mut ctx.vgic, mb) {
                HwIrq::Injected => {
                    ctx.counters.fast_vtimer += 1;
                    true
                }
                HwIrq::Posted => true,
                HwIrq::NotOurs => false,
                HwIrq::Acked(iar) => {
                    ctx.exit.acked = ACKED_VALID | iar;
                    false
                }
            }
        }
        ExitReason::SError | ExitReason::Kick => false,
        ExitReason::Sync => {
            let esr = Esr(ctx.exit.esr);
            match esr.class() {
                ExceptionClass::Hvc64 | ExceptionClass::Smc64 => fast_smccc(ctx, esr),
                ExceptionClass::SysRegTrap => fast_sysreg(ctx, esr),
                ExceptionClass::DataAbortLowerEl => {
                    read_fault_address(ctx);
                    if esr.is_write() {
                        return this_cpu().sgi_table != 0 && fast_sgir(ctx, esr);
                    }
                    // A store, or a page above every constant register's, is
                    // the host's (tested inline: these are the emulated
                    // devices' exits).
                    !esr.is_write() && ctx.config.consts.below_limit(ctx.exit.hpfar) && fast_mmio_const(ctx, esr)
                }
                _ => {
                    read_fault_address(ctx);
                    false
                }
            }
        }
    }
}

fn read_id_reg(r: IdReg) -> u64 {
    match r {
        IdReg::Pfr0 => ID_AA64PFR0_EL1.get(),
        IdReg::Pfr1 => ID_AA64PFR1_EL1.get(),
        IdReg::Dfr0 => ID_AA64DFR0_EL1.get(),
        IdReg::Isar0 => ID_AA64ISAR0_EL1.get(),
        IdReg::Isar1 => ID_AA64ISAR1_EL1.get(),
        IdReg::Isar2 => crate::arch::regs::id_aa64isar2(),
        IdReg::Mmfr0 => ID_AA64MMFR0_EL1.get(),
        IdReg::Mmfr1 => ID_AA64MMFR1_EL1.get(),
        IdReg::Mmfr2 => ID_AA64MMFR2_EL1.get(),
    }
}

fn read_isr_el1() -> u64 {
    let v: u64;
    // SAFETY: reading ISR_EL1 has no side effects; aarch64-cpu has no
    // accessor for it.
    unsafe { asm!("mrs {}, isr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn dsb_ish() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
}

fn dsb_ishst() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISHST);
}

/// Runs `f` with `VTTBR_EL2` naming `vmid` (TLB maintenance by VMID uses the
/// current one). Only called from the host's hypercalls, never while a guest
/// is loaded.
fn with_vmid(vmid: u64, f: impl FnOnce()) {
    let old = VTTBR_EL2.get();
    VTTBR_EL2.set((vmid & 0xffff) << 48);
    isb();
    f();
    VTTBR_EL2.set(old);
    isb();
}

/// `HC_TLB_FLUSH_VMID`.
pub fn flush_vmid(vmid: u64) {
    with_vmid(vmid, || {
        dsb_ishst();
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { asm!("tlbi vmalls12e1is", options(nostack, preserves_flags)) };
        dsb_ish();
    });
}

/// Flushing more pages than this one at a time costs more than flushing the
/// whole VMID.
const FLUSH_IPA_MAX_PAGES: u64 = 64;

/// `HC_TLB_FLUSH_IPA`.
pub fn flush_ipa(vmid: u64, ipa: u64, size: u64) {
    let pages = size.div_ceil(4096);
    if pages > FLUSH_IPA_MAX_PAGES || ipa.checked_add(size).is_none() {
        return flush_vmid(vmid);
    }
    with_vmid(vmid, || {
        dsb_ishst();
        for page in 0..pages {
            let arg = ((ipa >> 12) + page) & 0xf_ffff_ffff;
            // SAFETY: as above.
            unsafe { asm!("tlbi ipas2e1is, {}", in(reg) arg, options(nostack, preserves_flags)) };
        }
        dsb_ish();
        // Combined stage 1+2 entries may cache the old output address too.
        // SAFETY: as above.
        unsafe { asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
        dsb_ish();
    });
}

/// `HC_TLB_FLUSH_ALL`.
pub fn flush_all() {
    dsb_ishst();
    // SAFETY: as above.
    unsafe { asm!("tlbi alle1is", options(nostack, preserves_flags)) };
    dsb_ish();
    isb();
}

const _: () = assert!(boot::STACK_SIZE >= 8192);
