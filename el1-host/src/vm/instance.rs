//! A running VM: its memory, stage 2, vCPUs, console and end (the list of
//! VMs and their start-up are `vm::registry`'s).

use super::outcome::{self, EndReason, Verdict};
use super::ram::GuestRam;
use super::ratelimit::{GuestEvent, Suppressed};
use super::stats::{CmoFigures, VmStats};
use super::{cmo, config::VmSpec, fdt, guest_map, loader, vmid};
use crate::arch::aarch64::{cache, hyp, timer};
use crate::devices::bus::MmioBus;
use crate::devices::gic::{ItsFrame, LpiHost};
use crate::devices::pl011::Uart;
use crate::devices::{self, DeviceHost};
use crate::gic::vgic::budget::{self, Share};
use crate::gic::vgic::its::{Effect, GuestMemory};
use crate::gic::vgic::{its, Kicks, Model, Vgic, VgicConfig, LPI_ID_BITS, MAX_LPIS};
use crate::mm::stage2::{HostFrames, Stage2, Stage2Tlb};
use crate::println;
use crate::sched::work::VcpuEntry;
use crate::vcpu::psci::VcpuPower;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use ferrovisor_shared::vcpu::{ConstRegs, VcpuConfig, VcpuContext, CONFIG_GICV3, CONFIG_NO_FASTPATH, CONFIG_PMU};

/// The `fastpath=off` boot option, read before any VM is built.
static FASTPATH: AtomicBool = AtomicBool::new(true);

/// Whether VMs built from now on get el2's fast paths (`fastpath=off`:
/// no; docs/exit.md §4).
pub fn set_fastpath(on: bool) {
    FASTPATH.store(on, Ordering::Relaxed);
}

pub use crate::vcpu::state::Vcpu;

pub struct Vm {
    pub id: usize,
    pub name: String,
    pub ram: GuestRam,
    pub gicv3: bool,
    stage2: spin::Mutex<Option<Stage2<HostFrames>>>,
    /// The GIC the guest sees (distributor, redistributors, list registers).
    pub vgic: Vgic,
    /// Its ITS (GICv3 guests on a board with one): LPIs by software injection.
    its: Option<Arc<ItsFrame>>,
    /// Its LPIs as vLPIs in the physical ITS (GICv4), instead of by software.
    pub direct: Option<crate::gic::vlpi::DirectVm>,
    pub vmid: vmid::VmidSlot,
    pub vcpus: Vec<Vcpu>,
    uart: Arc<Uart>,
    /// Its emulated devices by guest-physical range, fixed once built.
    pub bus: MmioBus<Vm>,
    /// Held while guest memory is populated or cleaned.
    pub mem_lock: spin::Mutex<()>,
    pub cmo: cmo::PendingOps,
    pub stats: VmStats,
    exit_status: AtomicU64,
    end: spin::Mutex<Option<EndReason>>,
    running: AtomicUsize,
    boot: BootImages,
    pub cntvoff: u64,
}

/// What a reset loads again.
struct BootImages {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    dtb: Vec<u8>,
    layout: loader::Layout,
}

const NO_STATUS: u64 = u64::MAX;

/// SPIs of the guest's GIC (INTIDs 32..160): QEMU virt's devices use the first 48.
const GUEST_SPIS: u32 = 128;

/// Each kind of guest-triggered log line prints a burst per window this long.
const LOG_WINDOW_US: u64 = 5_000_000;

/// Room reserved for the guest's device tree.
const DTB_MAX: u64 = 64 * 1024;

/// Where [`Vm::create_in_steps`] fails on purpose: `vm::buildcheck` makes
/// each step fail in turn and checks that the failure gave back all that
/// the build had taken.
#[derive(Default)]
pub struct BuildSteps {
    done: u32,
    fail_at: Option<u32>,
}

impl BuildSteps {
    pub fn failing_at(step: u32) -> Self {
        Self { done: 0, fail_at: Some(step) }
    }

    /// How many steps passed.
    pub fn done(&self) -> u32 {
        self.done
    }

    fn after(&mut self, what: &str) -> Result<(), String> {
        if self.fail_at == Some(self.done) {
            return Err(alloc::format!("failed on purpose after step {} ({what})", self.done));
        }
        self.done += 1;
        Ok(())
    }
}

/// The TLB maintenance the stage-2 code asks for, done by el2.
pub struct El2Tlb;

impl Stage2Tlb for El2Tlb {
    fn flush_ipa(&self, vmid: u16, ipa: u64, size: u64) {
        hyp::tlb_flush_ipa(vmid, ipa, size);
    }

