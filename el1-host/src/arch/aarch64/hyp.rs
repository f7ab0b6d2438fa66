//! Calls to el2 (`hvc #0`, SMC Calling Convention, function id in w0).
//!
//! el2 returns with every register but x0 as it was, so the call clobbers
//! nothing else: that keeps the run loop's round trip short.

use core::arch::asm;
use ferrovisor_shared::hypercall::{HC_TLB_FLUSH_ALL, HC_TLB_FLUSH_IPA, HC_TLB_FLUSH_VMID, HC_VCPU_RUN, HC_VGIC_INFO};
use ferrovisor_shared::vcpu::{ExitReason, VcpuContext};

fn hvc(function: u32, x1: u64, x2: u64, x3: u64) -> i64 {
    let mut x0 = function as u64;
    // SAFETY: el2 implements these calls; it preserves x1-x30 and sp and
    // changes no memory other than what the call's arguments name.
    unsafe { asm!("hvc #0", inout("x0") x0, in("x1") x1, in("x2") x2, in("x3") x3, options(nostack)) };
    x0 as i64
}

/// Runs a vCPU in the guest until an exit el2 hands back.
///
/// # Errors
/// el2's negative `RUN_ERROR_*` when it refuses the context.
///
/// # Safety
/// IRQs must be masked; `ctx` must not be touched by anyone else during the
/// call (el2 reads and writes it through its physical address, which is its
/// virtual one in the host's identity map), and its stage-2 root must be a
/// live table of the VM.
pub unsafe fn vcpu_run(ctx: &mut VcpuContext) -> Result<ExitReason, i64> {
    let r = hvc(HC_VCPU_RUN, ctx as *mut VcpuContext as u64, 0, 0);
    ExitReason::from_u64(r as u64).ok_or(r)
}

/// Invalidates every TLB entry of `vmid` on every CPU.
pub fn tlb_flush_vmid(vmid: u16) {
    hvc(HC_TLB_FLUSH_VMID, vmid.into(), 0, 0);
}

/// Invalidates the stage-2 entries for `[ipa, ipa + size)` of `vmid`.
pub fn tlb_flush_ipa(vmid: u16, ipa: u64, size: u64) {
    hvc(HC_TLB_FLUSH_IPA, vmid.into(), ipa, size);
}

/// Invalidates every guest TLB entry (VMID roll-over).
pub fn tlb_flush_all() {
    hvc(HC_TLB_FLUSH_ALL, 0, 0, 0);
}

/// The number of GIC list registers el2 loads (0: no virtual CPU interface).
pub fn vgic_list_regs() -> usize {
    hvc(HC_VGIC_INFO, 0, 0, 0).clamp(0, ferrovisor_shared::vcpu::MAX_LIST_REGS as i64) as usize
}
