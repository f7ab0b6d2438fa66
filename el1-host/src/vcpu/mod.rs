//! Virtual CPUs: the run loop, exit handling, PSCI for guests.

pub mod inject;
pub mod psci;