    fn flush_vmid(&self, vmid: u16) {
        hyp::tlb_flush_vmid(vmid);
    }
}

impl Vm {
    /// Builds a VM from `spec`, its vCPUs pinned to `pin[i]` when given.
    ///
    /// # Errors
    /// A message naming what did not fit or parse; nothing is left allocated.
    pub fn create(id: usize, spec: &VmSpec, pin: Option<&[usize]>, gicv3: bool, its: bool) -> Result<Arc<Vm>, String> {
        Self::create_in_steps(id, spec, pin, gicv3, its, &mut BuildSteps::default())
    }

    /// [`Vm::create`], failing on purpose where `steps` says.
    ///
    /// # Errors
    /// As `create`'s, or the step `steps` was told to fail at.
    pub fn create_in_steps(
        id: usize,
        spec: &VmSpec,
        pin: Option<&[usize]>,
        gicv3: bool,
        its: bool,
        steps: &mut BuildSteps,
    ) -> Result<Arc<Vm>, String> {
        let ram = GuestRam::alloc(spec.mem_bytes)?;
        steps.after("guest RAM")?;
        Self::build(id, spec, pin, gicv3, its, ram, steps).map(Arc::new)
    }

    fn build(
        id: usize,
        spec: &VmSpec,
        pin: Option<&[usize]>,
        gicv3: bool,
        its: bool,
        ram: GuestRam,
        steps: &mut BuildSteps,
    ) -> Result<Vm, String> {
        let mpidrs: Vec<u64> = (0..spec.vcpus).map(|i| (1 << 31) | fdt::vcpu_mpidr(i)).collect();
        let share = if its { interrupt_state_share(spec)? } else { Share::unlimited() };
        steps.after("interrupt-state share")?;
        let vgic = Vgic::new(VgicConfig {
            model: if gicv3 { Model::V3 } else { Model::V2 },
            vcpu_mpidrs: mpidrs.clone(),
            nr_spis: GUEST_SPIS,
            lpis: its,
            share: share.clone(),
        })
        .map_err(|e| alloc::format!("virtual GIC: {e}"))?;
        // GICD_SGIR (IHI 0048 §4.3.15) in the guest's distributor.
        vgic.set_sgir_ipa(fdt::GIC_DIST_BASE + 0xf00);
        steps.after("virtual GIC")?;
        let initrd_len = spec.initrd.as_ref().map(|i| i.len() as u64);
        let layout =
            loader::layout(&spec.kernel, ram.ipa, ram.size, DTB_MAX, initrd_len).map_err(|e| alloc::format!("{e}"))?;
        steps.after("image layout")?;
        let guest_its = its
            .then(|| ItsFrame::new(spec.vcpus as usize, LPI_ID_BITS, share).map(Arc::new))
            .transpose()
            .map_err(|e| alloc::format!("virtual ITS: {e:?}"))?;
        steps.after("virtual ITS")?;
        let uart = Arc::new(Uart::new());
        let bus =
            devices::guest_bus(spec.vcpus, gicv3, &uart, guest_its.as_ref()).map_err(|e| alloc::format!("{e}"))?;
        steps.after("MMIO bus")?;
        let direct = match its.then(|| crate::gic::vlpi::DirectVm::new(id, spec.vcpus as usize)).transpose() {
            Ok(d) => d.flatten(),
            Err(e) => {
                log::warn!("vm {}: no direct vLPI injection ({e}): its LPIs are injected by software", spec.name);
                None
            }
        };
        steps.after("direct vLPI injection")?;
        let initrd_range = layout.initrd_ipa.zip(initrd_len).map(|(start, len)| (start, start + len));
        let pmu = crate::arch::aarch64::cpu::has_pmuv3();
        let dt = fdt::GuestDt {
            name: &spec.name,
            ram_base: ram.ipa,
            ram_size: ram.size,
            vcpus: spec.vcpus,
            gic: if gicv3 { fdt::GuestGic::V3 { its } } else { fdt::GuestGic::V2 },
            bootargs: &spec.bootargs,
            initrd: initrd_range,
            pmu,
        };
        let dtb = fdt::build(&dt).map_err(|e| alloc::format!("device tree: {e}"))?;
        steps.after("device tree")?;
        if dtb.len() as u64 > DTB_MAX {
            return Err(alloc::format!("its device tree is {} bytes, more than {DTB_MAX}", dtb.len()));
        }
        let stage2 = guest_stage2(&ram, gicv3)?;
        steps.after("stage 2")?;
        let cntvoff = timer::now();
        let entry = layout.entry_ipa;
        let dtb_ipa = layout.dtb_ipa;
        let vcpus = (0..spec.vcpus as usize)
            .map(|i| {
                let mpidr = mpidrs[i];
                let fastpath = FASTPATH.load(Ordering::Relaxed);
                let config = VcpuConfig {
                    stage2_root: stage2.root_pa(),
                    vmid: 0,
                    mpidr,
                    flags: if gicv3 { CONFIG_GICV3 } else { 0 }
                        | if pmu { CONFIG_PMU } else { 0 }
                        | if fastpath { 0 } else { CONFIG_NO_FASTPATH },
                    consts: if fastpath {
                        devices::gic::const_regs(&vgic, guest_its.as_deref(), i)
                    } else {
                        ConstRegs::default()
                    },
                    sgi_table: if fastpath { vgic.sgi_table_pa() } else { 0 },
                };
                let ctx = VcpuContext::reset(entry, dtb_ipa, config, cntvoff);
                Vcpu {
                    index: i,
                    mpidr,
                    slot: crate::sched::slot::VcpuSlot::new(pin.and_then(|p| p.get(i).copied())),
                    ppi_lines: core::sync::atomic::AtomicU8::new(0),
                    power: if i == 0 { VcpuPower::new_on() } else { VcpuPower::new_off() },
                    entry: VcpuEntry::new(),
                    ctx: UnsafeCell::new(Box::new(ctx)),
                    doorbell: crate::sched::doorbell::VpeDoorbell::new(),
                }
            })
            .collect::<Vec<_>>();
        steps.after("vCPUs")?;
        let vm = Vm {
            id,
            name: spec.name.clone(),
            ram,
            gicv3,
            stage2: spin::Mutex::new(stage2.take()),
            vgic,
            its: guest_its,
            direct,
            vmid: vmid::VmidSlot::new(),
            running: AtomicUsize::new(vcpus.len()),
            vcpus,
            uart,
            bus,
            mem_lock: spin::Mutex::new(()),
            cmo: cmo::PendingOps::new(),
            stats: VmStats::default(),
            exit_status: AtomicU64::new(NO_STATUS),
            end: spin::Mutex::new(None),
            boot: BootImages { kernel: spec.kernel.clone(), initrd: spec.initrd.clone(), dtb, layout },
            cntvoff,
        };
        vm.populate(true);
        steps.after("the VM as a whole")?;
        Ok(vm)
    }

