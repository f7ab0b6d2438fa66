//! Ferrovisor's EL2 part (the "hyp").
//!
//! It owns the exception vectors at EL2, its own stage-1 page tables, the trap
//! configuration, CPU bring-up and the PSCI interface it offers the host.
//! It never allocates, never blocks and reads no host data structure but the
//! vCPU context it is handed (docs/split.md §2, §3).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// On the development host the binary exists only for its unit tests.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

mod cpus;
mod debug;
mod fastpath;
mod hostregs;
mod pmu;
mod psci;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
use ferrovisor_shared::println;
#[cfg(target_os = "none")]
mod hyp;
#[cfg(target_os = "none")]
mod vgic;
#[cfg(target_os = "none")]
mod world;

/// el2 is a bare-metal binary; on the development host only its unit tests run.
#[cfg(not(target_os = "none"))]
fn main() {}
