//! PSCI and SMCCC calls through the conduit the device tree's psci node names
//! (`hvc` under a hypervisor, `smc` on bare firmware).

use core::sync::atomic::{AtomicBool, Ordering};

use ferrovisor_shared::dt::PsciMethod;
use smccc::psci::{self, error::Error, AffinityState, LowestAffinityLevel, Version};
use smccc::{Call, Hvc, Smc};

static USE_SMC: AtomicBool = AtomicBool::new(false);

/// `SMCCC_VERSION`, function id of the Arm Architecture Service.
pub const SMCCC_VERSION: u32 = 0x8000_0000;

pub(crate) fn set_method(method: PsciMethod) {
    USE_SMC.store(method == PsciMethod::Smc, Ordering::SeqCst);
}

pub fn method() -> PsciMethod {
    if USE_SMC.load(Ordering::Relaxed) {
        PsciMethod::Smc
    } else {
        PsciMethod::Hvc
    }
}

macro_rules! conduit {
    ($func:ident($($arg:expr),*)) => {
        match method() {
            PsciMethod::Smc => psci::$func::<Smc>($($arg),*),
            PsciMethod::Hvc => psci::$func::<Hvc>($($arg),*),
        }
    };
}

pub fn version() -> Result<Version, Error> {
    conduit!(version())
}

/// `PSCI_FEATURES`: 0 or feature flags for an implemented function.
pub fn features(function: u32) -> Result<u32, Error> {
    conduit!(psci_features(function))
}

/// `CPU_ON` (64-bit).
pub fn cpu_on(mpidr: u64, entry: u64, context_id: u64) -> Result<(), Error> {
    conduit!(cpu_on(mpidr, entry, context_id))
}

/// `CPU_OFF`: returns only on failure.
pub fn cpu_off() -> Result<(), Error> {
    conduit!(cpu_off())
}

/// `AFFINITY_INFO` (64-bit) of one CPU.
pub fn affinity_info(mpidr: u64) -> Result<AffinityState, Error> {
    conduit!(affinity_info(mpidr, LowestAffinityLevel::All))
}

pub fn system_off() -> Result<(), Error> {
    conduit!(system_off())
}

/// A raw SMCCC 64-bit call through the PSCI conduit: x0..x17 as returned.
/// PSCI `SYSTEM_RESET`: returns only if the call failed.
pub fn system_reset() -> Result<(), Error> {
    conduit!(system_reset())
}

pub fn call(function: u32, args: &[u64]) -> [u64; 18] {
    let mut regs = [0u64; 17];
    for (r, a) in regs.iter_mut().zip(args) {
        *r = *a;
    }
    match method() {
        PsciMethod::Smc => Smc::call64(function, regs),
        PsciMethod::Hvc => Hvc::call64(function, regs),
    }
}

/// A return value's low 32 bits as SMCCC's signed W0 (where 32-bit
/// functions and the Unknown Function Identifier, -1, are returned).
pub fn w0(x0: u64) -> i32 {
    x0 as u32 as i32
}