    /// Writes the images into guest memory (and zeroes it first on creation),
    /// then records what was written for the cache maintenance that must
    /// happen before a vCPU runs (docs/run-loop.md §7).
    fn populate(&self, zero: bool) {
        let _mem = self.mem_lock.lock();
        let b = &self.boot;
        // SAFETY: the RAM block belongs to this VM alone and is identity mapped;
        // the layout was checked to fit inside it; no vCPU of the VM runs
        // (creation, or a reset that parked them all).
        unsafe {
            if zero {
                core::ptr::write_bytes(self.ram.host_ptr(self.ram.ipa), 0, self.ram.size as usize);
            }
            copy_in(&self.ram, b.layout.kernel_ipa, &b.kernel);
            copy_in(&self.ram, b.layout.dtb_ipa, &b.dtb);
            if let (Some(ipa), Some(initrd)) = (b.layout.initrd_ipa, &b.initrd) {
                copy_in(&self.ram, ipa, initrd);
            }
        }
        if zero {
            self.cmo.populated(cmo::Region { ipa: self.ram.ipa, pa: self.ram.pa, len: self.ram.size });
        } else {
            let add = |ipa: u64, len: usize| {
                self.cmo.populated(cmo::Region { ipa, pa: self.ram.pa + (ipa - self.ram.ipa), len: len as u64 })
            };
            add(b.layout.kernel_ipa, b.kernel.len());
            add(b.layout.dtb_ipa, b.dtb.len());
            if let (Some(ipa), Some(initrd)) = (b.layout.initrd_ipa, &b.initrd) {
                add(ipa, initrd.len());
            }
        }
    }

    /// Performs the VM-wide cache maintenance if it is pending; called by each
    /// vCPU before it enters the guest.
    pub fn perform_pending_cmo(&self) {
        self.cmo.perform_pending(&self.mem_lock, &HostCacheOps);
    }

    /// Reloads the images for a PSCI `SYSTEM_RESET`; the caller has stopped
    /// every other vCPU of the VM.
    pub fn reload(&self) {
        self.vgic.reset();
        if let Some(its) = &self.its {
            its.reset();
        }
        if let Some(direct) = &self.direct {
            direct.reset();
        }
        self.populate(false);
    }

