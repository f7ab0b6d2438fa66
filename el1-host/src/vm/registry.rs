//! The VMs that run: creating them at start-up, the list every CPU reads
//! under RCU (publish, lookup, finish), the VMID allocator, and the tally of
//! verdicts that powers the board off after the last VM.
//!
//! The list's protocol (one writers' lock, never held while waiting for a
//! grace period) is `vm::list`'s, and the rules of start-up and ending
//! (`vm::lifecycle`) are tested on the host there.

use super::instance::Vm;
use super::lifecycle::Registry;
use super::list::{Listed, VmList};
use super::vmid;
use crate::gic;
use crate::rcu::RCU;
use crate::{println, smp};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use ferrovisor_shared::boot::MAX_CPUS;
use ferrovisor_shared::dt::Board;

/// Every running VM, and the verdicts of those that ended.
static VMS: spin::Once<Registry<Vm>> = spin::Once::new();

fn registry() -> &'static Registry<Vm> {
    VMS.get().expect("vm::registry::init ran")
}

/// The VMID width from `ID_AA64MMFR1_EL1`, the list, and the GICv4
/// doorbells' way to a vCPU.
pub fn init() {
    let bits = vmid::bits_from_mmfr1(crate::arch::aarch64::cpu::id_aa64mmfr1());
    vmid::init(bits);
    VMS.call_once(Registry::new);
    gic::vlpi::set_doorbell_handler(ring_doorbell);
}

/// The VM list, for a reader holding an RCU read guard.
pub fn list() -> &'static VmList<Vm> {
    registry().list()
}

/// vCPU `vcpu` of VM `vm_id` has a vLPI pending while its vPE is not
/// resident (its doorbell rang): `pending_last`, the request, the kick, and
/// nothing that takes a lock: the vGIC's lock may be held by the CPU this
/// interrupt came in on (docs/interrupts.md). Called from the IRQ handler.
fn ring_doorbell(vm_id: usize, vcpu: usize) {
    let guard = RCU.read_lock(crate::arch::aarch64::cpu::current());
    if let Some(v) = list().find(&guard, vm_id).and_then(|vm| vm.vcpus.get(vcpu)) {
        v.doorbell.ring(v.entry.requests(), || crate::sched::kick(v));
    }
}

/// Adds a VM to the list.
pub fn publish(vm: Arc<Vm>) {
    crate::sched::vcpus_added(vm.vcpus.len());
    registry().publish(&RCU, crate::arch::aarch64::cpu::current(), core::hint::spin_loop, vm);
}

/// The last vCPU of `vm` stopped: report, take it off the list, wait for a
/// grace period so no CPU still reads it, free it, and power off after the
/// last VM.
pub fn finish(vm: Arc<Vm>) {
    let me = crate::arch::aarch64::cpu::current();
    let verdict = vm.report_end();
    log::debug!("vm {}: off the list after grace period {}", vm.name, RCU.grace_periods() + 1);
    if let Some(status) = registry().finish(&RCU, me, core::hint::spin_loop, vm, verdict) {
        power_off(status);
    }
}

impl Listed for Vm {
    fn id(&self) -> usize {
        self.id
    }
}

fn power_off(status: u32) -> ! {
    println!("ferrovisor: all VMs ended");
    crate::board::power_off(status)
}

/// The built-in guest bundle (`default.vms` and its images), used when
/// the device tree names no VMs and the initrd has no manifest.
static DEFAULT_BUNDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-guests.cpio"));

/// Creates and publishes the VMs the device tree (or a bundle) asks for;
/// returns how many started and how many were refused. vCPUs may outnumber
/// CPUs (they are time-sliced); a VM whose memory or images do not fit is
/// refused. The board is held up meanwhile (a VM that starts running on
/// another CPU and ends before the next is published is not the last); it
/// powers off here if every VM has already ended.
pub fn start_vms(board: &Board, gic: gic::Version) -> (usize, usize) {
    let mut counts = (0, 0);
    if let Some(status) = registry().start(|| {
        counts = create_all(board, gic);
        counts.0
    }) {
        power_off(status);
    }
    counts
}

