//! The host's calls: the `HC_*` hypercalls and PSCI, by `hvc` or a trapped
//! `smc` from the host.

use super::{boot::park, current_cpu, firmware, in_ram, quirks, CPUS};
use crate::arch::{self, boot};
use crate::cpus::{PowerState, Wake};
use crate::psci::{self, Outcome};
use crate::{println, world};
use ferrovisor_shared::boot::FirmwareKind;
use ferrovisor_shared::hypercall::{self as hc, is_psci};
use ferrovisor_shared::trap::GeneralRegs;
use ferrovisor_shared::vcpu::VcpuContext;
use smccc::psci::error as psci_err;
use smccc::Smc;

fn entry_in_ram(addr: u64) -> bool {
    in_ram(addr, 1)
}

/// `HC_VCPU_RUN`'s context must be host RAM, aligned, and not el2's.
fn run_vcpu(ctx_pa: u64) -> i64 {
    let size = core::mem::size_of::<VcpuContext>() as u64;
    let el2 = boot::image_start()..boot::el2_end();
    if !ctx_pa.is_multiple_of(16) || !in_ram(ctx_pa, size) || (ctx_pa < el2.end && ctx_pa + size > el2.start) {
        return ferrovisor_shared::vcpu::RUN_ERROR_BAD_CONTEXT;
    }
    // SAFETY: checked above to be an aligned VcpuContext-sized piece of RAM
    // that el2 itself does not use; the host does not touch it during the call.
    let ctx = unsafe { &mut *(ctx_pa as *mut VcpuContext) };
    world::run(ctx)
}

pub(super) fn hypercall(regs: &mut GeneralRegs) {
    let function = regs.x[0] as u32;
    // The run call first: it is nearly every call, and in the match (where
    // the compiler folds a plain test back in) it sat behind a tree of
    // comparisons.
    if function == hc::HC_VCPU_RUN {
        regs.x[0] = run_vcpu(regs.x[1]) as u64;
        return;
    }
    other_hypercall(function, regs);
}

#[inline(never)]
fn other_hypercall(function: u32, regs: &mut GeneralRegs) {
    let result: i64 = match function {
        hc::HC_ABI_VERSION => hc::FERROVISOR_ABI_VERSION as i64,
        hc::HC_TLB_FLUSH_VMID => {
            world::flush_vmid(regs.x[1]);
            0
        }
        hc::HC_TLB_FLUSH_IPA => {
            world::flush_ipa(regs.x[1], regs.x[2], regs.x[3]);
            0
        }
        hc::HC_TLB_FLUSH_ALL => {
            world::flush_all();
            0
        }
        hc::HC_VGIC_INFO => crate::vgic::nr_lrs() as i64,
        hc::SMCCC_VERSION => hc::SMCCC_VERSION_1_1,
        f if is_psci(f) => host_psci(f, [regs.x[1], regs.x[2], regs.x[3]]),
        _ => hc::SMCCC_NOT_SUPPORTED,
    };
    regs.x[0] = result as u64;
}

fn host_psci(function: u32, args: [u64; 3]) -> i64 {
    match psci::decide(&CPUS, function, args, entry_in_ram) {
        Outcome::Return(v) => v,
        Outcome::StartCpu { index, wake: Wake::Parked } => {
            arch::send_event();
            let _ = index;
            0
        }
        Outcome::StartCpu { index, wake: Wake::Firmware } => {
            let entry = boot::el2_secondary_entry as *const () as u64;
            let mpidr = CPUS.mpidr(index);
            // A CPU that has just called CPU_OFF may not be off in firmware yet.
            for _ in 0..1000 {
                match smccc::psci::cpu_on::<Smc>(mpidr, entry, index as u64) {
                    Err(smccc::psci::Error::AlreadyOn) => core::hint::spin_loop(),
                    Ok(()) => return 0,
                    Err(e) => {
                        CPUS.unclaim(index);
                        return e.into();
                    }
                }
            }
            CPUS.unclaim(index);
            psci_err::INTERNAL_FAILURE.into()
        }
        Outcome::CpuOff => {
            let Some(index) = current_cpu() else { return psci_err::DENIED.into() };
            match firmware() {
                FirmwareKind::PsciSmc => {
                    CPUS.set(index, PowerState::Off);
                    let e = smccc::psci::cpu_off::<Smc>();
                    CPUS.set(index, PowerState::On);
                    e.map_or_else(i64::from, |()| 0)
                }
                FirmwareKind::SpinTable => {
                    CPUS.set(index, PowerState::Parked);
                    park(index)
                }
            }
        }
        Outcome::SystemOff => system_off(),
        Outcome::SystemReset => system_reset(),
    }
}

fn system_off() -> ! {
    if firmware() == FirmwareKind::PsciSmc {
        let _ = smccc::psci::system_off::<Smc>();
    } else if let Some(wdt) = quirks::watchdog() {
        // The Raspberry Pi firmware halts instead of booting when the reset
        // status names partition 63.
        wdt.reset(0x555);
    }
    println!("el2: system off: halting");
    arch::halt()
}

fn system_reset() -> ! {
    if firmware() == FirmwareKind::PsciSmc {
        let _ = smccc::psci::system_reset::<Smc>();
    } else if let Some(wdt) = quirks::watchdog() {
        wdt.reset(0);
    }
    println!("el2: system reset not available: halting");
    arch::halt()
}
