//! The host→el2 call ABI: SMC Calling Convention, `hvc #0`, function id in
//! `w0`, arguments in `x1..x7`, results in `x0..x3`.
//!
//! Ferrovisor's own calls live in the SMCCC vendor-specific hypervisor service
//! range (owner 6, fast, SMC64). PSCI calls (owner 4) from the host are handled
//! by el2 too, whether made with `hvc` or with a trapped `smc`.

/// SMCCC: the function id is unknown.
pub const SMCCC_NOT_SUPPORTED: i64 = -1;

const fn vendor_hyp(n: u32) -> u32 {
    0xc600_0000 | n
}

/// Returns `FERROVISOR_ABI_VERSION` in x0.
pub const HC_ABI_VERSION: u32 = vendor_hyp(0);
/// Writes a string to el2's console (x1 = physical address, x2 = length).
/// Used before the host has its own console; returns 0.
pub const HC_CONSOLE_WRITE: u32 = vendor_hyp(1);

/// Runs a vCPU until an exit el2 cannot finish itself. x1 = physical
/// address of a [`crate::vcpu::VcpuContext`] (16-byte aligned, in RAM).
/// Returns a [`crate::vcpu::ExitReason`] in x0, or a negative
/// `RUN_ERROR_*`. Must be called with IRQs masked: an IRQ that arrives while
/// the guest runs ends the call with `ExitReason::Irq`, and the host takes it
/// when it unmasks.
pub const HC_VCPU_RUN: u32 = vendor_hyp(2);
/// Invalidates every stage-1 and stage-2 TLB entry of VMID x1, on all CPUs.
pub const HC_TLB_FLUSH_VMID: u32 = vendor_hyp(3);
/// Invalidates the stage-2 entries for IPAs `x2..x2+x3` of VMID x1 (and the
/// VMID's combined stage-1 entries), on all CPUs.
pub const HC_TLB_FLUSH_IPA: u32 = vendor_hyp(4);
/// Invalidates every guest TLB entry of every VMID (VMID roll-over).
pub const HC_TLB_FLUSH_ALL: u32 = vendor_hyp(5);

/// Returns the number of list registers of the GIC's virtual CPU interface
/// in x0 (0: none), which the host's vGIC fills at most.
pub const HC_VGIC_INFO: u32 = vendor_hyp(6);

/// Bumped when a call's meaning changes.
pub const FERROVISOR_ABI_VERSION: u64 = 3;

/// SMCCC architecture calls (owner 0).
pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
/// SMCCC 1.1, which both el2 and guests are told.
pub const SMCCC_VERSION_1_1: i64 = 0x1_0001;
/// PSCI 1.1, the version guests are told.
pub const PSCI_VERSION_1_1: i64 = 0x1_0001;

/// True for a PSCI function id (SMCCC owner "standard secure service", 0x00-0x1f).
pub fn is_psci(function: u32) -> bool {
    (function & 0xbfff_ffe0) == 0x8400_0000
}

/// PSCI functions guests are offered (and that `PSCI_FEATURES` reports).
/// el2 answers `VERSION`, `FEATURES`, `MIGRATE_INFO_TYPE` itself; the host
/// implements the rest.
pub const GUEST_PSCI_FUNCTIONS: [u32; 11] = [
    smccc::psci::PSCI_VERSION,
    smccc::psci::PSCI_FEATURES,
    smccc::psci::PSCI_MIGRATE_INFO_TYPE,
    smccc::psci::PSCI_CPU_ON_32,
    smccc::psci::PSCI_CPU_ON_64,
    smccc::psci::PSCI_CPU_OFF,
    smccc::psci::PSCI_AFFINITY_INFO_32,
    smccc::psci::PSCI_AFFINITY_INFO_64,
    smccc::psci::PSCI_SYSTEM_OFF,
    smccc::psci::PSCI_SYSTEM_RESET,
    SMCCC_VERSION,
];

/// `PSCI_FEATURES(function)` for a guest: 0 if offered, else NOT_SUPPORTED.
pub fn guest_psci_features(function: u32) -> i64 {
    if GUEST_PSCI_FUNCTIONS.contains(&function) {
        0
    } else {
        SMCCC_NOT_SUPPORTED
    }
}

/// True for an SMCCC architecture-service call (owner 0).
pub fn is_smccc_arch(function: u32) -> bool {
    (function & 0xbf00_0000) == 0x8000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_function_ids() {
        assert!(is_psci(smccc::psci::PSCI_CPU_ON_64));
        assert!(is_psci(smccc::psci::PSCI_VERSION));
        assert!(is_psci(smccc::psci::PSCI_SYSTEM_OFF));
        assert!(!is_psci(HC_ABI_VERSION));
        assert!(!is_psci(0x8000_0000)); // SMCCC_VERSION (arch service)
        assert!(!is_psci(0x8400_0020));
    }
}
