//! Boot: the boot CPU's entry (device tree, el2's page tables and traps, the
//! secondaries started, the hand-over to the host) and the secondaries' entry
//! and park loop.

use super::{quirks, BOOT_INFO, CPUS, FIRMWARE, RAM};
use crate::arch::{self, boot, cache, mmu, regs};
use crate::cpus::PowerState;
use crate::{console, println, world};
use aarch64_cpu::registers::{Readable, MPIDR_EL1};
use core::sync::atomic::Ordering;
use ferrovisor_shared::boot::*;
use ferrovisor_shared::dt::{Board, EnableMethod, PsciMethod};
use ferrovisor_shared::image::{PackageHeader, PACKAGE_HEADER_OFFSET, PACKAGE_HEADER_SIZE};
use smccc::psci::error as psci_err;
use smccc::Smc;

const BRING_UP_TIMEOUT_MS: u64 = 1000;

/// Boot CPU, from `el2_primary_entry`: MMU off, relocated, BSS clear.
#[unsafe(no_mangle)]
extern "C" fn el2_primary_main(dtb: usize, current_el: u64) -> ! {
    let board = unsafe {
        // SAFETY: the boot protocol puts the device tree's address in x0; a
        // bad address or blob is caught by the parser's header checks.
        Board::from_addr(dtb)
    };
    let console = board.as_ref().ok().and_then(|b| b.console()).unwrap_or_else(quirks::fallback_console);
    // SAFETY: the UART is at a physical address reachable with the MMU off, and
    // nothing else runs yet.
    unsafe { console::init(&console) };

    if current_el != 2 {
        println!(
            "ferrovisor: entered at EL{current_el}, not EL2: the hypervisor needs EL2 \
             (QEMU: -M virt,virtualization=on; Raspberry Pi 4: the firmware's default armstub enters at EL2)"
        );
        println!("ferrovisor: halted");
        if let Ok(b) = &board {
            if let Some(p) = b.psci() {
                // At EL1 the firmware's PSCI is ours to call; power off if it can.
                let _ = match p.method {
                    PsciMethod::Smc => smccc::psci::system_off::<Smc>(),
                    PsciMethod::Hvc => smccc::psci::system_off::<smccc::Hvc>(),
                };
            }
        }
        arch::halt();
    }

    let board = match board {
        Ok(b) => b,
        Err(e) => boot_failure(format_args!("bad device tree: {e}")),
    };
    if let Err(e) = boot_on_el2(dtb, &board) {
        boot_failure(format_args!("{e}"));
    }
    unreachable!()
}

fn boot_failure(what: core::fmt::Arguments) -> ! {
    println!("ferrovisor: {what}");
    println!("ferrovisor: halted");
    arch::halt();
}

fn boot_on_el2(dtb: usize, board: &Board) -> Result<(), BootError> {
    let memory = board.memory();
    // SAFETY: boot CPU only, before anything reads RAM.
    let ram = unsafe { &mut *RAM.0.get() };
    for (slot, region) in ram.iter_mut().zip(memory.iter()) {
        *slot = (region.base, region.size);
    }
    let image_start = boot::image_start();
    let el2_end = boot::el2_end();
    if !ram.iter().any(|&(b, s)| image_start >= b && el2_end <= b + s) {
        return Err(BootError::Msg("the image is not inside any /memory region of the device tree"));
    }

    // SAFETY: the image start was checked to be in RAM and the header is the
    // first 0x80 bytes of it.
    let header_bytes =
        unsafe { core::slice::from_raw_parts(image_start as *const u8, PACKAGE_HEADER_OFFSET + PACKAGE_HEADER_SIZE) };
    let package = PackageHeader::parse(header_bytes).map_err(BootError::Msg)?;

    // SAFETY: boot CPU, MMU off, and `ram` covers the image (checked above).
    unsafe { mmu::init(ram) }.map_err(|_| BootError::Msg("el2 page tables"))?;
    regs::set_vectors(boot::el2_vectors as *const () as u64);
    regs::configure_for_host();
    crate::vgic::init(board.gic());

    // CPUs.
    let cpus = board.cpus();
    let my_mpidr = MPIDR_EL1.get() & crate::cpus::MPIDR_AFFINITY_MASK;
    for (i, cpu) in cpus.iter().enumerate() {
        CPUS.add(i, cpu.mpidr);
    }
    let boot_cpu = CPUS.index_of(my_mpidr).ok_or(BootError::Msg("the boot CPU's MPIDR is not among /cpus"))?;
    CPUS.set(boot_cpu, PowerState::On);
    world::init_cpu(boot_cpu);
    let spin_table = cpus.iter().any(|c| matches!(c.enable_method, EnableMethod::SpinTable { .. }));
    let psci_smc = board.psci().is_some_and(|p| p.method == PsciMethod::Smc);
    let kind = if spin_table || !psci_smc { FirmwareKind::SpinTable } else { FirmwareKind::PsciSmc };
    FIRMWARE.store(kind as u32, Ordering::Relaxed);
    quirks::set_watchdog(board.watchdog());

    // Secondaries read these with the MMU off.
    cache::clean_object(&CPUS);
    cache::clean_object(&boot::SECONDARY_BOOT);

    // SAFETY: boot CPU only; no other CPU or the host runs yet.
    let info = unsafe { &mut *BOOT_INFO.0.get() };
    for (i, cpu) in cpus.iter().enumerate() {
        info.cpus[i] = CpuBootInfo { mpidr: cpu.mpidr, state: CpuState::On, error: 0 };
        if i == boot_cpu {
            continue;
        }
        match start_secondary(i, cpu.mpidr, cpu.enable_method, psci_smc) {
            Ok(()) => info.cpus[i].state = CpuState::Parked,
            Err(code) => {
                CPUS.set(i, PowerState::Failed);
                info.cpus[i].state = CpuState::Failed;
                info.cpus[i].error = code;
                println!("el2: CPU {i} (MPIDR {:#x}) did not start: {}", cpu.mpidr, start_error_name(code));
            }
        }
    }

    *info = BootInfo {
        magic: BOOT_INFO_MAGIC,
        entered_el: 2,
        firmware: kind,
        image_start,
        image_end: image_start + package.image_size(),
        el2_start: image_start,
        el2_end,
        dtb: dtb as u64,
        boot_cpu: boot_cpu as u32,
        cpu_count: cpus.len() as u32,
        cpus: info.cpus,
        cpus_ignored: board.cpus_ignored() as u32,
        _reserved: 0,
    };
    // The host reads it with its MMU off.
    cache::clean_object(info);

    let host_entry = image_start + package.host_offset + package.host_entry;
    // SAFETY: the packer put the host's entry here; el2's stack is reset for
    // the traps to come.
    unsafe {
        boot::el2_enter_host(host_entry, dtb as u64, info as *const BootInfo as u64, 0, boot::stack_top(boot_cpu))
    }
}

