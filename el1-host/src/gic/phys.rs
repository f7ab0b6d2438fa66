//! The physical GIC, driven through `arm-gic`: GICv2 (QEMU virt
//! `gic-version=2`, the Raspberry Pi 4's GIC-400) or GICv3/v4 with a
//! redistributor per CPU. ITS, GICv4 and GICv4.1 are detected here; the ITS
//! is driven by `its` and `vlpi`.

use crate::arch::aarch64::cpu;
use crate::smp;
use arm_gic::gicv2::{GicV2, SgiTarget as SgiTargetV2, SgiTargetListFilter};
use arm_gic::gicv3::{GicCpuInterface, GicV3, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, InterruptGroup, Trigger, UniqueMmioPointer};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use ferrovisor_shared::dt::GicDesc;
use ferrovisor_shared::gic::*;
use spin::{Mutex, Once};

/// What the GIC is, for the banner and the rest of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    /// GICv3 or GICv4 (`arch_rev` from GICD_PIDR2): ITS present, and whether
    /// every redistributor has the GICv4.1 vPE features (RVPEID).
    V3 {
        arch_rev: u8,
        its: bool,
        /// Every redistributor has vLPIs (GICR_TYPER.VLPIS): GICv4.
        v4: bool,
        v4_1: bool,
    },
}

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        match self {
            Self::V2 => write!(f, "GICv2"),
            Self::V3 { arch_rev, its, v4_1, .. } => {
                write!(f, "GICv{arch_rev} (ITS: {}, GICv4.1: {})", yn(*its), yn(*v4_1))
            }
        }
    }
}

