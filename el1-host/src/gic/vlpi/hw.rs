//! The physical ITS at work: LPIs enabled on every redistributor, a
//! collection per CPU, the self-test LPI, and (GICv4.0) each VM's device,
//! vPEs, doorbells and vPE residency.

use super::map::{VlpiMap, VpeIds};
use crate::gic::its::LpiTables;
use crate::gic::its::{self, Command, PhysIts};
use crate::gic::vgic::its::{Effect, LPI_BASE};
use crate::gic::vgic::Kicks;
use crate::mm;
use crate::smp;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use ferrovisor_shared::its::{
    GICR_VPENDBASER, GICR_VPROPBASER, VPENDBASER_DIRTY, VPENDBASER_PENDING_LAST, VPENDBASER_VALID,
};
use spin::{Mutex, Once};

/// The host's LPI INTID space: 8192 up to 2^14.
const HOST_ID_BITS: u8 = 14;
/// An LPI the boot self-check sends itself through the ITS.
pub const SELFTEST_LPI: u32 = LPI_BASE;
const SELFTEST_DEVICE: u32 = 0;
/// vPEs at once (over all VMs); vPE `n`'s doorbell is LPI `DOORBELL_BASE + n`.
pub const MAX_VPES: usize = 64;
const DOORBELL_BASE: u32 = LPI_BASE + 64;
/// Physical DeviceIDs: 0 is the self-test's, the others one per VM.
const MAX_DEVICES: u32 = 64;
/// A directly injected VM's vINTIDs: the vGIC's LPI range (16 bits).
const VM_ID_BITS: u8 = crate::gic::vgic::LPI_ID_BITS as u8;
const VM_EVENTS: u32 = (1 << VM_ID_BITS) - LPI_BASE;
const HOST_PRIORITY: u8 = 0x80;
const POLL_LIMIT: u32 = 1_000_000;

struct Host {
    its: Mutex<PhysIts<its::Mmio>>,
    direct: bool,
    /// Bitmaps of the DeviceIDs and vPE IDs in use.
    ids: Mutex<(u64, u64)>,
}

static HOST: Once<Host> = Once::new();
static SELFTEST_HITS: AtomicU32 = AtomicU32::new(0);
/// vPE n's owner: `(vm id + 1) << 8 | vcpu index`, 0 when free.
static DOORBELL_OWNER: [AtomicUsize; MAX_VPES] = [const { AtomicUsize::new(0) }; MAX_VPES];
static SEND_FAILED: AtomicBool = AtomicBool::new(false);

/// Physically contiguous, zeroed, identity-mapped memory for the GIC's tables.
#[derive(Debug)]
struct Table {
    pa: u64,
    frames: usize,
}

impl Table {
    fn new(bytes: usize, align: usize) -> Option<Self> {
        let frames = bytes.max(align).div_ceil(mm::FRAME_SIZE).next_power_of_two();
        let pa = mm::frames().lock().alloc(frames)?;
        // SAFETY: frames just allocated to us, identity mapped as normal memory.
        unsafe { core::ptr::write_bytes(pa as usize as *mut u8, 0, frames * mm::FRAME_SIZE) };
        Some(Self { pa, frames })
    }

    fn free(self) {
        mm::frames().lock().dealloc(self.pa, self.frames);
    }
}

struct Frames;

// SAFETY: `Table::new` gives zeroed frames from the frame allocator, identity
// mapped as normal write-back memory, aligned to their power-of-two size (at
// least `align`), and the host's ITS tables are never freed.
unsafe impl its::TableMemory for Frames {
    fn alloc_zeroed(&mut self, bytes: usize, align: usize) -> Option<u64> {
        // The host's ITS tables live as long as the host.
        Table::new(bytes, align).map(|t| t.pa)
    }
}

/// What the ITS gives the host, for the banner and the VMs.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// Guests' LPIs go to the physical ITS as vLPIs (GICv4.0).
    pub direct: bool,
}

