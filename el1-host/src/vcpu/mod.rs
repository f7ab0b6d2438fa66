//! Virtual CPUs: the run loop, exit handling, PSCI for guests.

pub mod dispatch;
#[cfg(target_os = "none")]
pub mod exit;
pub mod inject;
#[cfg(target_os = "none")]
pub mod linked;
pub mod mmio;
#[cfg(target_os = "none")]
pub mod pmu;
pub mod psci;
#[cfg(target_os = "none")]
pub mod run;
#[cfg(target_os = "none")]
pub mod state;
pub mod sysreg;
#[cfg(target_os = "none")]
pub mod timers;