enum BootError {
    Msg(&'static str),
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Msg(m) => write!(f, "boot failed: {m}"),
        }
    }
}

fn start_error_name(code: i32) -> &'static str {
    match code {
        CPU_ERROR_TIMEOUT => "it did not reach el2 in time",
        CPU_ERROR_NO_METHOD => "no usable enable-method (needs PSCI through smc, or a spin table)",
        psci_err::ALREADY_ON => "firmware says it is already on",
        psci_err::INVALID_PARAMETERS => "firmware does not know its MPIDR",
        psci_err::INVALID_ADDRESS => "firmware rejected the entry address",
        _ => "firmware refused",
    }
}

fn start_secondary(index: usize, mpidr: u64, method: EnableMethod, psci_smc: bool) -> Result<(), i32> {
    let entry = boot::el2_secondary_entry as *const () as u64;
    match method {
        EnableMethod::Psci if psci_smc => {
            smccc::psci::cpu_on::<Smc>(mpidr, entry, index as u64).map_err(|e| i64::from(e) as i32)?;
        }
        EnableMethod::SpinTable { release_addr } => {
            let slot = release_addr as usize as *mut u64;
            // SAFETY: the device tree names this word as the CPU's release
            // address; it is in RAM, which el2 maps.
            unsafe { slot.write_volatile(entry) };
            cache::clean_to_poc(slot as usize, 8);
            arch::send_event();
        }
        _ => return Err(CPU_ERROR_NO_METHOD),
    }
    let deadline = arch::now_ticks() + arch::ticks_per_sec() * BRING_UP_TIMEOUT_MS / 1000;
    while CPUS.state(index) == PowerState::Booting {
        if arch::now_ticks() > deadline {
            return Err(CPU_ERROR_TIMEOUT);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// A secondary CPU, from `el2_secondary_entry`: MMU on, own stack.
#[unsafe(no_mangle)]
extern "C" fn el2_secondary_main(index: usize) -> ! {
    regs::set_vectors(boot::el2_vectors as *const () as u64);
    regs::configure_for_host();
    world::init_cpu(index);
    // At boot this tells the boot CPU we are up; after a firmware CPU_OFF and
    // CPU_ON the state is already OnPending and stays so.
    CPUS.mark_booted(index);
    park(index)
}

/// Waits in el2 until a `CPU_ON` for this CPU publishes an entry point.
pub(super) fn park(index: usize) -> ! {
    loop {
        if let Some((entry, context)) = CPUS.take_entry(index) {
            regs::configure_for_host();
            world::init_cpu(index);
            // SAFETY: `CPU_ON` checked the entry lies in RAM; PSCI says the
            // context id goes in x0.
            unsafe { boot::el2_enter_host(entry, context, 0, 0, boot::stack_top(index)) }
        }
        arch::wait_for_event();
    }
}