enum Driver {
    V2(GicV2<'static>),
    V3(GicV3<'static>),
}

// SAFETY: the driver holds pointers to MMIO registers; every access goes
// through the mutex below.
unsafe impl Send for Driver {}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

/// Runs `f` on the driver with IRQs masked, so that the IRQ handler (which
/// needs the driver on GICv2) never finds the lock held by the code it
/// interrupted on the same CPU.
fn with_driver<R>(f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    let was_enabled = cpu::irqs_enabled();
    cpu::irq_disable();
    let result = DRIVER.lock().as_mut().map(f);
    if was_enabled {
        cpu::irq_enable();
    }
    result
}
static VERSION: Once<Version> = Once::new();

/// Priority for the host's own interrupts.
const PRIORITY: u8 = 0x80;

/// Initialises the distributor (and every redistributor) on the boot CPU.
///
/// # Errors
/// A redistributor count that does not match the CPUs, named in the message.
///
/// # Safety
/// `desc` comes from the board's device tree, the regions are identity mapped
/// as device memory, and this runs once.
pub unsafe fn init(desc: &GicDesc, mpidrs: &[u64]) -> Result<Version, &'static str> {
    for (c, &m) in smp::CPUS.iter().zip(mpidrs) {
        c.mpidr.store(m, Ordering::Relaxed);
    }
    let (driver, version) = match *desc {
        GicDesc::V2 { gicd, gicc, gicv, maintenance_irq, .. } => {
            GICD_BASE.store(gicd.base, Ordering::Relaxed);
            GICC_BASE.store(gicc.base, Ordering::Relaxed);
            if let Some(v) = gicv {
                GICV_BASE.store(v.base, Ordering::Relaxed);
            }
            MAINTENANCE.store(maintenance_intid_or_default(maintenance_irq), Ordering::Relaxed);
            // SAFETY: addresses from the device tree, mapped as device memory,
            // and this is the only driver instance.
            let mut gic = unsafe { GicV2::new(gicd.base as *mut _, gicc.base as *mut _) };
            gic.setup();
            // Group 0 in a GIC without security extensions, group 1 (non-secure
            // view) with them: bit 0 of GICD_CTLR either way.
            gic.enable_group0(true);
            (Driver::V2(gic), Version::V2)
        }
        GicDesc::V3 { gicd, gicr, its, maintenance_irq, .. } => {
            let gicr_base = gicr.base;
            if let Some(r) = its {
                ITS_BASE.store(r.base, Ordering::Relaxed);
            }
            MAINTENANCE.store(maintenance_intid_or_default(maintenance_irq), Ordering::Relaxed);
            // SAFETY: as above.
            let mut gic = unsafe {
                GicV3::new(
                    UniqueMmioPointer::new(NonNull::new(gicd.base as *mut _).ok_or("GICD at address 0")?),
                    NonNull::new(gicr_base as *mut _).ok_or("GICR at address 0")?,
                    mpidrs.len(),
                )
            }
            .map_err(|_| "the redistributor frames do not match the GIC's layout")?;
            let mut v4_1 = true;
            let mut vlpis = true;
            for (cpu, &mpidr) in mpidrs.iter().enumerate() {
                let typer = gic.gicr_typer(cpu).map_err(|_| "fewer redistributors than CPUs")?;
                if mpidr_affinity(typer.core_mpidr()) != mpidr {
                    return Err("redistributor order does not follow the /cpus order");
                }
                // SAFETY: GICR_TYPER of a redistributor `gicr_typer` just found.
                let (raw, frame) = unsafe { redistributor_typer(gicr_base, cpu) };
                if let Some(c) = smp::CPUS.get(cpu) {
                    c.gicr_rd_base.store(frame, Ordering::Relaxed);
                    c.gicr_processor_number.store(((raw >> 8) & 0xffff) as u16, Ordering::Relaxed);
                }
                vlpis &= raw & GICR_TYPER_VLPIS != 0;
                v4_1 &= raw & GICR_TYPER_VLPIS != 0 && raw & GICR_TYPER_RVPEID != 0;
            }
            // SAFETY: GICD_PIDR2 of the distributor the device tree names.
            let pidr2 = unsafe { ((gicd.base as usize + GICD_PIDR2_V3) as *const u32).read_volatile() };
            let arch_rev = ((pidr2 >> PIDR2_ARCHREV_SHIFT) & 0xf) as u8;
            gic.setup(0);
            let v4 = vlpis && arch_rev >= 4;
            (Driver::V3(gic), Version::V3 { arch_rev, its: its.is_some(), v4, v4_1: v4_1 && arch_rev >= 4 })
        }
    };
    *DRIVER.lock() = Some(driver);
    Ok(*VERSION.call_once(|| version))
}

/// Reads GICR_TYPER of CPU `cpu`'s redistributor directly (arm-gic does not
/// expose the VLPIS/RVPEID bits).
///
/// # Safety
/// `gicr_base` is the mapped redistributor region with at least `cpu + 1`
/// redistributors.
unsafe fn redistributor_typer(gicr_base: u64, cpu: usize) -> (u64, u64) {
    // Each redistributor is an RD frame and an SGI frame (64 KiB each), plus
    // two more frames on GICv4 (VLPI and reserved).
    let mut frame = gicr_base as usize;
    for _ in 0..cpu {
        // SAFETY: our caller's promise; walking frame by frame as the GICv3
        // architecture describes.
        let typer = unsafe { ((frame + GICR_TYPER) as *const u64).read_volatile() };
        frame += if typer & GICR_TYPER_VLPIS != 0 { GICR_FRAME_SIZE_VLPIS } else { GICR_FRAME_SIZE };
    }
    // SAFETY: as above.
    (unsafe { ((frame + GICR_TYPER) as *const u64).read_volatile() }, frame as u64)
}

/// The ITS the device tree names (0: none).
static ITS_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// CPU `cpu`'s redistributor RD frame (GICv3).
pub fn rd_frame(cpu: usize) -> Option<u64> {
    smp::CPUS.get(cpu).map(|c| c.gicr_rd_base.load(Ordering::Relaxed)).filter(|&b| b != 0)
}

/// CPU `cpu`'s redistributor's processor number.
pub fn processor_number(cpu: usize) -> u16 {
    smp::CPUS.get(cpu).map_or(0, |c| c.gicr_processor_number.load(Ordering::Relaxed))
}

/// The ITS's base address, if the device tree has one (GICv3).
pub fn its_base() -> Option<u64> {
    Some(ITS_BASE.load(Ordering::Relaxed)).filter(|&b| b != 0)
}

/// The virtual CPU interface (GICv2), mapped into GICv2 guests.
static GICV_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// PPI 9, the architected maintenance interrupt, when the device tree omits it.
const DEFAULT_MAINTENANCE_INTID: u32 = 25;
static MAINTENANCE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(DEFAULT_MAINTENANCE_INTID);

/// The GICv2 virtual CPU interface's physical address (`None` on GICv3 or
/// without virtualization extensions).
pub fn gicv_base() -> Option<u64> {
    Some(GICV_BASE.load(Ordering::Relaxed)).filter(|&b| b != 0)
}

/// The device tree's maintenance interrupt, or INTID 25 (PPI 9, where every
/// GIC-400 and GICv3 implementation we know puts it) with a warning: older
/// Raspberry Pi device trees leave it out.
fn maintenance_intid_or_default(dt: Option<u32>) -> u32 {
    dt.unwrap_or_else(|| {
        log::warn!(
            "the device tree names no GIC maintenance interrupt: taking INTID {DEFAULT_MAINTENANCE_INTID} (PPI 9)"
        );
        DEFAULT_MAINTENANCE_INTID
    })
}

/// The INTID of the GIC's maintenance interrupt.
pub fn maintenance_intid() -> u32 {
    MAINTENANCE.load(Ordering::Relaxed)
}

/// Sets or clears the active state of private interrupt `intid` of the
/// calling CPU, without the driver lock: the registers of private
/// interrupts are banked per CPU (GICv2) or in the CPU's own redistributor.
pub fn set_private_active(intid: u32, active: bool) {
    if intid >= 32 {
        return;
    }
    let off = if active { GICD_ISACTIVER } else { GICD_ICACTIVER };
    let reg = match version() {
        Some(Version::V3 { .. }) => {
            let rd = smp::this_cpu().gicr_rd_base.load(Ordering::Relaxed) as usize;
            if rd == 0 {
                return;
            }
            rd + GICR_SGI_BASE + off
        }
        Some(Version::V2) => GICD_BASE.load(Ordering::Relaxed) as usize + off,
        None => return,
    };
    // SAFETY: GICR_IS/ICACTIVER0 of this CPU's redistributor, or the banked
    // GICD_IS/ICACTIVER0; one bit changes only that interrupt's state.
    unsafe { (reg as *mut u32).write_volatile(1 << intid) };
}

pub fn version() -> Option<Version> {
    VERSION.get().copied()
}

/// Per-CPU set-up, on the CPU itself: CPU interface on, priority mask open,
/// and the private interrupts the host uses enabled.
pub fn init_cpu(cpu: usize, private: &[u32]) {
    with_driver(|driver| match driver {
        Driver::V2(gic) => {
            if cpu != 0 {
                gic.setup();
                gic.enable_group0(true);
            }
            // SAFETY: GICD_ITARGETSR0 is banked per CPU and reads as this CPU's
            // interface bit; the distributor is mapped.
            let read = unsafe { gicd_byte(GICD_ITARGETSR) };
            // A uniprocessor GIC's ITARGETSRs are RAZ/WI (IHI 0048 4.3.12):
            // its one CPU interface is interface 0.
            let me = if read == 0 { 1 } else { read };
            if let Some(c) = smp::CPUS.get(cpu) {
                c.gicv2_target.store(me, Ordering::Relaxed);
            }
            for &intid in private {
                let Ok(id) = IntId::try_from(intid) else { continue };
                gic.set_interrupt_priority(id, PRIORITY);
                if intid >= 16 {
                    gic.set_trigger(id, Trigger::Level);
                }
                let _ = gic.enable_interrupt(id, true);
            }
        }
        Driver::V3(gic) => {
            if cpu != 0 {
                gic.init_cpu(cpu);
                GicCpuInterface::enable_group1(true);
            }
            for &intid in private {
                let Ok(id) = IntId::try_from(intid) else { continue };
                let _ = gic.set_interrupt_priority(id, Some(cpu), PRIORITY);
                if intid >= 16 {
                    let _ = gic.set_trigger(id, Some(cpu), Trigger::Level);
                }
                let _ = gic.enable_interrupt(id, Some(cpu), true);
            }
            GicCpuInterface::set_priority_mask(0xff);
        }
    });
    split_priority_drop_and_deactivation();
}

/// EOImode 1 on this CPU's interface: an EOI only drops the running
/// priority and a separate deactivation ends the interrupt, so the host can
/// leave a guest's hardware-linked interrupt (the virtual timer's) active
/// for the guest to deactivate through its list register.
fn split_priority_drop_and_deactivation() {
    match version() {
        Some(Version::V3 { .. }) => {
            use aarch64_cpu::registers::{Readable, ICC_CTLR_EL1};
            let ctlr = ICC_CTLR_EL1.get() | ICC_CTLR_EL1_EOIMODE;
            // SAFETY: ICC_CTLR_EL1 (aarch64-cpu only reads it); setting
            // EOImode changes only how this CPU's EOIs behave.
            unsafe {
                core::arch::asm!("msr s3_0_c12_c12_4, {}", "isb", in(reg) ctlr, options(nostack, preserves_flags))
            };
        }
        Some(Version::V2) => {
            let ctlr = (GICC_BASE.load(Ordering::Relaxed) as usize + GICC_CTLR) as *mut u32;
            // SAFETY: this CPU's banked GICC_CTLR of the interface `init`
            // mapped; setting EOImode(NS) changes only how EOIs behave.
            unsafe { ctlr.write_volatile(ctlr.read_volatile() | GICC_CTLR_EOIMODE) };
        }
        None => {}
    }
}

/// A byte register of the GICv2 distributor (arm-gic has no ITARGETSR read).
///
/// # Safety
/// The distributor is mapped and `offset` is a byte register of it.
unsafe fn gicd_byte(offset: usize) -> u8 {
    let gicd = GICD_BASE.load(Ordering::Relaxed) as usize;
    // SAFETY: our caller's promise.
    unsafe { ((gicd + offset) as *const u8).read_volatile() }
}

static GICD_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// An acknowledged interrupt: its INTID, and the value the GIC must get back
/// at its end (GICv2 SGIs carry the source CPU in GICC_IAR's upper bits).
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub intid: u32,
    iar: u32,
}

