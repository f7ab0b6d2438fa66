//! Virtual CPUs: the run loop, exit handling, PSCI for guests.

pub mod inject;
pub mod mmio;
pub mod psci;
pub mod sysreg;