    pub fn boot_entry(&self) -> (u64, u64) {
        (self.boot.layout.entry_ipa, self.boot.layout.dtb_ipa)
    }

    /// The vCPUs in `kicks` may have a vLPI pending in their vPE's table
    /// that no doorbell announces (an INV that enabled it): each must run,
    /// even out of a WFI, for the GIC to look (docs/interrupts.md §11).
    #[cold]
    #[inline(never)]
    fn vpes_may_have_pending(&self, kicks: Kicks) {
        for v in kicks.iter().filter_map(|i| self.vcpus.get(i)) {
            v.doorbell.may_be_pending(v.entry.requests(), || crate::sched::kick(v));
        }
    }

    /// Makes the vCPUs in `kicks` look at their interrupts.
    pub fn kick(&self, kicks: Kicks) {
        let mut bits = kicks.0;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(v) = self.vcpus.get(i) {
                crate::sched::request(v, crate::sched::work::WORK_NOTIFY);
            }
        }
    }

    fn console_line(&self, text: &str) {
        println!("{}: {text}", self.name);
        if let Some(n) = outcome::parse_exit_line(text) {
            self.exit_status.store(n.into(), Ordering::Relaxed);
        }
    }

    /// Whether a line about what the guest did (`event`) may be printed
    /// now; rate-limited per kind (`vm::ratelimit`), counted in its
    /// statistics when not.
    pub fn may_log(&self, event: GuestEvent) -> Option<Suppressed> {
        self.stats.logs.admit(event, timer::now(), timer::ticks_from_us(LOG_WINDOW_US))
    }

    /// Ends the VM (first reason wins): every vCPU is asked to stop.
    pub fn request_end(&self, reason: EndReason) {
        {
            let mut end = self.end.lock();
            if end.is_none() {
                *end = Some(reason);
            }
        }
        for v in &self.vcpus {
            crate::sched::request(v, crate::sched::work::WORK_STOP);
        }
    }

    pub fn ending(&self) -> bool {
        self.end.lock().is_some()
    }

    /// A vCPU stopped for good; the last one ends the VM. Returns true then.
    pub fn vcpu_stopped(&self, vcpu: &Vcpu) -> bool {
        // SAFETY: the vCPU has stopped; its context is no longer run.
        let counters = unsafe { (*vcpu.ctx.get()).counters };
        self.stats.add_el2(&counters);
        self.stats.doorbells.fetch_add(vcpu.doorbell.rings(), Ordering::Relaxed);
        self.running.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Prints how the VM ended, its `EXIT` line and its statistics (after
    /// the console's last partial line); its verdict.
    pub fn report_end(&self) -> Verdict {
        if let Some(rest) = self.uart.flush() {
            self.console_line(&rest);
        }
        let reason = self.end.lock().clone().unwrap_or(EndReason::Stopped("no vCPU left running".into()));
        let status = self.status();
        let verdict = outcome::verdict(&reason, status);
        let how = match &reason {
            EndReason::SystemOff => String::from("system off"),
            EndReason::Stopped(why) => alloc::format!("stopped: {why}"),
        };
        let status_text = match status {
            Some(n) => alloc::format!("EXIT: STATUS={n}"),
            None => String::from("no EXIT line"),
        };
        println!("vm {}: ended ({how}), {status_text}, verdict {verdict:?}", self.name);
        for line in alloc::format!("{}", self.stats.report(self.cmo_figures())).lines() {
            println!("vm {}: {line}", self.name);
        }
        verdict
    }

    fn status(&self) -> Option<u32> {
        match self.exit_status.load(Ordering::Relaxed) {
            NO_STATUS => None,
            n => u32::try_from(n).ok(),
        }
    }

    fn cmo_figures(&self) -> CmoFigures {
        let c = self.cmo.counters();
        CmoFigures { epochs: c.epochs, regions: c.regions, bytes: c.bytes }
    }
}

/// The VM's share of the host's interrupt state (`gic::vgic::budget`),
/// reserved now so that no other VM can take it.
fn interrupt_state_share(spec: &VmSpec) -> Result<Arc<Share>, String> {
    let host = &budget::INTERRUPT_STATE;
    let per_vm_max = its::MAX_ITES + its::MAX_DEVICES + MAX_LPIS;
    let entries = match spec.interrupt_state {
        Some(n) => n as usize,
        None => budget::default_share(host.limit(), per_vm_max),
    };
    Share::reserve(host, entries).ok_or_else(|| {
        alloc::format!(
            "no room for its share of {entries} entries of interrupt state: {} of the host's {} are reserved",
            host.used(),
            host.limit()
        )
    })
}

/// The VM's stage 2: its RAM as normal memory and, for a GICv2 guest, the
/// hardware's virtual CPU interface where the guest expects its GICC. A
/// table half built is destroyed before the error returns.
fn guest_stage2(ram: &GuestRam, gicv3: bool) -> Result<UnusedStage2, String> {
    let mut stage2 = UnusedStage2(Some(Stage2::new(HostFrames).map_err(|e| alloc::format!("stage 2: {e}"))?));
    let gicv = if gicv3 { None } else { crate::gic::gicv_base() };
    let block = guest_map::RamBlock { ipa: ram.ipa, pa: ram.pa, size: ram.size };
    guest_map::map_guest(&mut stage2, block, gicv, &El2Tlb)?;
    Ok(stage2)
}

/// A stage 2 that no vCPU has run on: until the VM takes it, dropping it
/// destroys it (under VMID 0: no TLB holds anything of it yet), so that a
/// build failing after it frees its tables.
struct UnusedStage2(Option<Stage2<HostFrames>>);

impl UnusedStage2 {
    fn take(mut self) -> Option<Stage2<HostFrames>> {
        self.0.take()
    }
}

impl core::ops::Deref for UnusedStage2 {
    type Target = Stage2<HostFrames>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("Some until take() consumes it")
    }
}

