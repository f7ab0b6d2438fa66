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

/// Bumped when a call's meaning changes.
pub const FERROVISOR_ABI_VERSION: u64 = 1;

/// True for a PSCI function id (SMCCC owner "standard secure service", 0x00-0x1f).
pub fn is_psci(function: u32) -> bool {
    (function & 0xbfff_ffe0) == 0x8400_0000
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