/// Enables LPIs on the redistributors of CPUs `0..cpus`, brings the ITS up
/// with a collection per CPU and maps the self-test LPI. Direct injection is
/// used when `want_direct` and the ITS has vLPIs.
///
/// # Errors
/// What failed, in words.
///
/// # Safety
/// `its_base` is the device tree's ITS, identity mapped as device memory; the
/// GIC's distributor and redistributors are initialised (`gic::init`); this
/// runs once, on the boot CPU.
pub unsafe fn init(its_base: u64, cpus: usize, want_direct: bool) -> Result<Features, String> {
    let prop_bytes = its::LpiTables::prop_table_bytes(HOST_ID_BITS);
    let prop = Table::new(prop_bytes, mm::FRAME_SIZE).ok_or("no memory for the LPI property table")?;
    // SAFETY: the table just allocated, `prop_bytes` long, ours alone until
    // the redistributors are told about it below.
    let table = unsafe { core::slice::from_raw_parts_mut(prop.pa as usize as *mut u8, prop_bytes) };
    table[(SELFTEST_LPI - LPI_BASE) as usize] = LpiTables::lpi_config(HOST_PRIORITY, true);
    for n in 0..MAX_VPES {
        table[(DOORBELL_BASE - LPI_BASE) as usize + n] = LpiTables::lpi_config(HOST_PRIORITY, true);
    }
    barrier();
    let propbaser = its::LpiTables::propbaser(prop.pa, HOST_ID_BITS);
    for cpu in 0..cpus {
        let rd = crate::gic::rd_frame(cpu).ok_or("a CPU without a redistributor")?;
        let pend = Table::new(its::LpiTables::pend_table_bytes(HOST_ID_BITS), 64 << 10)
            .ok_or("no memory for a pending table")?;
        // SAFETY: the redistributor `gic::init` found for `cpu`, mapped; its
        // LPIs are enabled once, here.
        unsafe { its::enable_lpis(rd, propbaser, its::LpiTables::pendbaser(pend.pa, true)) }
            .map_err(|e| alloc::format!("cpu{cpu}'s redistributor: {e}"))?;
    }
    // SAFETY: our caller's promise about `its_base`.
    let regs = unsafe { its::Mmio::new(its_base) };
    let max_vpes = if want_direct { MAX_VPES as u32 } else { 0 };
    let mut phys = PhysIts::init(regs, &mut Frames, MAX_DEVICES, max_vpes).map_err(|e| alloc::format!("{e}"))?;
    // The vLPI tables are written by the CPU and read by the GIC with no
    // cache maintenance: only for an ITS that took them as coherent.
    let direct = want_direct && phys.typer().virtual_lpis && phys.coherent();
    let mut cmds = Vec::new();
    for cpu in 0..cpus {
        cmds.push(Command::mapc(cpu as u16, rdbase(&phys, cpu), true));
    }
    let itt = Table::new(phys.itt_bytes(1), 256).ok_or("no memory for the self-test ITT")?;
    cmds.push(Command::mapd(SELFTEST_DEVICE, itt.pa, 1, true));
    cmds.push(Command::mapti(SELFTEST_DEVICE, 0, SELFTEST_LPI, 0));
    cmds.push(Command::sync(rdbase(&phys, 0)));
    phys.send(&cmds).map_err(|e| alloc::format!("{e}"))?;
    HOST.call_once(|| Host { its: Mutex::new(phys), direct, ids: Mutex::new((1 << SELFTEST_DEVICE, 0)) });
    Ok(Features { direct })
}

fn rdbase(phys: &PhysIts<its::Mmio>, cpu: usize) -> u64 {
    phys.rdbase(crate::gic::rd_frame(cpu).unwrap_or(0), crate::gic::processor_number(cpu))
}

/// Makes table writes visible to the GIC before a command or register write
/// that makes it read them.
fn barrier() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISHST);
}

fn send(cmds: &[Command]) {
    let Some(host) = HOST.get() else { return };
    report(host.its.lock().send(cmds));
}

/// Logs the first failed ITS command batch (later ones would only repeat it).
fn report(sent: Result<(), its::ItsError>) {
    if let Err(e) = sent {
        if !SEND_FAILED.swap(true, Ordering::Relaxed) {
            log::error!("ITS: {e}");
        }
    }
}

