//! Per-CPU data and the start of secondary CPUs through PSCI `CPU_ON`, which
//! el2 answers by releasing a CPU it has parked.

use crate::arch::aarch64::{boot, cpu, timer};
use crate::sched::work::VcpuEntry;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use ferrovisor_shared::boot::{BootInfo, CpuState, MAX_CPUS};
use smccc::Hvc;

/// What each CPU keeps about itself (one struct per CPU, as KVM's
/// `kvm_host_data`): other CPUs read some of it (`online`, `idle`), the rest
/// only its own CPU touches.
pub struct PerCpu {
    pub online: AtomicBool,
    pub mpidr: AtomicU64,
    /// Host timer interrupts taken.
    pub ticks: AtomicU64,
    /// `SGI_PING`s received.
    pub sgis: AtomicU64,
    /// The run-loop state of the vCPU this CPU runs, for the tick handler
    /// (`sched::cpu_loop`).
    pub current_vcpu: AtomicPtr<VcpuEntry>,
    /// Idling in the scheduler with nothing to run: a waker sends it an SGI.
    pub idle: AtomicBool,
    /// GICv2: this CPU's interface bit, as `GICD_ITARGETSR0` reads on it.
    pub gicv2_target: AtomicU8,
    /// GICv3: this CPU's redistributor RD frame (the SGI frame follows it);
    /// 0 until `gic::init` finds it.
    pub gicr_rd_base: AtomicU64,
    /// GICv3: `GICR_TYPER.Processor_Number` of this CPU's redistributor (what
    /// the ITS names it by when `GITS_TYPER.PTA` is 0).
    pub gicr_processor_number: AtomicU16,
    /// GICv4: the vPE resident on this CPU's redistributor (vPE ID + 1; 0: none).
    pub vpe_resident: AtomicU32,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            online: AtomicBool::new(false),
            mpidr: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            sgis: AtomicU64::new(0),
            current_vcpu: AtomicPtr::new(core::ptr::null_mut()),
            idle: AtomicBool::new(false),
            gicv2_target: AtomicU8::new(0),
            gicr_rd_base: AtomicU64::new(0),
            gicr_processor_number: AtomicU16::new(0),
            vpe_resident: AtomicU32::new(0),
        }
    }
}

pub static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

pub fn this_cpu() -> &'static PerCpu {
    &CPUS[cpu::current() % MAX_CPUS]
}

/// CPUs marked online (they never go offline): a counter, since the
/// schedulers ask at every wait and tick (`sched::oversubscribed`).
static ONLINE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

pub fn online_count() -> usize {
    ONLINE.load(Ordering::Acquire)
}

const START_TIMEOUT_US: u64 = 1_000_000;

/// Starts every CPU el2 parked; returns how many came online (the boot CPU
/// included). Failures are logged with the PSCI error.
pub fn start_secondaries(info: &BootInfo) -> usize {
    let entry = boot::host_secondary_entry as *const () as u64;
    for (index, c) in info.cpus.iter().enumerate().take(info.cpu_count as usize) {
        CPUS[index].mpidr.store(c.mpidr, Ordering::Relaxed);
        match c.state {
            CpuState::Parked => {
                if let Err(e) = smccc::psci::cpu_on::<Hvc>(c.mpidr, entry, index as u64) {
                    log::error!("cpu{index} (MPIDR {:#x}): CPU_ON failed: {e}", c.mpidr);
                    continue;
                }
                let deadline = timer::now() + timer::ticks_from_us(START_TIMEOUT_US);
                while !CPUS[index].online.load(Ordering::Acquire) && timer::now() < deadline {
                    core::hint::spin_loop();
                }
                if !CPUS[index].online.load(Ordering::Acquire) {
                    log::error!("cpu{index} (MPIDR {:#x}): did not come online", c.mpidr);
                }
            }
            CpuState::Failed => {
                log::error!("cpu{index} (MPIDR {:#x}): el2 could not start it (error {})", c.mpidr, c.error)
            }
            CpuState::On | CpuState::Absent => {}
        }
    }
    online_count()
}

/// Marks the running CPU online (after its GIC and timer set-up).
pub fn mark_online() {
    if !this_cpu().online.swap(true, Ordering::AcqRel) {
        ONLINE.fetch_add(1, Ordering::AcqRel);
    }
}
