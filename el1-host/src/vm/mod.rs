//! Virtual machines: guest memory, images, device trees, and their lifetime.

#[cfg(target_os = "none")]
pub mod buildcheck;
pub mod bundle;
pub mod cmo;
pub mod config;
pub mod fdt;
pub mod guest_map;
#[cfg(target_os = "none")]
pub mod instance;
pub mod lifecycle;
pub mod list;
pub mod loader;
pub mod outcome;
#[cfg(target_os = "none")]
pub mod ram;
pub mod ratelimit;
#[cfg(target_os = "none")]
pub mod registry;
pub mod stats;
pub mod vmid;