fn create_all(board: &Board, gic: gic::Version) -> (usize, usize) {
    use super::config::{self, Source};
    // SAFETY: the initrd and module ranges were kept out of the frame
    // allocator (init_memory reserves the initrd; module `reg`s are the
    // device tree's reservations), and nothing writes them.
    let mut read_host = unsafe { config::host_memory(board) };
    let mut list = config::vms_from_board(board, &mut read_host);
    if let Some(e) = &list.bundle_error {
        log::error!("{e}");
    }
    let mut builtin = false;
    if list.source == Source::Nothing && !DEFAULT_BUNDLE.is_empty() {
        match super::bundle::Bundle::parse(DEFAULT_BUNDLE) {
            Ok(b) => match b.get(config::MANIFEST) {
                Some(text) => {
                    println!("ferrovisor: no VMs in the device tree: starting the built-in set");
                    list.vms = config::from_manifest(text, &b);
                    builtin = true;
                }
                None => log::error!("the built-in bundle has no {}", config::MANIFEST),
            },
            Err(e) => log::error!("the built-in bundle: {e}"),
        }
    }
    let (gicv3, its) = match gic {
        gic::Version::V2 => (false, false),
        // GICv3 guests get an emulated ITS (LPIs by software injection)
        // when the board has one.
        gic::Version::V3 { its, .. } => (true, its),
    };
    let cpus: Vec<usize> =
        (0..MAX_CPUS).filter(|&c| smp::CPUS[c].online.load(core::sync::atomic::Ordering::Acquire)).collect();
    let (mut started, mut refused) = (0, 0);
    let mut vcpus = 0;
    for (id, spec) in list.vms.into_iter().enumerate() {
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                log::error!("VM not started: {e}");
                refused += 1;
                registry().refused();
                continue;
            }
        };
        let n = spec.vcpus as usize;
        if builtin && vcpus + n > cpus.len() {
            // The demonstration set adapts to the board (every vCPU a CPU
            // of its own); what a user asks for is time-sliced.
            println!("vm {}: skipped: it needs {n} vCPUs and {} CPUs are free", spec.name, cpus.len() - vcpus);
            continue;
        }
        // Pinned vCPUs take CPUs in turn from where the last VM's ended.
        let pin: Option<Vec<usize>> = spec.pinned.then(|| (0..n).map(|i| cpus[(vcpus + i) % cpus.len()]).collect());
        match Vm::create(id, &spec, pin.as_deref(), gicv3, its) {
            Ok(v) => {
                // Hardware-linked PPIs (docs/interrupts.md), before any vCPU runs.
                crate::vcpu::timers::link(&v);
                crate::vcpu::pmu::link(&v);
                let placement = match &pin {
                    Some(p) => alloc::format!("pinned to CPUs {p:?}"),
                    None => String::from("on any CPU"),
                };
                println!(
                    "vm {}: {} vCPU{} {placement}, {} MiB, bootargs \"{}\"",
                    spec.name,
                    n,
                    if n == 1 { "" } else { "s" },
                    v.ram.size >> 20,
                    spec.bootargs
                );
                publish(v);
                vcpus += n;
                started += 1;
            }
            Err(e) => {
                log::error!("vm {}: not started: {e}", spec.name);
                refused += 1;
                registry().refused();
            }
        }
    }
    if vcpus > cpus.len() {
        println!("ferrovisor: {vcpus} vCPUs on {} CPUs: time-sliced", cpus.len());
    }
    for &c in &cpus {
        if c != crate::arch::aarch64::cpu::current() {
            gic::send_sgi(crate::irq::ids::SGI_PING, c);
        }
    }
    (started, refused)
}
