//! Architecture code; only aarch64 exists.

pub mod aarch64;