impl core::ops::DerefMut for UnusedStage2 {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("Some until take() consumes it")
    }
}

impl Drop for UnusedStage2 {
    fn drop(&mut self) {
        if let Some(stage2) = self.0.take() {
            stage2.destroy(0, &El2Tlb);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(stage2) = self.stage2.get_mut().take() {
            stage2.destroy(self.vmid.vmid(), &El2Tlb);
        }
        vmid::vmids().release(&self.vmid, hyp::tlb_flush_vmid);
        // The RAM goes back to the allocator when the field drops, after
        // stage 2 no longer maps it.
    }
}

impl DeviceHost for Vm {
    #[inline(always)]
    fn vgic(&self) -> &Vgic {
        &self.vgic
    }

    fn console_line(&self, text: &str) {
        Vm::console_line(self, text);
    }
}

impl LpiHost for Vm {
    type Memory = GuestRam;

    fn guest_memory(&self) -> &GuestRam {
        &self.ram
    }

    /// On a GICv4 the GIC delivers them (or rings a doorbell), else the
    /// vGIC lists them.
    fn apply_lpi_effects(&self, effects: &[Effect]) -> Kicks {
        if let Some(direct) = &self.direct {
            let kicks = direct.apply(effects, &mut |vcpu, intid| self.vgic.lpi_property(&self.ram, vcpu, intid));
            if !kicks.is_empty() {
                self.vpes_may_have_pending(kicks);
            }
            return Kicks::default();
        }
        self.vgic.apply_its(&self.ram, effects)
    }

    fn share_spent(&self, refused: u64, entries: usize) {
        if let Some(left_out) = self.may_log(GuestEvent::OverShare) {
            log::warn!(
                "vm {}: {refused} ITS command(s) refused: its share of the host's interrupt state ({entries} entries for devices and translations) is in use{left_out}",
                self.name
            );
        }
    }
}

/// Guest RAM as the ITS and the vGIC read their tables from it.
impl GuestMemory for GuestRam {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), ()> {
        if !self.contains(ipa, buf.len() as u64) {
            return Err(());
        }
        // SAFETY: the range was checked to lie in the VM's RAM, which stays
        // allocated while the VM lives; the guest may change it meanwhile,
        // which gives a torn value but no unsoundness for plain bytes.
        unsafe { core::ptr::copy_nonoverlapping(self.host_ptr(ipa), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, ipa: u64, buf: &[u8]) -> Result<(), ()> {
        if !self.contains(ipa, buf.len() as u64) {
            return Err(());
        }
        // SAFETY: as for `read`.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), self.host_ptr(ipa), buf.len()) };
        Ok(())
    }
}

/// # Safety
/// `[ipa, ipa + bytes.len())` lies in `ram`, which nobody else accesses.
unsafe fn copy_in(ram: &GuestRam, ipa: u64, bytes: &[u8]) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ram.host_ptr(ipa), bytes.len()) };
}

pub struct HostCacheOps;

impl cmo::CacheOps for HostCacheOps {
    fn clean_inval_poc(&self, pa: u64, len: u64) {
        cache::clean_inval_poc(pa as usize, len as usize);
    }

    fn invalidate_icache(&self) {
        cache::invalidate_icache();
    }
}
