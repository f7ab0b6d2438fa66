//! Virtual machines: guest memory, images, device trees, and their lifetime.

pub mod bundle;
pub mod cmo;
pub mod config;
pub mod fdt;
pub mod loader;
pub mod vmid;
