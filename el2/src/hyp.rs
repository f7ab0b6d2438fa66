//! el2's Rust entry points: boot on the boot CPU, bring-up of the others, the
//! hand-over to the host, and the handling of the host's calls.

use crate::arch::{self, boot, cache, mmu, regs};
use crate::cpus::{CpuTable, PowerState, Wake};
use crate::psci::{self, Outcome};
use crate::{console, println, world};
use aarch64_cpu::registers::{Readable, Writeable, ELR_EL2, ESR_EL2, FAR_EL2, MPIDR_EL1, SPSR_EL2};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use ferrovisor_shared::boot::*;
use ferrovisor_shared::dt::{Board, EnableMethod, PsciMethod, UartDesc, UartKind};
use ferrovisor_shared::esr::{Esr, ExceptionClass};
use ferrovisor_shared::hypercall::{self as hc, is_psci};
use ferrovisor_shared::image::{PackageHeader, PACKAGE_HEADER_OFFSET, PACKAGE_HEADER_SIZE};
use ferrovisor_shared::trap::{ExceptionReport, GeneralRegs};
use ferrovisor_shared::vcpu::VcpuContext;
use smccc::psci::error as psci_err;
use smccc::Smc;

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
/// Base of the Raspberry Pi's power-management watchdog, 0 if none.
static WATCHDOG: AtomicU64 = AtomicU64::new(0);

const BRING_UP_TIMEOUT_MS: u64 = 1000;

fn firmware() -> FirmwareKind {
    if FIRMWARE.load(Ordering::Relaxed) == FirmwareKind::SpinTable as u32 {
        FirmwareKind::SpinTable
    } else {
        FirmwareKind::PsciSmc
    }
}

/// A console for errors found before the device tree could be read: guessed
/// from where the loader put us (QEMU virt loads at 1 GiB and up, with its
/// PL011 at 0x0900_0000; the Raspberry Pi 4 loads at 0x8_0000, PL011 at
/// 0xfe20_1000).
fn fallback_console() -> UartDesc {
    let base = if boot::image_start() >= 0x4000_0000 { 0x0900_0000 } else { 0xfe20_1000 };
    UartDesc { kind: UartKind::Pl011, base, size: 0x1000 }
}

