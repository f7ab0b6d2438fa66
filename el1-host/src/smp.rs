//! Per-CPU data and the start of secondary CPUs through PSCI `CPU_ON`, which
//! el2 answers by releasing a CPU it has parked.

use crate::arch::aarch64::{boot, cpu, timer};
use crate::sched::work::VcpuEntry;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
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
        }
    }
}

pub static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

pub fn this_cpu() -> &'static PerCpu {
    &CPUS[cpu::current() % MAX_CPUS]
}

pub fn online_count() -> usize {
    CPUS.iter().filter(|c| c.online.load(Ordering::Acquire)).count()
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
    this_cpu().online.store(true, Ordering::Release);
}
