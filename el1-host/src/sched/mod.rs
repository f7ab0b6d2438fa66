//! Which vCPU each CPU runs, and the work checked before entering a guest.

pub mod work;
