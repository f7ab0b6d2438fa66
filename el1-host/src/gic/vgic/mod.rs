//! The virtual GIC (DESIGN §3): distributor, redistributors and list
//! registers for one VM. Being written.
