//! Ferrovisor's EL1 host.
//!
//! el2 enters it on the boot CPU with the device tree and a [`BootInfo`]. The
//! host reads the board from the device tree, turns its MMU on, brings up its
//! console, memory, GIC and timer, starts the other CPUs through PSCI, prints
//! the banner, checks that every CPU takes an SGI and a timer tick (and, with
//! an ITS, an LPI), starts the VMs (`vm::registry`) and runs every CPU's
//! scheduler; the board powers off when the last VM has ended, or at once if
//! the self-check fails or no VM starts (docs/split.md §5, docs/guests.md §8).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// On the development host the binary exists only for its unit tests.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

mod bootargs;
mod devices;
#[cfg(test)]
mod fuzz;
mod gic;
mod mm;
mod rcu;
mod sched;
mod vcpu;
mod vm;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod board;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
use ferrovisor_shared::println;
#[cfg(target_os = "none")]
mod irq;
#[cfg(target_os = "none")]
mod selfcheck;
#[cfg(target_os = "none")]
mod smp;

#[cfg(target_os = "none")]
mod host {
    use crate::arch::aarch64::{cpu, mmu, timer};
    use crate::{board, bootargs, console, gic, irq::ids, mm, println, sched, selfcheck, smp, vm};
    use alloc::string::String;
    use ferrovisor_shared::boot::{BootInfo, BOOT_INFO_MAGIC, MAX_CPUS};
    use ferrovisor_shared::dt::{Board, BoardKind, MemRegion};

    const VERSION: &str = env!("CARGO_PKG_VERSION");

    /// Boot CPU, from `_start`: relocated, BSS clear, MMU off.
    #[unsafe(no_mangle)]
    extern "C" fn host_primary_main(dtb: usize, info: *const BootInfo) -> ! {
        // SAFETY: el2 passes the address of its BootInfo, cleaned to memory;
        // the magic check catches anything else.
        let info = unsafe { &*info };
        // SAFETY: el2 validated this device tree before handing over.
        let board = match unsafe { Board::from_addr(dtb) } {
            Ok(b) => b,
            // el2 parsed the same blob; it cannot be bad here unless memory is.
            Err(_) => crate::arch::aarch64::cpu::halt(),
        };
        let mut ram = [(0u64, 0u64); ferrovisor_shared::dt::MAX_MEMORY_REGIONS];
        for (slot, r) in ram.iter_mut().zip(board.memory()) {
            *slot = (r.base, r.size);
        }
        // SAFETY: boot CPU, MMU off, and the host's image lies in RAM (el2
        // checked the whole image does).
        if unsafe { mmu::init(&ram) }.is_err() {
            cpu::halt();
        }
        if let Some(uart) = board.console() {
            // SAFETY: the device tree's console, identity mapped as device memory.
            unsafe { console::init(&uart) };
        }
        if info.magic != BOOT_INFO_MAGIC {
            board::fail("el2 handed over no BootInfo (bad magic)");
        }
        let args = board.bootargs();
        console::init_log(args);
        board::set_semihosting_exit(bootargs::semihosting_exit(args));
        vm::instance::set_fastpath(!bootargs::fastpath_off(args));

        let memory = init_memory(&board, info, dtb);
        let gic_version = init_interrupts(&board, info);
        let lpis = init_lpis(gic_version, info.cpu_count as usize, bootargs::software_vlpi(args));
        vm::registry::init();
        per_cpu_init(info.boot_cpu as usize);
        let online = smp::start_secondaries(info);

        print_banner(&board, info, online, gic_version, &memory);
        print_lpis(&lpis);
        let ok = selfcheck::run(info, lpis.is_ok());
        if online < info.cpu_count as usize {
            log::error!("only {online} of {} CPUs came online", info.cpu_count);
        }
        if !ok {
            board::power_off(1);
        }
        if bootargs::build_check(args) {
            let (gicv3, its) = match gic_version {
                gic::Version::V2 => (false, false),
                gic::Version::V3 { its, .. } => (true, its),
            };
            if !vm::buildcheck::run(gicv3, its) {
                board::power_off(1);
            }
        }
        let (started, refused) = vm::registry::start_vms(&board, gic_version);
        if started == 0 {
            println!("ferrovisor: no guests to run");
            let ok = online == info.cpu_count as usize && refused == 0;
            board::power_off(if ok { 0 } else { 1 })
        }
        sched::cpu_main()
    }

    /// A CPU started with `CPU_ON`: MMU on, own stack, index in `TPIDR_EL1`.
    #[unsafe(no_mangle)]
    extern "C" fn host_secondary_main(index: usize) -> ! {
        per_cpu_init(index);
        sched::cpu_main()
    }

    /// GIC CPU interface, timer tick, then IRQs on.
    fn per_cpu_init(index: usize) {
        cpu::set_current(index);
        // The guests' virtual timer is off until one runs here.
        timer::vtimer_off();
        let mut ppis = [
            ids::SGI_PING,
            ids::SGI_TICK,
            ids::SGI_EL2_POST,
            ids::timer_intid(),
            ids::vtimer_intid(),
            gic::maintenance_intid(),
            0,
        ];
        let n = match ids::pmu_intid() {
            Some(p) => {
                ppis[6] = p;
                7
            }
            None => 6,
        };
        gic::init_cpu(index, &ppis[..n]);
        timer::arm_in_us(ids::TICK_US);
        smp::mark_online();
        cpu::irq_enable();
    }

    struct MemorySummary {
        total: u64,
        first_base: u64,
        free: u64,
    }

