//! The host's aarch64 layer: entry points and vectors (assembly), its stage-1
//! identity map, the EL1 physical timer, and the few CPU primitives the rest
//! of the host uses.

pub mod boot;
pub mod cache;
pub mod cpu;
pub mod exception;
pub mod hyp;
pub mod mmu;
pub mod timer;
