//! The hand-over from el2 to the host.
//!
//! el2 enters the host's entry point at EL1h with the MMU and caches off and
//! all of DAIF masked. On the boot CPU: `x0` = physical address of the device
//! tree, `x1` = physical address of a [`BootInfo`], `x2` = 0. On a CPU the host
//! starts with PSCI `CPU_ON`: `x0` = the context id it passed (PSCI semantics).

use core::sync::atomic::AtomicU64;

/// The MMU register values a secondary CPU loads before it runs any Rust
/// code, published by the boot CPU and read with the MMU off (so cleaned to
/// the point of coherency). Offsets are used by both entry paths' assembly.
#[repr(C)]
pub struct SecondaryMmu {
    pub mair: AtomicU64,
    pub tcr: AtomicU64,
    pub ttbr: AtomicU64,
    pub sctlr: AtomicU64,
}

impl SecondaryMmu {
    pub const fn new() -> Self {
        Self { mair: AtomicU64::new(0), tcr: AtomicU64::new(0), ttbr: AtomicU64::new(0), sctlr: AtomicU64::new(0) }
    }
}

impl Default for SecondaryMmu {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(core::mem::offset_of!(SecondaryMmu, mair) == 0);
const _: () = assert!(core::mem::offset_of!(SecondaryMmu, tcr) == 8);
const _: () = assert!(core::mem::offset_of!(SecondaryMmu, ttbr) == 16);
const _: () = assert!(core::mem::offset_of!(SecondaryMmu, sctlr) == 24);

/// `BootInfo::magic`: "FVBOOTv1".
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"FVBOOTv1");

/// The most CPUs Ferrovisor manages; CPUs the device tree lists past this are
/// reported and left off.
pub const MAX_CPUS: usize = 8;

/// What el2 knows of one CPU when it hands over.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuState {
    /// No CPU in this slot.
    Absent = 0,
    /// el2 runs on it and it waits for the host's `CPU_ON`.
    Parked = 1,
    /// It runs the host (always true of the boot CPU at hand-over).
    On = 2,
    /// el2 could not start it; `CpuBootInfo::error` says why.
    Failed = 3,
}

/// One CPU as el2 found it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuBootInfo {
    /// `MPIDR_EL1` affinity bits (Aff3..Aff0) as the device tree's `reg` gives them.
    pub mpidr: u64,
    pub state: CpuState,
    /// For `Failed`: a PSCI error code or [`CPU_ERROR_TIMEOUT`].
    pub error: i32,
}

/// The CPU did not reach el2 within the bring-up timeout.
pub const CPU_ERROR_TIMEOUT: i32 = -1000;
/// The CPU has an enable-method el2 cannot use.
pub const CPU_ERROR_NO_METHOD: i32 = -1001;

impl CpuBootInfo {
    pub const ABSENT: Self = Self { mpidr: 0, state: CpuState::Absent, error: 0 };
}

/// How the board's firmware starts CPUs (and so how el2 relays the host's PSCI).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareKind {
    /// Firmware implements PSCI, called with `smc`; el2 relays to it.
    PsciSmc = 0,
    /// Secondary CPUs wait in a spin table; el2 emulates PSCI itself.
    SpinTable = 1,
}

/// Facts el2 hands to the host. Lives in el2's memory; the host only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub magic: u64,
    /// The exception level the image was entered at (2 when we got this far).
    pub entered_el: u32,
    pub firmware: FirmwareKind,
    /// Physical range of the whole image: el2, the host and both BSS. The host
    /// must never hand it out.
    pub image_start: u64,
    pub image_end: u64,
    /// el2's part of the image (code, data, stacks, page tables).
    pub el2_start: u64,
    pub el2_end: u64,
    /// The device tree el2 was given (also in `x0`).
    pub dtb: u64,
    /// Index into `cpus` of the CPU that booted.
    pub boot_cpu: u32,
    /// Number of used slots in `cpus`.
    pub cpu_count: u32,
    pub cpus: [CpuBootInfo; MAX_CPUS],
    /// CPUs the device tree lists beyond `MAX_CPUS`.
    pub cpus_ignored: u32,
    pub _reserved: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn boot_info_layout_is_stable() {
        assert_eq!(offset_of!(BootInfo, magic), 0);
        assert_eq!(offset_of!(BootInfo, image_start), 16);
        assert_eq!(offset_of!(BootInfo, dtb), 48);
        assert_eq!(offset_of!(BootInfo, cpus), 64);
        assert_eq!(size_of::<CpuBootInfo>(), 16);
        assert_eq!(size_of::<BootInfo>(), 64 + 16 * MAX_CPUS + 8);
    }
}
