//! el2's Rust entry points and the state they share: the CPU table, the
//! hand-over to the host and the RAM map, written at boot. What each entry
//! does is in its own module: boot and CPU bring-up in [`boot`], the host's
//! calls (the `HC_*` and PSCI dispatch) in [`hostcall`], what depends on the
//! board in [`quirks`].

mod boot;
mod hostcall;
mod quirks;

use crate::arch;
use crate::console;
use crate::cpus::CpuTable;
use aarch64_cpu::registers::{Readable, Writeable, ELR_EL2, ESR_EL2, FAR_EL2, MPIDR_EL1, SPSR_EL2};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};
use ferrovisor_shared::boot::*;
use ferrovisor_shared::esr::{Esr, ExceptionClass};
use ferrovisor_shared::trap::{ExceptionReport, GeneralRegs};

/// Every CPU's power state. The secondary entry code reads its MPIDR table
/// (the first field) with the MMU off.
#[unsafe(no_mangle)]
pub static CPUS: CpuTable = CpuTable::new();

/// Written by the boot CPU before any other CPU or the host runs, read-only after.
struct BootCell<T>(UnsafeCell<T>);
// SAFETY: see the type's comment: one writer, before there are readers.
unsafe impl<T> Sync for BootCell<T> {}

static BOOT_INFO: BootCell<BootInfo> = BootCell(UnsafeCell::new(BootInfo {
    magic: 0,
    entered_el: 0,
    firmware: FirmwareKind::PsciSmc,
    image_start: 0,
    image_end: 0,
    el2_start: 0,
    el2_end: 0,
    dtb: 0,
    boot_cpu: 0,
    cpu_count: 0,
    cpus: [CpuBootInfo::ABSENT; MAX_CPUS],
    cpus_ignored: 0,
    _reserved: 0,
}));

const MAX_RAM: usize = 8;
static RAM: BootCell<[(u64, u64); MAX_RAM]> = BootCell(UnsafeCell::new([(0, 0); MAX_RAM]));
static FIRMWARE: AtomicU32 = AtomicU32::new(FirmwareKind::PsciSmc as u32);

fn firmware() -> FirmwareKind {
    if FIRMWARE.load(Ordering::Relaxed) == FirmwareKind::SpinTable as u32 {
        FirmwareKind::SpinTable
    } else {
        FirmwareKind::PsciSmc
    }
}

/// Whether `[addr, addr + len)` lies inside one RAM region.
pub fn in_ram(addr: u64, len: u64) -> bool {
    // SAFETY: RAM is written only before the host runs.
    let ram = unsafe { &*RAM.0.get() };
    let Some(end) = addr.checked_add(len) else { return false };
    ram.iter().any(|&(b, s)| s != 0 && addr >= b && end <= b + s)
}

fn current_cpu() -> Option<usize> {
    CPUS.index_of(MPIDR_EL1.get())
}

const VECTOR_NAMES: [&str; 16] = [
    "synchronous from EL2 with SP_EL0",
    "IRQ from EL2 with SP_EL0",
    "FIQ from EL2 with SP_EL0",
    "SError from EL2 with SP_EL0",
    "synchronous from EL2 with SP_EL2",
    "IRQ from EL2 with SP_EL2",
    "FIQ from EL2 with SP_EL2",
    "SError from EL2 with SP_EL2",
    "synchronous from a lower EL (AArch64)",
    "IRQ from a lower EL (AArch64)",
    "FIQ from a lower EL (AArch64)",
    "SError from a lower EL (AArch64)",
    "synchronous from a lower EL (AArch32)",
    "IRQ from a lower EL (AArch32)",
    "FIQ from a lower EL (AArch32)",
    "SError from a lower EL (AArch32)",
];

/// From the vectors: `kind` is the vector number (0..16), `regs` the saved
/// registers, which are restored (with any change made here) on return.
#[unsafe(no_mangle)]
extern "C" fn el2_trap(kind: u64, regs: &mut GeneralRegs) {
    if kind == 8 {
        let esr = Esr(ESR_EL2.get());
        match esr.class() {
            ExceptionClass::Hvc64 => return hostcall::hypercall(regs),
            ExceptionClass::Smc64 => {
                // A trapped SMC returns to itself; step over it.
                ELR_EL2.set(ELR_EL2.get() + 4);
                return hostcall::hypercall(regs);
            }
            _ => {}
        }
    }
    let report = ExceptionReport {
        kind: VECTOR_NAMES[kind as usize & 15],
        el: "EL2",
        esr: ESR_EL2.get(),
        far: FAR_EL2.get(),
        elr: ELR_EL2.get(),
        spsr: SPSR_EL2.get(),
        regs,
    };
    console::print_forced(format_args!("el2: {report}el2: CPU {:?} halted\n", current_cpu()));
    arch::halt()
}

#[panic_handler]
fn panic(panic: &core::panic::PanicInfo) -> ! {
    console::print_forced(format_args!("el2: panic on CPU {:?}: {panic}\n", current_cpu()));
    arch::halt()
}