impl Ack {
    /// An interrupt el2 acknowledged on this CPU and left to the host
    /// (`ExitInfo::acked`): `iar` is the `ICC_IAR1_EL1` or `GICC_IAR` value.
    pub fn acked_by_el2(iar: u32) -> Self {
        let intid = match version() {
            Some(Version::V2) => iar & GICC_IAR_INTID,
            _ => iar & 0xff_ffff,
        };
        Self { intid, iar }
    }
}

const GICC_IAR: usize = 0xc;
const GICC_EOIR: usize = 0x10;
static GICC_BASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Acknowledges the highest-priority pending interrupt, if any.
pub fn acknowledge() -> Option<Ack> {
    match version()? {
        Version::V3 { .. } => GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1)
            .map(|id| Ack { intid: id.raw_value(), iar: id.raw_value() }),
        Version::V2 => {
            // SAFETY: GICC_IAR of the CPU interface `init` mapped; it is banked
            // per CPU, so no lock is needed.
            let iar =
                unsafe { ((GICC_BASE.load(Ordering::Relaxed) as usize + GICC_IAR) as *const u32).read_volatile() };
            let intid = iar & GICC_IAR_INTID;
            (intid != SPURIOUS).then_some(Ack { intid, iar })
        }
    }
}

/// Ends (drops priority and deactivates) an acknowledged interrupt.
pub fn end_of_interrupt(ack: Ack) {
    drop_priority(ack);
    deactivate(ack);
}

