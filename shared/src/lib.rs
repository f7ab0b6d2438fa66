//! What Ferrovisor's two halves agree on: the boot hand-over from el2 to the
//! host, the hypercall ABI, exception syndrome decoding, the register dump both
//! sides print, the device-tree view of the board, and the console drivers.
//!
//! Nothing here touches a system register, so all of it builds and is tested
//! on the development host.
#![cfg_attr(not(test), no_std)]

pub mod asm;
pub mod boot;
pub mod console;
pub mod cpio;
pub mod dt;
pub mod esr;
#[cfg(test)]
mod fuzz;
pub mod gic;
pub mod hypercall;
pub mod image;
pub mod its;
pub mod paging;
pub mod sgi;
pub mod trap;
pub mod uart;
pub mod vcpu;
