//! LPIs through the physical ITS: the host's own (a self-test LPI, and the
//! vPEs' doorbells) and, on a GICv4.0, guests' LPIs injected directly as
//! vLPIs (`map` holds the translation; `hw` the hardware side).

pub mod map;

#[cfg(target_os = "none")]
mod hw;
#[cfg(target_os = "none")]
pub use hw::*;