/// Deactivates an acknowledged interrupt whose priority was dropped.
pub fn deactivate(ack: Ack) {
    match version() {
        Some(Version::V3 { .. }) => {
            // SAFETY: ICC_DIR_EL1 (aarch64-cpu has no accessor) deactivates
            // the interrupt this CPU acknowledged, as EOImode 1 asks.
            unsafe {
                core::arch::asm!("msr s3_0_c12_c11_1, {}", in(reg) u64::from(ack.iar), options(nostack, preserves_flags))
            };
        }
        Some(Version::V2) => {
            // SAFETY: GICC_DIR of this CPU's banked interface, with the
            // GICC_IAR value the interrupt was acknowledged with.
            unsafe { ((GICC_BASE.load(Ordering::Relaxed) as usize + GICC_DIR) as *mut u32).write_volatile(ack.iar) };
        }
        None => {}
    }
}

/// Drops the running priority of an acknowledged interrupt (EOImode 1: it
/// stays active until [`deactivate`], or until a guest deactivates it
/// through a hardware-linked list register).
pub fn drop_priority(ack: Ack) {
    match version() {
        Some(Version::V3 { .. }) => {
            if let Ok(id) = IntId::try_from(ack.iar) {
                GicCpuInterface::end_interrupt(id, InterruptGroup::Group1);
            }
        }
        Some(Version::V2) => {
            // SAFETY: GICC_EOIR of this CPU's banked interface, given the
            // exact GICC_IAR value (source CPU bits included) it was acked with.
            unsafe { ((GICC_BASE.load(Ordering::Relaxed) as usize + GICC_EOIR) as *mut u32).write_volatile(ack.iar) };
        }
        None => {}
    }
}

/// Sends SGI `sgi` to CPU `cpu` (which may be this CPU).
pub fn send_sgi(sgi: u32, cpu: usize) {
    let id = IntId::sgi(sgi);
    match version() {
        Some(Version::V3 { .. }) => {
            let Some(c) = smp::CPUS.get(cpu) else { return };
            let mpidr = c.mpidr.load(Ordering::Relaxed);
            let target = SgiTarget::List {
                affinity3: affinity_level(mpidr, 3),
                affinity2: affinity_level(mpidr, 2),
                affinity1: affinity_level(mpidr, 1),
                target_list: 1 << (mpidr & 0xf),
            };
            let _ = GicCpuInterface::send_sgi(id, target, SgiTargetGroup::CurrentGroup1);
        }
        Some(Version::V2) => {
            let Some(c) = smp::CPUS.get(cpu) else { return };
            let target_list = c.gicv2_target.load(Ordering::Relaxed) as u16;
            if let Some(Driver::V2(gic)) = DRIVER.lock().as_mut() {
                gic.send_sgi(
                    id,
                    SgiTargetV2::List { target_list_filter: SgiTargetListFilter::CPUTargetList, target_list },
                );
            }
        }
        None => {}
    }
}
