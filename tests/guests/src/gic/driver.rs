//! The GIC driver proper: the distributor once (boot CPU, [`init`]), each
//! CPU's own part ([`Gic::cpu_init`]), enabling interrupts, SGIs, and the
//! acknowledge / end-of-interrupt / deactivate cycle.
//!
//! With the MMU off every access is Device-nGnRnE, so the MMIO accesses here
//! are ordered among themselves; a `dsb` before an SGI makes earlier stores
//! visible to the CPU the SGI wakes.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use ferrovisor_shared::boot::MAX_CPUS;
use ferrovisor_shared::dt::GicDesc;
use spin::Once;

use super::*;
use crate::{rt, smp, time};

/// How long a `RWP` or `ChildrenAsleep` wait may take.
const SETTLE_MS: u64 = 100;

/// What can stop the driver from starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicError {
    /// The device tree has no GIC node the reader understands.
    NotInDeviceTree,
    /// No redistributor in the first region has this CPU's affinity.
    NoRedistributor { mpidr: u64 },
    /// `GICR_WAKER.ChildrenAsleep` stayed set.
    StillAsleep { mpidr: u64 },
    /// `GICD_CTLR.RWP` or `GICR_CTLR.RWP` stayed set.
    WritePending,
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInDeviceTree => f.write_str("the device tree has no GICv2 or GICv3 node"),
            Self::NoRedistributor { mpidr } => {
                write!(f, "no redistributor before GICR_TYPER.Last has affinity {mpidr:#x}")
            }
            Self::StillAsleep { mpidr } => {
                write!(f, "GICR_WAKER.ChildrenAsleep still set {SETTLE_MS} ms after waking {mpidr:#x}")
            }
            Self::WritePending => write!(f, "RWP still set after {SETTLE_MS} ms"),
        }
    }
}

/// The GIC the device tree describes.
#[derive(Debug)]
pub struct Gic {
    version: Version,
    gicd: usize,
    /// GICv2's CPU interface.
    gicc: usize,
    /// GICv3's first redistributor region.
    gicr: usize,
    gicr_size: usize,
}

static GIC: Once<Result<Gic, GicError>> = Once::new();
/// Each CPU's redistributor (RD_base), found by [`Gic::cpu_init`].
static REDIST: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// GICv2: each CPU's interface bit (`GICD_ITARGETSR0`'s first byte read by that CPU).
static CPU_MASK: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// Sets up the distributor (the first call only) and then the calling
/// CPU's part; returns the driver.
///
/// # Errors
/// No GIC in the device tree, a redistributor missing or not waking, or a
/// register write that never completes.
pub fn init() -> Result<&'static Gic, GicError> {
    let gic = GIC.call_once(|| {
        let gic = Gic::from_desc(rt::env().board.gic().ok_or(GicError::NotInDeviceTree)?);
        gic.dist_init()?;
        Ok(gic)
    });
    let gic = gic.as_ref().map_err(|e| *e)?;
    gic.cpu_init()?;
    Ok(gic)
}

/// The driver, once [`init`] has succeeded.
pub fn get() -> Option<&'static Gic> {
    GIC.get().and_then(|r| r.as_ref().ok())
}

/// Whom an SGI goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgiTarget {
    /// One CPU by device-tree index.
    Cpu(usize),
    /// Every CPU but the sender (GICv3 `IRM` = 1, GICv2 `TargetListFilter` = 1).
    Others,
    /// The sender (GICv3 its own affinity, GICv2 `TargetListFilter` = 2).
    Myself,
}

// MMIO goes through single `ldr`/`str` instructions with a plain base
// register: a hypervisor emulates a trapped access from the syndrome it
// reports, which a load or store with writeback (what the compiler may emit
// for `read_volatile` in a loop) does not have.
macro_rules! mmio_access {
    ($read:ident, $write:ident, $ty:ty, $ld:literal, $st:literal, $reg:literal) => {
        pub fn $read(addr: usize) -> $ty {
            let v: u64;
            // SAFETY: callers pass addresses inside the GIC's register frames,
            // which the device tree gave us; with the MMU off they are Device
            // memory, and the access has the register's width.
            unsafe { asm!(concat!($ld, " {v:", $reg, "}, [{a}]"), a = in(reg) addr, v = out(reg) v, options(nostack)) };
            v as $ty
        }

        pub fn $write(addr: usize, value: $ty) {
            // SAFETY: as for the read.
            unsafe {
                asm!(concat!($st, " {v:", $reg, "}, [{a}]"), a = in(reg) addr, v = in(reg) value as u64, options(nostack))
            };
        }
    };
}

mmio_access!(read32, write32, u32, "ldr", "str", "w");
mmio_access!(read64, write64, u64, "ldr", "str", "x");
mmio_access!(read8, write8, u8, "ldrb", "strb", "w");

