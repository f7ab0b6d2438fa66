//! The GIC: the physical one the host drives (`phys`, bare metal only) and
//! the virtual one each VM sees (`vgic`, plain logic tested on the dev host).

pub mod its;
pub mod vgic;
pub mod vlpi;

#[cfg(target_os = "none")]
mod phys;
#[cfg(target_os = "none")]
pub use phys::*;
