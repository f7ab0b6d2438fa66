//! Secondary CPUs. A test gives a CPU a job (`fn(cpu_index)`) and starts it
//! with PSCI `CPU_ON` at `guest_secondary_entry` (context id = the CPU's
//! device-tree index). The CPU runs the job on its own stack, marks it done
//! and turns itself off with `CPU_OFF`, so the next test finds it off again.

use core::sync::atomic::{AtomicBool, Ordering};

use ferrovisor_shared::boot::MAX_CPUS;
use smccc::psci::{error::Error, AffinityState};
use spin::Mutex;

use crate::console::{report, report_info};
use crate::{psci, rt, time};

/// What a secondary CPU runs, given its index.
pub type Job = fn(usize);

static JOBS: [Mutex<Option<Job>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];
static UP: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static DONE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static EVER_STARTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// CPUs in the device tree (at most [`MAX_CPUS`]).
pub fn count() -> usize {
    rt::env().board.cpus().len()
}

/// The `reg` (MPIDR affinity) the device tree gives CPU `cpu`.
pub fn mpidr_of(cpu: usize) -> Option<u64> {
    rt::env().board.cpus().get(cpu).map(|c| c.mpidr)
}

/// Every CPU but the boot CPU, in device-tree order.
pub fn secondaries() -> impl Iterator<Item = usize> {
    let boot = rt::env().boot_cpu;
    (0..count()).filter(move |&c| c != boot)
}

/// Whether a `CPU_ON` of ours for `cpu` ever succeeded.
pub fn ever_started(cpu: usize) -> bool {
    EVER_STARTED.get(cpu).is_some_and(|s| s.load(Ordering::SeqCst))
}

/// Sets the job `cpu` runs when it next comes up, and clears its flags.
pub fn prepare(cpu: usize, job: Job) {
    if let (Some(slot), Some(up), Some(done)) = (JOBS.get(cpu), UP.get(cpu), DONE.get(cpu)) {
        *slot.lock() = Some(job);
        up.store(false, Ordering::SeqCst);
        done.store(false, Ordering::SeqCst);
    }
}

/// PSCI `CPU_ON` for `cpu` at the secondary entry, with no other preparation.
///
/// # Errors
/// The PSCI error; `INVALID_PARAMETERS` for an index not in the device tree.
pub fn power_on(cpu: usize) -> Result<(), Error> {
    let mpidr = mpidr_of(cpu).ok_or(Error::InvalidParameters)?;
    let entry = rt::guest_secondary_entry as *const () as usize as u64;
    let r = psci::cpu_on(mpidr, entry, cpu as u64);
    if r.is_ok() {
        EVER_STARTED[cpu].store(true, Ordering::SeqCst);
    }
    r
}

/// [`prepare`] then [`power_on`].
///
/// # Errors
/// As [`power_on`].
pub fn start(cpu: usize, job: Job) -> Result<(), Error> {
    prepare(cpu, job);
    power_on(cpu)
}

pub fn is_up(cpu: usize) -> bool {
    UP.get(cpu).is_some_and(|f| f.load(Ordering::SeqCst))
}

pub fn is_done(cpu: usize) -> bool {
    DONE.get(cpu).is_some_and(|f| f.load(Ordering::SeqCst))
}

/// Waits up to `ms` for `cpu`'s job to finish; the microseconds it took.
pub fn wait_done(cpu: usize, ms: u64) -> Option<u64> {
    time::wait_for(ms, || is_done(cpu))
}

/// `AFFINITY_INFO` of `cpu`.
///
/// # Errors
/// The PSCI error.
pub fn affinity(cpu: usize) -> Result<AffinityState, Error> {
    psci::affinity_info(mpidr_of(cpu).ok_or(Error::InvalidParameters)?)
}

/// Polls `AFFINITY_INFO` up to `ms` until `cpu` is off.
pub fn wait_off(cpu: usize, ms: u64) -> Option<u64> {
    time::wait_for(ms, || affinity(cpu) == Ok(AffinityState::Off))
}

/// Waits for every secondary to be off again, reporting any that is not.
pub fn wait_all_off(ms: u64) -> bool {
    let mut all = true;
    for cpu in secondaries() {
        if wait_off(cpu, ms).is_none() {
            report_info(format_args!("cpu{cpu} is not off after {ms} ms: {:?}", affinity(cpu)));
            all = false;
        }
    }
    all
}

/// A secondary CPU, from `guest_secondary_entry`, on its own stack.
#[unsafe(no_mangle)]
extern "C" fn guest_secondary_main(cpu: usize) -> ! {
    UP[cpu].store(true, Ordering::SeqCst);
    let job = *JOBS[cpu].lock();
    match job {
        Some(job) => job(cpu),
        None => {
            report(false, format_args!("cpu{cpu} came up with no job"));
        }
    }
    DONE[cpu].store(true, Ordering::SeqCst);
    let e = psci::cpu_off();
    report(false, format_args!("cpu{cpu}: CPU_OFF returned {e:?}"));
    loop {
        aarch64_cpu::asm::wfi();
    }
}