/// Boot CPU, from `el2_primary_entry`: MMU off, relocated, BSS clear.
#[unsafe(no_mangle)]
extern "C" fn el2_primary_main(dtb: usize, current_el: u64) -> ! {
    let board = unsafe {
        // SAFETY: the boot protocol puts the device tree's address in x0; a
        // bad address or blob is caught by the parser's header checks.
        Board::from_addr(dtb)
    };
    let console = board.as_ref().ok().and_then(|b| b.console()).unwrap_or_else(fallback_console);
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
    WATCHDOG.store(board.watchdog().unwrap_or(0), Ordering::Relaxed);

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
fn park(index: usize) -> ! {
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

fn entry_in_ram(addr: u64) -> bool {
    in_ram(addr, 1)
}

/// Whether `[addr, addr + len)` lies inside one RAM region.
pub fn in_ram(addr: u64, len: u64) -> bool {
    // SAFETY: RAM is written only before the host runs.
    let ram = unsafe { &*RAM.0.get() };
    let Some(end) = addr.checked_add(len) else { return false };
    ram.iter().any(|&(b, s)| s != 0 && addr >= b && end <= b + s)
}

/// `HC_VCPU_RUN`'s context must be host RAM, aligned, and not el2's.
fn run_vcpu(ctx_pa: u64) -> i64 {
    let size = core::mem::size_of::<VcpuContext>() as u64;
    let el2 = boot::image_start()..boot::el2_end();
    if !ctx_pa.is_multiple_of(16) || !in_ram(ctx_pa, size) || (ctx_pa < el2.end && ctx_pa + size > el2.start) {
        return ferrovisor_shared::vcpu::RUN_ERROR_BAD_CONTEXT;
    }
    // SAFETY: checked above to be an aligned VcpuContext-sized piece of RAM
    // that el2 itself does not use; the host does not touch it during the call.
    let ctx = unsafe { &mut *(ctx_pa as *mut VcpuContext) };
    world::run(ctx)
}

fn current_cpu() -> Option<usize> {
    CPUS.index_of(MPIDR_EL1.get())
}

fn hypercall(regs: &mut GeneralRegs) {
    let function = regs.x[0] as u32;
    let result: i64 = match function {
        hc::HC_ABI_VERSION => hc::FERROVISOR_ABI_VERSION as i64,
        hc::HC_VCPU_RUN => run_vcpu(regs.x[1]),
        hc::HC_TLB_FLUSH_VMID => {
            world::flush_vmid(regs.x[1]);
            0
        }
        hc::HC_TLB_FLUSH_IPA => {
            world::flush_ipa(regs.x[1], regs.x[2], regs.x[3]);
            0
        }
        hc::HC_TLB_FLUSH_ALL => {
            world::flush_all();
            0
        }
        hc::HC_VGIC_INFO => crate::vgic::nr_lrs() as i64,
        hc::SMCCC_VERSION => hc::SMCCC_VERSION_1_1,
        f if is_psci(f) => host_psci(f, [regs.x[1], regs.x[2], regs.x[3]]),
        _ => hc::SMCCC_NOT_SUPPORTED,
    };
    regs.x[0] = result as u64;
}

fn host_psci(function: u32, args: [u64; 3]) -> i64 {
    match psci::decide(&CPUS, function, args, entry_in_ram) {
        Outcome::Return(v) => v,
        Outcome::StartCpu { index, wake: Wake::Parked } => {
            arch::send_event();
            let _ = index;
            0
        }
        Outcome::StartCpu { index, wake: Wake::Firmware } => {
            let entry = boot::el2_secondary_entry as *const () as u64;
            let mpidr = CPUS.mpidr(index);
            // A CPU that has just called CPU_OFF may not be off in firmware yet.
            for _ in 0..1000 {
                match smccc::psci::cpu_on::<Smc>(mpidr, entry, index as u64) {
                    Err(smccc::psci::Error::AlreadyOn) => core::hint::spin_loop(),
                    Ok(()) => return 0,
                    Err(e) => {
                        CPUS.unclaim(index);
                        return e.into();
                    }
                }
            }
            CPUS.unclaim(index);
            psci_err::INTERNAL_FAILURE.into()
        }
        Outcome::CpuOff => {
            let Some(index) = current_cpu() else { return psci_err::DENIED.into() };
            match firmware() {
                FirmwareKind::PsciSmc => {
                    CPUS.set(index, PowerState::Off);
                    let e = smccc::psci::cpu_off::<Smc>();
                    CPUS.set(index, PowerState::On);
                    e.map_or_else(i64::from, |()| 0)
                }
                FirmwareKind::SpinTable => {
                    CPUS.set(index, PowerState::Parked);
                    park(index)
                }
            }
        }
        Outcome::SystemOff => system_off(),
        Outcome::SystemReset => system_reset(),
    }
}

fn system_off() -> ! {
    if firmware() == FirmwareKind::PsciSmc {
        let _ = smccc::psci::system_off::<Smc>();
    } else if let Some(wdt) = watchdog() {
        // The Raspberry Pi firmware halts instead of booting when the reset
        // status names partition 63.
        wdt.reset(0x555);
    }
    println!("el2: system off: halting");
    arch::halt()
}

fn system_reset() -> ! {
    if firmware() == FirmwareKind::PsciSmc {
        let _ = smccc::psci::system_reset::<Smc>();
    } else if let Some(wdt) = watchdog() {
        wdt.reset(0);
    }
    println!("el2: system reset not available: halting");
    arch::halt()
}

/// The BCM2711 power-management watchdog.
struct Watchdog(usize);

impl Watchdog {
    const PASSWORD: u32 = 0x5a00_0000;
    const RSTC: usize = 0x1c;
    const RSTS: usize = 0x20;
    const WDOG: usize = 0x24;

    /// Resets the SoC in about 150 µs, with `partition` bits in RSTS.
    fn reset(&self, partition: u32) {
        let reg = |off: usize| (self.0 + off) as *mut u32;
        // SAFETY: the base comes from the device tree's watchdog node, which
        // el2 maps as device memory; these are its documented registers.
        unsafe {
            let rsts = reg(Self::RSTS).read_volatile();
            reg(Self::RSTS).write_volatile(Self::PASSWORD | (rsts & 0xfffffaaa) | partition);
            reg(Self::WDOG).write_volatile(Self::PASSWORD | 10);
            let rstc = reg(Self::RSTC).read_volatile();
            reg(Self::RSTC).write_volatile(Self::PASSWORD | (rstc & !0x30) | 0x20);
        }
        for _ in 0..10_000_000 {
            core::hint::spin_loop();
        }
    }
}

fn watchdog() -> Option<Watchdog> {
    match WATCHDOG.load(Ordering::Relaxed) {
        0 => None,
        base => Some(Watchdog(base as usize)),
    }
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
            ExceptionClass::Hvc64 => return hypercall(regs),
            ExceptionClass::Smc64 => {
                // A trapped SMC returns to itself; step over it.
                ELR_EL2.set(ELR_EL2.get() + 4);
                return hypercall(regs);
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