    fn init_memory(board: &Board, info: &BootInfo, dtb: usize) -> MemorySummary {
        let mut reserved = [MemRegion::EMPTY; ferrovisor_shared::dt::MAX_RESERVED + 3];
        let mut n = 0;
        for r in board.reserved() {
            reserved[n] = *r;
            n += 1;
        }
        reserved[n] = MemRegion::from_bounds(info.image_start, info.image_end);
        reserved[n + 1] = MemRegion::new(dtb as u64, board.totalsize() as u64);
        n += 2;
        if let Some(initrd) = board.initrd() {
            reserved[n] = initrd;
            n += 1;
        }
        let total: u64 = board.memory().iter().map(|r| r.size).sum();
        let first_base = board.memory().first().map_or(0, |r| r.base);
        let mut usable = [MemRegion::EMPTY; 32];
        let count = mm::usable_regions(board.memory(), &reserved[..n], &mut usable);
        let frames = mm::frames();
        for r in &usable[..count] {
            frames.lock().add_region(r.base, r.end());
        }
        let heap_size = (total / 8).clamp(1 << 20, 16 << 20) as usize;
        let Some(heap) = frames.lock().alloc(heap_size / mm::FRAME_SIZE) else {
            board::fail("no memory for the host heap");
        };
        // SAFETY: the frames were just taken from the allocator for the heap
        // alone, and they are identity mapped as normal memory.
        unsafe { mm::init_heap(heap as usize, heap_size) };
        // Guests' ITS and LPI state lives on the heap: all VMs together may
        // use about a quarter of it (entries of 64 bytes or less, B-tree
        // overhead included).
        gic::vgic::budget::INTERRUPT_STATE.set_limit(heap_size / 4 / 64);
        let free = frames.lock().free_bytes();
        let heap = mm::heap_usage();
        log::debug!(
            "memory: {} KiB in frames, host heap {} KiB ({} KiB used)",
            frames.lock().total_bytes() >> 10,
            heap.total >> 10,
            heap.allocated >> 10
        );
        MemorySummary { total, first_base, free }
    }

    fn init_interrupts(board: &Board, info: &BootInfo) -> gic::Version {
        if let Some(t) = board.timer() {
            ids::set_timer_intid(t.nonsecure_phys);
            ids::set_vtimer_intid(t.virt);
        }
        // A PMU interrupt that is a PPI (QEMU virt: INTID 23) is linked to the
        // guests'; the Pi 4's are SPIs, one per CPU, which guests do without.
        if crate::arch::aarch64::cpu::has_pmuv3() {
            ids::set_pmu_intid(board.pmu_intid());
        }
        let Some(desc) = board.gic() else { board::fail("the device tree has no GIC this host drives") };
        let mut mpidrs = [0u64; MAX_CPUS];
        let count = info.cpu_count as usize;
        for (m, c) in mpidrs.iter_mut().zip(&info.cpus[..count]) {
            *m = c.mpidr;
        }
        // SAFETY: the device tree's GIC, identity mapped as device memory;
        // initialised once, here.
        match unsafe { gic::init(&desc, &mpidrs[..count]) } {
            Ok(v) => v,
            Err(e) => board::fail(e),
        }
    }

    /// The host's LPIs through the ITS (GICv3/v4 with one), and whether
    /// guests' LPIs are injected directly: on a GICv4.0 unless `software`.
    fn init_lpis(gic: gic::Version, cpus: usize, software: bool) -> Result<gic::vlpi::Features, String> {
        let gic::Version::V3 { v4, v4_1, .. } = gic else { return Err(String::from("no ITS on a GICv2")) };
        let base = gic::its_base().ok_or_else(|| String::from("the device tree names no ITS"))?;
        // GICv4.1 lays out VMAPP and GICR_VPENDBASER differently; only 4.0 is
        // driven (QEMU's gic-version=4 is a 4.0).
        let want_direct = v4 && !v4_1 && !software;
        // SAFETY: the device tree's ITS, in the low 4 GiB the host maps as
        // device memory; the GIC is initialised; boot CPU, once.
        unsafe { gic::vlpi::init(base, cpus, want_direct) }
    }

    fn print_lpis(lpis: &Result<gic::vlpi::Features, String>) {
        match lpis {
            Ok(f) if f.direct => println!("  lpis:    ITS; guests' LPIs injected directly (GICv4.0 vPEs, doorbells)"),
            Ok(_) => println!("  lpis:    ITS; guests' LPIs injected by software"),
            Err(e) => println!("  lpis:    none ({e})"),
        }
    }

    fn print_banner(board: &Board, info: &BootInfo, online: usize, gic: gic::Version, mem: &MemorySummary) {
        let name = match board.kind() {
            BoardKind::QemuVirt => "QEMU virt",
            BoardKind::RaspberryPi4 => "Raspberry Pi 4",
            BoardKind::Other => board.model(),
        };
        println!("Ferrovisor {VERSION}");
        println!("  board:   {name} ({})", board.compatible());
        println!("  entered: EL{}", info.entered_el);
        println!("  cpus:    {online} online of {}", info.cpu_count);
        println!("  gic:     {gic}");
        println!("  memory:  {} MiB at {:#x}, {} MiB free", mem.total >> 20, mem.first_base, mem.free >> 20);
    }

    #[panic_handler]
    fn panic(panic: &core::panic::PanicInfo) -> ! {
        console::print_forced(format_args!("ferrovisor: panic on cpu{}: {panic}\n", cpu::current()));
        board::power_off(1)
    }
}

/// The host is a bare-metal binary; on the development host only its unit
/// tests run.
#[cfg(not(target_os = "none"))]
fn main() {}