macro_rules! sysreg_read {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading a GIC CPU interface register has no side effect
        // but the one the caller asks for (an IAR read acknowledges).
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nostack)) };
        v
    }};
}

macro_rules! sysreg_write {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writing a GIC CPU interface register changes only the
        // interrupt state the caller means to change; the isb makes it
        // take effect before the next instruction.
        unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) v, options(nostack)) };
    }};
}

fn dsb() {
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack)) };
}

impl Gic {
    fn from_desc(desc: GicDesc) -> Self {
        match desc {
            GicDesc::V2 { gicd, gicc, .. } => {
                Self { version: Version::V2, gicd: gicd.base as usize, gicc: gicc.base as usize, gicr: 0, gicr_size: 0 }
            }
            GicDesc::V3 { gicd, gicr, .. } => Self {
                version: Version::V3,
                gicd: gicd.base as usize,
                gicc: 0,
                gicr: gicr.base as usize,
                gicr_size: gicr.size as usize,
            },
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The distributor's base address.
    pub fn gicd(&self) -> usize {
        self.gicd
    }

    /// GICv2's CPU interface base (0 on GICv3).
    pub fn gicc(&self) -> usize {
        self.gicc
    }

    /// The distributor's `ITLinesNumber`: SPIs end below INTID 32 * (N + 1).
    pub fn max_intid(&self) -> u32 {
        32 * ((read32(self.gicd + GICD_TYPER) & 0x1f) + 1) - 1
    }

    fn wait_rwp(&self, addr: usize, bit: u32) -> Result<(), GicError> {
        time::wait_for(SETTLE_MS, || read32(addr) & bit == 0).map(|_| ()).ok_or(GicError::WritePending)
    }

    /// GICv3: waits for the distributor's `RWP`.
    pub fn wait_dist(&self) -> Result<(), GicError> {
        match self.version {
            Version::V2 => Ok(()),
            Version::V3 => self.wait_rwp(self.gicd + GICD_CTLR, GICD_CTLR_RWP),
        }
    }

    fn dist_init(&self) -> Result<(), GicError> {
        let ctlr = self.gicd + GICD_CTLR;
        match self.version {
            Version::V2 => write32(ctlr, 0),
            Version::V3 => {
                // Clear the enables only: ARE may not go from 1 to 0.
                write32(ctlr, read32(ctlr) & GICD_CTLR_ARE);
                self.wait_dist()?;
            }
        }
        let spis = PRIVATE_COUNT..=self.max_intid();
        for intid in spis.clone().step_by(32) {
            let (icenabler, _) = bit_reg(self.gicd + GICD_ICENABLER, intid);
            write32(icenabler, u32::MAX);
            write32(icenabler - GICD_ICENABLER + GICD_ICPENDR, u32::MAX);
            write32(icenabler - GICD_ICENABLER + GICD_ICACTIVER, u32::MAX);
            if self.version == Version::V3 {
                write32(icenabler - GICD_ICENABLER + GICD_IGROUPR, u32::MAX);
            }
        }
        let boot_mpidr = rt::mpidr();
        let boot_mask = match read8(self.gicd + GICD_ITARGETSR) {
            0 => 1,
            m => m,
        };
        for intid in spis {
            write8(self.gicd + GICD_IPRIORITYR + intid as usize, DEFAULT_PRIORITY);
            match self.version {
                Version::V2 => write8(self.gicd + GICD_ITARGETSR + intid as usize, boot_mask),
                Version::V3 => write64(self.gicd + GICD_IROUTER + 8 * intid as usize, boot_mpidr),
            }
        }
        match self.version {
            Version::V2 => write32(ctlr, GICD_CTLR_ENABLE_GRP0),
            Version::V3 => {
                self.wait_dist()?;
                write32(ctlr, GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1 | GICD_CTLR_ENABLE_GRP0);
                self.wait_dist()?;
            }
        }
        Ok(())
    }

    /// Every redistributor of the first region, in order, up to and
    /// including the one with `GICR_TYPER.Last` (at most one per
    /// [`MAX_CPUS`] and a few more, so a region without `Last` ends too).
    pub fn redistributors(&self) -> Redistributors {
        Redistributors { next: self.gicr, end: self.gicr + self.gicr_size, done: self.version != Version::V3, left: 64 }
    }

    /// This CPU's redistributor (RD_base), found by [`Gic::cpu_init`].
    pub fn redist(&self) -> usize {
        REDIST[rt::cpu_index() % MAX_CPUS].load(Ordering::SeqCst)
    }

    /// GICv2: CPU `cpu`'s interface bit, as that CPU read it (0 before it ran [`Gic::cpu_init`]).
    pub fn cpu_mask(&self, cpu: usize) -> u8 {
        CPU_MASK.get(cpu).map_or(0, |m| m.load(Ordering::SeqCst))
    }

    /// Where the calling CPU's SGI and PPI registers are: the redistributor's
    /// SGI_base frame (GICv3) or the distributor's banked words (GICv2).
    pub fn private_base(&self) -> usize {
        match self.version {
            Version::V2 => self.gicd,
            Version::V3 => self.redist() + GICR_SGI_BASE,
        }
    }

    fn bank(&self, intid: u32) -> usize {
        if intid < PRIVATE_COUNT {
            self.private_base()
        } else {
            self.gicd
        }
    }

    /// The calling CPU's part: its redistributor awake (GICv3), SGIs
    /// enabled and PPIs disabled, nothing pending or active, priorities
    /// 0xa0, the CPU interface on with `PMR` 0xff and EOImode 0.
    ///
    /// # Errors
    /// GICv3: no redistributor with this CPU's affinity, or it does not wake.
    pub fn cpu_init(&self) -> Result<(), GicError> {
        let cpu = rt::cpu_index() % MAX_CPUS;
        match self.version {
            Version::V2 => {
                let mask = read8(self.gicd + GICD_ITARGETSR);
                // A uniprocessor GIC's ITARGETSR are RAZ; its only CPU interface is bit 0.
                CPU_MASK[cpu].store(if mask == 0 { 1 } else { mask }, Ordering::SeqCst);
            }
            Version::V3 => {
                sysreg_write!("icc_sre_el1", sysreg_read!("icc_sre_el1") | ICC_SRE_EL1_SRE);
                let mpidr = rt::mpidr();
                let rd = self
                    .redistributors()
                    .find(|&(_, typer)| typer.mpidr() == mpidr)
                    .ok_or(GicError::NoRedistributor { mpidr })?
                    .0;
                REDIST[cpu].store(rd, Ordering::SeqCst);
                let waker = rd + GICR_WAKER;
                write32(waker, read32(waker) & !GICR_WAKER_PROCESSOR_SLEEP);
                time::wait_for(SETTLE_MS, || read32(waker) & GICR_WAKER_CHILDREN_ASLEEP == 0)
                    .ok_or(GicError::StillAsleep { mpidr })?;
                write32(rd + GICR_SGI_BASE + GICR_IGROUPR0, u32::MAX);
            }
        }
        let base = self.private_base();
        write32(base + GICD_ICENABLER, 0xffff_0000);
        write32(base + GICD_ISENABLER, 0x0000_ffff);
        write32(base + GICD_ICPENDR, u32::MAX);
        write32(base + GICD_ICACTIVER, u32::MAX);
        for intid in 0..PRIVATE_COUNT as usize {
            write8(base + GICD_IPRIORITYR + intid, DEFAULT_PRIORITY);
        }
        match self.version {
            Version::V2 => {
                write32(self.gicc + GICC_PMR, 0xff);
                write32(self.gicc + GICC_BPR, 0);
                write32(self.gicc + GICC_CTLR, GICC_CTLR_ENABLE);
            }
            Version::V3 => {
                self.wait_rwp(self.redist() + GICR_CTLR, GICR_CTLR_RWP)?;
                sysreg_write!("icc_pmr_el1", 0xff);
                sysreg_write!("icc_bpr1_el1", 0);
                sysreg_write!("icc_ctlr_el1", sysreg_read!("icc_ctlr_el1") & !ICC_CTLR_EL1_EOIMODE);
                sysreg_write!("icc_igrpen1_el1", 1);
            }
        }
        Ok(())
    }

    fn set_bit(&self, reg: usize, intid: u32) {
        let (addr, bit) = bit_reg(self.bank(intid) + reg, intid);
        write32(addr, bit);
    }

    fn test_bit(&self, reg: usize, intid: u32) -> bool {
        let (addr, bit) = bit_reg(self.bank(intid) + reg, intid);
        read32(addr) & bit != 0
    }

    pub fn enable(&self, intid: u32) {
        self.set_bit(GICD_ISENABLER, intid);
    }

    pub fn disable(&self, intid: u32) {
        self.set_bit(GICD_ICENABLER, intid);
        if intid >= PRIVATE_COUNT {
            let _ = self.wait_dist();
        } else if self.version == Version::V3 {
            let _ = self.wait_rwp(self.redist() + GICR_CTLR, GICR_CTLR_RWP);
        }
    }

    pub fn is_enabled(&self, intid: u32) -> bool {
        self.test_bit(GICD_ISENABLER, intid)
    }

    pub fn is_pending(&self, intid: u32) -> bool {
        self.test_bit(GICD_ISPENDR, intid)
    }

    pub fn is_active(&self, intid: u32) -> bool {
        self.test_bit(GICD_ISACTIVER, intid)
    }

    pub fn clear_pending(&self, intid: u32) {
        self.set_bit(GICD_ICPENDR, intid);
    }

    pub fn clear_active(&self, intid: u32) {
        self.set_bit(GICD_ICACTIVER, intid);
    }

    /// Sends SGI `intid` (0-15).
    pub fn send_sgi(&self, intid: u32, target: SgiTarget) {
        dsb();
        match self.version {
            Version::V3 => {
                let value = match target {
                    SgiTarget::Cpu(cpu) => sgi1r_to(intid, smp::mpidr_of(cpu).unwrap_or(u64::MAX)),
                    SgiTarget::Myself => sgi1r_to(intid, rt::mpidr()),
                    SgiTarget::Others => sgi1r_others(intid),
                };
                sysreg_write!("icc_sgi1r_el1", value);
            }
            Version::V2 => {
                let value = match target {
                    SgiTarget::Cpu(cpu) => {
                        let mask = match self.cpu_mask(cpu) {
                            0 => 1 << (cpu % 8),
                            m => m,
                        };
                        sgir(intid, GICD_SGIR_FILTER_LIST, mask)
                    }
                    SgiTarget::Myself => sgir(intid, GICD_SGIR_FILTER_SELF, 0),
                    SgiTarget::Others => sgir(intid, GICD_SGIR_FILTER_OTHERS, 0),
                };
                write32(self.gicd + GICD_SGIR, value);
            }
        }
    }

    /// Reads `IAR`: acknowledges the highest priority pending interrupt.
    pub fn ack(&self) -> Iar {
        let raw = match self.version {
            Version::V2 => read32(self.gicc + GICC_IAR),
            Version::V3 => sysreg_read!("icc_iar1_el1") as u32,
        };
        Iar { raw, version: self.version }
    }

    /// Writes `EOIR`: priority drop, and deactivation in EOImode 0.
    pub fn eoi(&self, iar: Iar) {
        match self.version {
            Version::V2 => write32(self.gicc + GICC_EOIR, iar.raw),
            Version::V3 => sysreg_write!("icc_eoir1_el1", u64::from(iar.raw)),
        }
    }

    /// Writes `DIR`: deactivation (EOImode 1).
    pub fn dir(&self, iar: Iar) {
        match self.version {
            Version::V2 => write32(self.gicc + GICC_DIR, iar.raw),
            Version::V3 => sysreg_write!("icc_dir_el1", u64::from(iar.raw)),
        }
    }

    /// EOImode 1 (`split`: EOIR drops priority only, DIR deactivates) or 0.
    pub fn set_eoi_mode(&self, split: bool) {
        match self.version {
            Version::V2 => {
                let ctlr = read32(self.gicc + GICC_CTLR) & !GICC_CTLR_EOIMODE;
                write32(self.gicc + GICC_CTLR, ctlr | if split { GICC_CTLR_EOIMODE } else { 0 });
            }
            Version::V3 => {
                let ctlr = sysreg_read!("icc_ctlr_el1") & !ICC_CTLR_EL1_EOIMODE;
                sysreg_write!("icc_ctlr_el1", ctlr | if split { ICC_CTLR_EL1_EOIMODE } else { 0 });
            }
        }
    }

    /// Whether EOImode is 1, as the CPU interface reads it back.
    pub fn eoi_mode_split(&self) -> bool {
        match self.version {
            Version::V2 => read32(self.gicc + GICC_CTLR) & GICC_CTLR_EOIMODE != 0,
            Version::V3 => sysreg_read!("icc_ctlr_el1") & ICC_CTLR_EL1_EOIMODE != 0,
        }
    }

    /// The running priority (`GICC_RPR` or `ICC_RPR_EL1`): 0xff when no interrupt is active.
    pub fn running_priority(&self) -> u32 {
        match self.version {
            Version::V2 => read32(self.gicc + GICC_RPR) & 0xff,
            Version::V3 => sysreg_read!("icc_rpr_el1") as u32 & 0xff,
        }
    }

    /// Writes 1023 to `EOIR`, which the GIC ignores (the micro-benchmark's "eoi").
    pub fn eoi_spurious(&self) {
        self.eoi(Iar { raw: SPURIOUS, version: self.version });
    }
}

/// The walk [`Gic::redistributors`] makes: each frame's RD_base and `GICR_TYPER`.
pub struct Redistributors {
    next: usize,
    end: usize,
    done: bool,
    left: u32,
}

impl Iterator for Redistributors {
    type Item = (usize, RedistTyper);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.left == 0 || self.next + GICR_FRAME_SIZE > self.end {
            return None;
        }
        let rd = self.next;
        let typer = RedistTyper(read64(rd + GICR_TYPER));
        self.left -= 1;
        self.done = typer.last();
        self.next += typer.frame_size();
        Some((rd, typer))
    }
}
