//! The guest bundle: the files guests are made from (kernels, initrds, the
//! `default.vms` manifest), packed as a cpio archive in the "newc" format and
//! handed to the host as its initrd (QEMU's `-initrd`, the Pi firmware's
//! `initramfs`). The archive is read by [`ferrovisor_shared::cpio`], which
//! xtask writes bundles with.

pub use ferrovisor_shared::cpio::{Archive as Bundle, Error as BundleError};