/// Sends the self-test LPI to CPU 0 and says whether it arrived within
/// `timeout_us`. Call with IRQs enabled on CPU 0.
pub fn selftest(timeout_us: u64) -> bool {
    use crate::arch::aarch64::timer;
    let before = SELFTEST_HITS.load(Ordering::Relaxed);
    send(&[Command::int(SELFTEST_DEVICE, 0)]);
    let deadline = timer::now() + timer::ticks_from_us(timeout_us);
    while timer::now() < deadline {
        if SELFTEST_HITS.load(Ordering::Relaxed) != before {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Where a doorbell goes: (VM id, vCPU index) to the VM registry, which
/// finds the vCPU under RCU and kicks it. Registered at start-up rather than
/// called upward, so the GIC code does not depend on the VMs.
pub type DoorbellHandler = fn(usize, usize);

static DOORBELL_HANDLER: spin::Once<DoorbellHandler> = spin::Once::new();

/// Sets the function doorbells call, from the IRQ handler: it must take no
/// lock (docs/interrupts.md).
pub fn set_doorbell_handler(handler: DoorbellHandler) {
    DOORBELL_HANDLER.call_once(|| handler);
}

/// What the IRQ handler does with LPI `intid`; `false` if it is not one of
/// the host's.
pub fn handle_lpi(intid: u32) -> bool {
    if intid == SELFTEST_LPI {
        SELFTEST_HITS.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let Some(n) = intid.checked_sub(DOORBELL_BASE).map(|n| n as usize).filter(|&n| n < MAX_VPES) else {
        return false;
    };
    let owner = DOORBELL_OWNER[n].load(Ordering::Acquire);
    if owner != 0 {
        if let Some(ring) = DOORBELL_HANDLER.get() {
            ring((owner >> 8) - 1, owner & 0xff);
        }
    }
    true
}

/// A VM's device, vPEs and tables in the physical ITS (GICv4.0).
pub struct DirectVm {
    /// The mappings, and a command buffer kept to spare an allocation on
    /// every guest `INT`.
    map: Mutex<(VlpiMap, Vec<Command>)>,
    vpes: Vec<VpeIds>,
    /// The CPU whose redistributor each vPE is mapped to (VMAPP, VMOVP).
    mapped_cpu: Vec<AtomicUsize>,
    vprop: Option<Table>,
    itt: Option<Table>,
    vpts: Vec<Table>,
}

impl DirectVm {
    /// Maps a device and a vPE per vCPU for VM `vm_id`; `None` without direct
    /// injection.
    ///
    /// # Errors
    /// Out of DeviceIDs, vPEs or memory, or the ITS failed; nothing is left
    /// allocated.
    pub fn new(vm_id: usize, nr_vcpus: usize) -> Result<Option<Self>, String> {
        let Some(host) = HOST.get().filter(|h| h.direct) else { return Ok(None) };
        let (device, vpeids) = {
            let mut ids = host.ids.lock();
            let free_devices = !ids.0 & (u64::MAX >> (64 - MAX_DEVICES));
            let device = free_devices.trailing_zeros();
            let vpeids: Vec<u16> = (0..MAX_VPES as u16).filter(|&v| ids.1 & (1 << v) == 0).take(nr_vcpus).collect();
            if free_devices == 0 || vpeids.len() < nr_vcpus {
                return Err(String::from("no free ITS device or vPE for direct vLPI injection"));
            }
            ids.0 |= 1 << device;
            for &v in &vpeids {
                ids.1 |= 1 << v;
            }
            (device, vpeids)
        };
        let vpes: Vec<VpeIds> =
            vpeids.iter().map(|&vpeid| VpeIds { vpeid, doorbell: DOORBELL_BASE + u32::from(vpeid) }).collect();
        let mut vm = DirectVm {
            map: Mutex::new((VlpiMap::new(device, vpes.clone(), VM_EVENTS), Vec::with_capacity(8))),
            mapped_cpu: (0..nr_vcpus).map(|_| AtomicUsize::new(0)).collect(),
            vpes,
            vprop: None,
            itt: None,
            vpts: Vec::new(),
        };
        // From here `Drop` gives back whatever was taken.
        let itt_bytes = host.its.lock().itt_bytes(VM_ID_BITS);
        vm.itt = Some(Table::new(itt_bytes, 256).ok_or("no memory for the VM's ITT")?);
        vm.vprop = Some(Table::new(VM_EVENTS as usize, mm::FRAME_SIZE).ok_or("no memory for the vLPI properties")?);
        for _ in 0..nr_vcpus {
            let vpt = Table::new(its::LpiTables::pend_table_bytes(VM_ID_BITS), 64 << 10)
                .ok_or("no memory for a vPE table")?;
            vm.vpts.push(vpt);
        }
        let mut cmds = alloc::vec![Command::mapd(device, vm.itt.as_ref().map_or(0, |t| t.pa), VM_ID_BITS, true)];
        {
            let phys = host.its.lock();
            for (vpe, vpt) in vm.vpes.iter().zip(&vm.vpts) {
                cmds.push(Command::vmapp(vpe.vpeid, rdbase(&phys, 0), vpt.pa, VM_ID_BITS - 1, true));
            }
            cmds.push(Command::sync(rdbase(&phys, 0)));
        }
        barrier();
        host.its.lock().send(&cmds).map_err(|e| alloc::format!("ITS: {e}"))?;
        for (i, vpe) in vm.vpes.iter().enumerate() {
            DOORBELL_OWNER[usize::from(vpe.vpeid)].store(((vm_id + 1) << 8) | i, Ordering::Release);
        }
        Ok(Some(vm))
    }

    /// Does what the guest's ITS commands did to its LPIs; `guest_property`
    /// reads a guest LPI's (priority, enable) from the guest's table.
    ///
    /// Returns the vCPUs to kick (see [`VlpiMap::apply`]).
    pub fn apply(&self, effects: &[Effect], guest_property: &mut dyn FnMut(usize, u32) -> (u8, bool)) -> Kicks {
        let mut kicks = Kicks::default();
        let Some(vprop) = self.vprop.as_ref() else { return kicks };
        let mut guard = self.map.lock();
        let (map, cmds) = &mut *guard;
        cmds.clear();
        // SAFETY: the VM's own property table, written only under `map`'s
        // lock; the GIC only reads it.
        let table = unsafe { core::slice::from_raw_parts_mut(vprop.pa as usize as *mut u8, VM_EVENTS as usize) };
        for e in effects {
            map.apply(e, table, guest_property, cmds, &mut kicks);
        }
        if !cmds.is_empty() {
            barrier();
            send(cmds);
        }
        kicks
    }

    /// Makes vCPU `vcpu`'s vPE resident on this CPU (`cpu`), moving it to this
    /// CPU's redistributor first if it was elsewhere. Before every entry:
    /// the common case, already resident, is a single load.
    #[inline]
    pub fn load(&self, vcpu: usize, cpu: usize) {
        let resident = self
            .vpes
            .get(vcpu)
            .zip(smp::CPUS.get(cpu))
            .is_some_and(|(vpe, c)| c.vpe_resident.load(Ordering::Relaxed) == u32::from(vpe.vpeid) + 1);
        if !resident {
            self.make_resident(vcpu, cpu);
        }
    }

    fn make_resident(&self, vcpu: usize, cpu: usize) {
        let (Some(vpe), Some(vpt), Some(vprop)) = (self.vpes.get(vcpu), self.vpts.get(vcpu), self.vprop.as_ref())
        else {
            return;
        };
        let Some(here) = smp::CPUS.get(cpu) else { return };
        let tag = u32::from(vpe.vpeid) + 1;
        match here.vpe_resident.load(Ordering::Relaxed) {
            t if t == tag => return,
            0 => {}
            _ => {
                make_non_resident(cpu);
            }
        }
        if self.mapped_cpu[vcpu].load(Ordering::Relaxed) != cpu {
            let Some(host) = HOST.get() else { return };
            let mut phys = host.its.lock();
            let target = rdbase(&phys, cpu);
            report(phys.send(&[Command::vmovp(vpe.vpeid, target, 0, 0), Command::vsync(vpe.vpeid)]));
            drop(phys);
            self.mapped_cpu[vcpu].store(cpu, Ordering::Relaxed);
        }
        let Some(rd) = crate::gic::rd_frame(cpu) else { return };
        // SAFETY: this CPU's VLPI frame (GICv4 redistributors have one); no vPE
        // is resident on it (checked above).
        unsafe {
            ((rd as usize + GICR_VPROPBASER) as *mut u64)
                .write_volatile(its::LpiTables::vpropbaser(vprop.pa, VM_ID_BITS));
            ((rd as usize + GICR_VPENDBASER) as *mut u64).write_volatile(its::LpiTables::vpendbaser(vpt.pa, true));
        }
        here.vpe_resident.store(tag, Ordering::Relaxed);
    }

    /// Makes vCPU `vcpu`'s vPE non-resident on `cpu` if it is; returns the GIC's
    /// `PendingLast` (a vLPI is pending for it).
    pub fn put(&self, vcpu: usize, cpu: usize) -> bool {
        let Some(vpe) = self.vpes.get(vcpu) else { return false };
        if smp::CPUS.get(cpu).is_none_or(|c| c.vpe_resident.load(Ordering::Relaxed) != u32::from(vpe.vpeid) + 1) {
            return false;
        }
        make_non_resident(cpu)
    }

    /// `SYSTEM_RESET`: every mapping goes (MAPD off and on again), every vLPI
    /// is disabled.
    pub fn reset(&self) {
        let Some(vprop) = self.vprop.as_ref() else { return };
        let mut guard = self.map.lock();
        let map = &mut guard.0;
        map.clear();
        // SAFETY: as in `apply`, under the same lock.
        unsafe { core::ptr::write_bytes(vprop.pa as usize as *mut u8, 0, VM_EVENTS as usize) };
        barrier();
        let itt = self.itt.as_ref().map_or(0, |t| t.pa);
        let mut cmds = alloc::vec![
            Command::mapd(map.device(), itt, VM_ID_BITS, false),
            Command::mapd(map.device(), itt, VM_ID_BITS, true)
        ];
        cmds.extend(self.vpes.iter().map(|v| Command::vinvall(v.vpeid)));
        drop(guard);
        send(&cmds);
    }
}

/// The ITS device IDs and vPE IDs that VMs hold, as bitmaps.
pub fn ids_in_use() -> (u64, u64) {
    HOST.get().map_or((0, 0), |h| *h.ids.lock())
}

impl Drop for DirectVm {
    fn drop(&mut self) {
        let Some(host) = HOST.get() else { return };
        for vpe in &self.vpes {
            DOORBELL_OWNER[usize::from(vpe.vpeid)].store(0, Ordering::Release);
        }
        let device = self.map.get_mut().0.device();
        let mut cmds = Vec::new();
        if let Some(itt) = &self.itt {
            cmds.push(Command::mapd(device, itt.pa, VM_ID_BITS, false));
        }
        let sent = {
            let mut phys = host.its.lock();
            for (vpe, vpt) in self.vpes.iter().zip(&self.vpts) {
                cmds.push(Command::vmapp(vpe.vpeid, rdbase(&phys, 0), vpt.pa, VM_ID_BITS - 1, false));
            }
            cmds.push(Command::sync(rdbase(&phys, 0)));
            phys.send(&cmds)
        };
        if let Err(e) = sent {
            // The GIC may still use the tables: keep them rather than free
            // memory it could write.
            log::error!("ITS: unmapping a VM's vLPIs: {e}; its tables are not freed");
            return;
        }
        for t in self.itt.take().into_iter().chain(self.vprop.take()).chain(self.vpts.drain(..)) {
            t.free();
        }
        let mut ids = host.ids.lock();
        ids.0 &= !(1 << device);
        for vpe in &self.vpes {
            ids.1 &= !(1 << vpe.vpeid);
        }
    }
}

/// Clears `GICR_VPENDBASER.Valid` on `cpu` (this CPU), waits for the GIC to
/// finish with the vPE, and returns `PendingLast`.
fn make_non_resident(cpu: usize) -> bool {
    let Some(here) = smp::CPUS.get(cpu) else { return false };
    here.vpe_resident.store(0, Ordering::Relaxed);
    let Some(rd) = crate::gic::rd_frame(cpu) else { return false };
    let reg = (rd as usize + GICR_VPENDBASER) as *mut u64;
    // SAFETY: this CPU's VLPI frame, mapped as device memory.
    let value = unsafe { reg.read_volatile() };
    // SAFETY: as above; clearing Valid is how a vPE is made non-resident.
    unsafe { reg.write_volatile(value & !VPENDBASER_VALID) };
    for _ in 0..POLL_LIMIT {
        // SAFETY: as above.
        let now = unsafe { reg.read_volatile() };
        if now & VPENDBASER_DIRTY == 0 {
            return now & VPENDBASER_PENDING_LAST != 0;
        }
        core::hint::spin_loop();
    }
    log::warn!("cpu{cpu}: GICR_VPENDBASER.Dirty stayed set");
    true
}
