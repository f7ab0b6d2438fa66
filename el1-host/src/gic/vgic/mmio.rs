//! Guest accesses to the distributor and the redistributors, and trapped SGI
//! generation. Anything the model has no register for reads as zero and
//! ignores writes.

use super::regs::{Bank, BitReg};
use super::state::{
    State, CTLR_ENABLE_MASK, GICD_IROUTER_IRM, LPI_ID_BITS, MPIDR_AFFINITY_MASK, PENDBASER_MASK, PENDBASER_PA,
    PENDBASER_PTZ, PRIVATE_COUNT, PROPBASER_MASK, SGI_COUNT,
};
use super::{Kicks, Model, GIC_IIDR};

use core::ops::Range;
use ferrovisor_shared::gic::*;

// The distributor's register arrays, as the vGIC implements them.
const BITREGS: Range<usize> = GICD_IGROUPR..GICD_IPRIORITYR;
const GICD_IPRIORITYR_RANGE: Range<usize> = GICD_IPRIORITYR..GICD_ITARGETSR;
const GICD_ITARGETSR_RANGE: Range<usize> = GICD_ITARGETSR..GICD_ICFGR;
/// 64 words: INTIDs up to 1023.
const GICD_ICFGR_RANGE: Range<usize> = GICD_ICFGR..GICD_ICFGR + 0x100;
const GICD_CPENDSGIR_RANGE: Range<usize> = GICD_CPENDSGIR..GICD_SPENDSGIR;
const GICD_SPENDSGIR_RANGE: Range<usize> = GICD_SPENDSGIR..GICD_SPENDSGIR + 0x10;
/// 1024 doublewords.
const GICD_IROUTER_RANGE: Range<usize> = GICD_IROUTER..GICD_IROUTER + 0x2000;
/// Ten INTID bits (`GICD_TYPER.IDbits` holds the count minus one).
const TYPER_IDBITS_10: u32 = 9;

// Redistributor (GICv3): an RD frame then an SGI frame per vCPU.
pub const GICR_STRIDE: u64 = GICR_FRAME_SIZE as u64;
/// Eight words: the 32 private interrupts.
const GICR_IPRIORITYR_RANGE: Range<usize> = GICR_IPRIORITYR..GICR_IPRIORITYR + 0x20;
/// The upper words of `GICR_PROPBASER` and `GICR_PENDBASER`.
const GICR_PROPBASER_HI: usize = GICR_PROPBASER + 4;
const GICR_PENDBASER_HI: usize = GICR_PENDBASER + 4;

/// A naturally aligned access of 1, 2, 4 or 8 bytes.
fn aligned(offset: u64, size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(u64::from(size))
}

fn in_range(r: &Range<usize>, offset: usize) -> bool {
    r.contains(&offset)
}

impl State {
    fn dist_frame_size(&self) -> u64 {
        super::dist_size(self.model)
    }

    fn gicd_typer(&self) -> u32 {
        let lines = self.nr_spis / 32;
        match self.model {
            // CPUNumber is 0 for a GIC without ARE == 0 support (IHI 0069).
            Model::V3 if self.lpis_on => {
                lines
                    | (LPI_ID_BITS - 1) << GICD_TYPER_ID_BITS_SHIFT
                    | GICD_TYPER_LPIS
                    | GICD_TYPER_A3V
                    | GICD_TYPER_RSS
            }
            Model::V3 => lines | TYPER_IDBITS_10 << GICD_TYPER_ID_BITS_SHIFT | GICD_TYPER_A3V | GICD_TYPER_RSS,
            Model::V2 => {
                let cpus = self.nr_vcpus().clamp(1, 8) as u32 - 1;
                lines | cpus << GICD_TYPER_CPU_NUMBER_SHIFT
            }
        }
    }

    pub fn dist_read(&self, accessor: usize, off: u64, size: u8) -> u64 {
        if !aligned(off, size) || off >= self.dist_frame_size() {
            return 0;
        }
        let v3 = self.model == Model::V3;
        let word = size == 4;
        let bytes = size == 1 || size == 4;
        let off = off as usize;
        let value = match off {
            GICD_CTLR if word => {
                let extra = if v3 { GICD_CTLR_ARE | GICD_CTLR_DS } else { 0 };
                self.ctlr | extra
            }
            GICD_TYPER if word => self.gicd_typer(),
            GICD_IIDR if word => GIC_IIDR,
            GICD_TYPER2 => 0,
            o if in_range(&BITREGS, o) && word => match BitReg::at(o) {
                // With affinity routing the private banks live in the redistributors.
                Some((_, 0)) if v3 => 0,
                Some((reg, n)) => self.read_bits(Bank { owner: accessor, accessor }, reg, 32 * n as u32),
                None => 0,
            },
            o if in_range(&GICD_IPRIORITYR_RANGE, o) && bytes => {
                let first = (o - GICD_IPRIORITYR) as u32;
                if v3 && first < PRIVATE_COUNT {
                    0
                } else {
                    self.read_priority(accessor, first, size.into())
                }
            }
            o if in_range(&GICD_ITARGETSR_RANGE, o) && bytes && !v3 => {
                self.read_targets(accessor, (o - GICD_ITARGETSR) as u32, size.into())
            }
            o if in_range(&GICD_ICFGR_RANGE, o) && word => {
                let n = ((o - GICD_ICFGR) / 4) as u32;
                if v3 && n < 2 {
                    0
                } else {
                    self.read_config(accessor, 16 * n)
                }
            }
            o if (in_range(&GICD_CPENDSGIR_RANGE, o) || in_range(&GICD_SPENDSGIR_RANGE, o)) && bytes && !v3 => {
                let first = (o & 0xf) as u32;
                (0..u32::from(size)).fold(0, |acc, i| {
                    let p = self
                        .irq(accessor, first + i)
                        .map_or(0, |irq| irq.sgi_pend | if irq.in_lr { irq.lr_sgi_pend } else { 0 });
                    acc | u32::from(p) << (8 * i)
                })
            }
            o if in_range(&GICD_IROUTER_RANGE, o) && v3 && (size == 4 || size == 8) => {
                let intid = ((o - GICD_IROUTER) / 8) as u32;
                let route = match self.irq(accessor, intid) {
                    Some(irq) if intid >= PRIVATE_COUNT => irq.route,
                    _ => 0,
                };
                return match (size, o % 8) {
                    (8, _) => route,
                    (_, 0) => route & 0xffff_ffff,
                    _ => route >> 32,
                };
            }
            GICD_PIDR2_V2 if word && !v3 => 2 << PIDR2_ARCHREV_SHIFT,
            GICD_PIDR2_V3 if word && v3 => 3 << PIDR2_ARCHREV_SHIFT,
            _ => 0,
        };
        value.into()
    }

    pub fn dist_write(&mut self, accessor: usize, off: u64, size: u8, value: u64, kicks: &mut Kicks) {
        if !aligned(off, size) || off >= self.dist_frame_size() {
            return;
        }
        let v3 = self.model == Model::V3;
        let word = size == 4;
        let bytes = size == 1 || size == 4;
        let value32 = value as u32;
        let off = off as usize;
        match off {
            GICD_CTLR if word => {
                let new = value32 & CTLR_ENABLE_MASK;
                if new != self.ctlr {
                    self.ctlr = new;
                    self.update_all(kicks);
                }
            }
            o if in_range(&BITREGS, o) && word => match BitReg::at(o) {
                Some((_, 0)) if v3 => {}
                Some((reg, n)) => {
                    self.write_bits(Bank { owner: accessor, accessor }, reg, 32 * n as u32, value32, kicks)
                }
                None => {}
            },
            o if in_range(&GICD_IPRIORITYR_RANGE, o) && bytes => {
                let first = (o - GICD_IPRIORITYR) as u32;
                if !(v3 && first < PRIVATE_COUNT) {
                    self.write_priority(accessor, first, size.into(), value32, kicks);
                }
            }
            o if in_range(&GICD_ITARGETSR_RANGE, o) && bytes && !v3 => {
                self.write_targets((o - GICD_ITARGETSR) as u32, size.into(), value32, kicks);
            }
            o if in_range(&GICD_ICFGR_RANGE, o) && word => {
                let n = ((o - GICD_ICFGR) / 4) as u32;
                if !(v3 && n < 2) {
                    self.write_config(accessor, 16 * n, value32, kicks);
                }
            }
            GICD_SGIR if word && !v3 => self.write_v2_sgir(accessor, value32, kicks),
            o if (in_range(&GICD_CPENDSGIR_RANGE, o) || in_range(&GICD_SPENDSGIR_RANGE, o)) && bytes && !v3 => {
                let set = in_range(&GICD_SPENDSGIR_RANGE, o);
                self.write_sgi_sources(accessor, (o & 0xf) as u32, size.into(), value32, set, kicks);
            }
            o if in_range(&GICD_IROUTER_RANGE, o) && v3 && (size == 4 || size == 8) => {
                let intid = ((o - GICD_IROUTER) / 8) as u32;
                self.write_irouter(intid, o % 8 == 4, size, value, kicks);
            }
            _ => {}
        }
    }

    fn write_irouter(&mut self, intid: u32, high: bool, size: u8, value: u64, kicks: &mut Kicks) {
        if intid < PRIVATE_COUNT {
            return;
        }
        let spi = (intid - PRIVATE_COUNT) as usize;
        let Some(irq) = self.spis.get_mut(spi) else { return };
        let route = match (size, high) {
            (8, _) => value,
            (_, false) => (irq.route & !0xffff_ffff) | (value & 0xffff_ffff),
            (_, true) => (irq.route & 0xffff_ffff) | (value << 32),
        } & (MPIDR_AFFINITY_MASK | GICD_IROUTER_IRM);
        if route == irq.route {
            return;
        }
        irq.route = route;
        self.resolve_route(spi);
        self.update(0, intid, kicks);
    }

    /// GICv2 `GICD_SGIR`.
    fn write_v2_sgir(&mut self, accessor: usize, value: u32, kicks: &mut Kicks) {
        let list = ((value >> 16) & 0xff) as u8;
        let all = self.vcpu_mask();
        let self_bit = if accessor < 8 { 1u8 << accessor } else { 0 };
        let targets = match (value >> 24) & 3 {
            0 => list & all,
            1 => all & !self_bit,
            2 => self_bit & all,
            _ => 0,
        };
        let intid = value & 0xf;
        for t in 0..8 {
            if targets & (1 << t) != 0 {
                self.raise_sgi(t, intid, accessor, kicks);
            }
        }
    }

    /// GICv2 `GICD_SPENDSGIR` (`set`) / `GICD_CPENDSGIR`: source bits of the
    /// accessor's SGIs `first..first + n`.
    fn write_sgi_sources(&mut self, accessor: usize, first: u32, n: u32, value: u32, set: bool, kicks: &mut Kicks) {
        let mask = self.vcpu_mask();
        for i in 0..n {
            let intid = first + i;
            let bits = (value >> (8 * i)) as u8 & mask;
            if intid >= SGI_COUNT || bits == 0 {
                continue;
            }
            let Some(irq) = self.irq_mut(accessor, intid) else { continue };
            let (pend, lr) = (irq.sgi_pend, irq.lr_sgi_pend);
            if set {
                irq.sgi_pend |= bits;
            } else {
                irq.sgi_pend &= !bits;
                irq.lr_sgi_pend &= !bits;
            }
            if (pend, lr) != (irq.sgi_pend, irq.lr_sgi_pend) {
                self.update(accessor, intid, kicks);
            }
        }
    }

    pub fn redist_read(&self, accessor: usize, off: u64, size: u8) -> u64 {
        if self.model != Model::V3 || !aligned(off, size) {
            return 0;
        }
        let Ok(idx) = usize::try_from(off / GICR_STRIDE) else { return 0 };
        let Some(vs) = self.vcpus.get(idx) else { return 0 };
        let frame = (off % GICR_STRIDE) as usize;
        let word = size == 4;
        if frame < GICR_SGI_BASE {
            return match (frame, size) {
                (GICR_IIDR, 4) => GIC_IIDR.into(),
                (GICR_TYPER, 8) => self.gicr_typer(idx),
                (GICR_TYPER, 4) => self.gicr_typer(idx) & 0xffff_ffff,
                (f, 4) if f == GICR_TYPER + 4 => self.gicr_typer(idx) >> 32,
                (GICR_WAKER, 4) if vs.sleep => (GICR_WAKER_PROCESSOR_SLEEP | GICR_WAKER_CHILDREN_ASLEEP).into(),
                (GICR_PIDR2, 4) => (3u64) << PIDR2_ARCHREV_SHIFT,
                (GICR_CTLR, 4) if self.lpis_on => u32::from(vs.enable_lpis).into(),
                (GICR_PROPBASER | GICR_PENDBASER, 4 | 8) | (GICR_PROPBASER_HI | GICR_PENDBASER_HI, 4)
                    if self.lpis_on =>
                {
                    let reg = if frame & !7 == GICR_PROPBASER { vs.propbaser } else { vs.pendbaser };
                    match (size, frame % 8) {
                        (8, _) => reg,
                        (_, 0) => reg & 0xffff_ffff,
                        _ => reg >> 32,
                    }
                }
                // GICR_STATUSR, the rest, and the LPI registers with LPIs off.
                _ => 0,
            };
        }
        let g = frame - GICR_SGI_BASE;
        let bank = Bank { owner: idx, accessor };
        let value = match g {
            o if in_range(&BITREGS, o) && word => match BitReg::at(o) {
                Some((reg, 0)) => self.read_bits(bank, reg, 0),
                _ => 0,
            },
            o if in_range(&GICR_IPRIORITYR_RANGE, o) && (size == 1 || word) => {
                self.read_priority(idx, (o - GICR_IPRIORITYR) as u32, size.into())
            }
            GICR_ICFGR0 if word => self.read_config(idx, 0),
            GICR_ICFGR1 if word => self.read_config(idx, 16),
            _ => 0,
        };
        value.into()
    }

    pub fn redist_write(&mut self, accessor: usize, off: u64, size: u8, value: u64, kicks: &mut Kicks) {
        if self.model != Model::V3 || !aligned(off, size) {
            return;
        }
        let Ok(idx) = usize::try_from(off / GICR_STRIDE) else { return };
        if idx >= self.vcpus.len() {
            return;
        }
        let frame = (off % GICR_STRIDE) as usize;
        let word = size == 4;
        let value32 = value as u32;
        if frame < GICR_SGI_BASE {
            if self.lpis_on {
                self.write_lpi_regs(idx, frame, size, value, kicks);
            }
            if frame == GICR_WAKER && word {
                let sleep = value32 & GICR_WAKER_PROCESSOR_SLEEP != 0;
                if let Some(vs) = self.vcpus.get_mut(idx) {
                    if vs.sleep != sleep {
                        vs.sleep = sleep;
                        self.update_1_of_n(kicks);
                    }
                }
            }
            return;
        }
        let g = frame - GICR_SGI_BASE;
        let bank = Bank { owner: idx, accessor };
        match g {
            o if in_range(&BITREGS, o) && word => {
                if let Some((reg, 0)) = BitReg::at(o) {
                    self.write_bits(bank, reg, 0, value32, kicks);
                }
            }
            o if in_range(&GICR_IPRIORITYR_RANGE, o) && (size == 1 || word) => {
                self.write_priority(idx, (o - GICR_IPRIORITYR) as u32, size.into(), value32, kicks);
            }
            GICR_ICFGR1 if word => self.write_config(idx, 16, value32, kicks),
            _ => {}
        }
    }

    /// `GICR_CTLR`, `GICR_PROPBASER`, `GICR_PENDBASER` of vCPU `idx` (LPIs on).
    /// EnableLPIs goes 0 to 1 only (clearing it is IMPLEMENTATION DEFINED;
    /// here it sticks until reset), and the two tables' registers are
    /// writable only while it is 0 (afterwards UNPREDICTABLE; here ignored).
    /// The pending table is read once, when EnableLPIs is set without PTZ
    /// (`Vgic::pending_table_effects`), and never written: pending state
    /// then stays in the host.
    fn write_lpi_regs(&mut self, idx: usize, frame: usize, size: u8, value: u64, kicks: &mut Kicks) {
        let Some(vs) = self.vcpus.get_mut(idx) else { return };
        match (frame, size) {
            (GICR_CTLR, 4) if value as u32 & GICR_CTLR_ENABLE_LPIS != 0 && !vs.enable_lpis => {
                vs.enable_lpis = true;
                vs.scan_pending = !vs.pend_ptz && vs.pendbaser & PENDBASER_PA != 0;
                self.scan_requested |= vs.scan_pending;
                self.update_lpis(Some(idx), kicks);
            }
            (GICR_PROPBASER | GICR_PENDBASER, 4 | 8) | (GICR_PROPBASER_HI | GICR_PENDBASER_HI, 4)
                if !vs.enable_lpis =>
            {
                let (reg, mask) = if frame & !7 == GICR_PROPBASER {
                    (&mut vs.propbaser, PROPBASER_MASK)
                } else {
                    (&mut vs.pendbaser, PENDBASER_MASK)
                };
                let new = match (size, frame % 8) {
                    (8, _) => value,
                    (_, 0) => (*reg & !0xffff_ffff) | (value & 0xffff_ffff),
                    _ => (*reg & 0xffff_ffff) | value << 32,
                };
                *reg = new & mask;
                if frame & !7 == GICR_PENDBASER && (size == 8 || !frame.is_multiple_of(8)) {
                    vs.pend_ptz = new & PENDBASER_PTZ != 0;
                }
            }
            _ => {}
        }
    }

    fn gicr_typer(&self, idx: usize) -> u64 {
        let Some(vs) = self.vcpus.get(idx) else { return 0 };
        let aff = u64::from(affinity_value(vs.mpidr));
        let mut typer = aff << GICR_TYPER_AFFINITY_SHIFT | (idx as u64 & 0xffff) << GICR_TYPER_PROCESSOR_NUMBER_SHIFT;
        if idx + 1 == self.vcpus.len() {
            typer |= GICR_TYPER_LAST;
        }
        if self.lpis_on {
            typer |= GICR_TYPER_PLPIS;
        }
        typer
    }

    /// A trapped `ICC_SGI1R_EL1` (`group` 1) or `ICC_SGI0R_EL1` / `ICC_ASGI1R_EL1`
    /// (`group` 0) write.
    pub fn sgi_write(&mut self, accessor: usize, value: u64, group: u8, kicks: &mut Kicks) {
        if self.model != Model::V3 || accessor >= self.vcpus.len() {
            return;
        }
        let intid = ((value >> ICC_SGI1R_EL1_INTID_SHIFT) & 0xf) as u32;
        let irm = value & ICC_SGI1R_EL1_IRM != 0;
        let aff3 = (value >> ICC_SGI1R_EL1_AFF3_SHIFT) & 0xff;
        let aff2 = (value >> ICC_SGI1R_EL1_AFF2_SHIFT) & 0xff;
        let aff1 = (value >> ICC_SGI1R_EL1_AFF1_SHIFT) & 0xff;
        let rs = (value >> ICC_SGI1R_EL1_RS_SHIFT) & 0xf;
        let list = value & ICC_SGI1R_EL1_TARGET_LIST;
        for t in 0..self.vcpus.len() {
            let hit = if irm {
                t != accessor
            } else {
                let m = self.vcpus[t].mpidr;
                let aff0 = m & 0xff;
                (m >> 32) & 0xff == aff3
                    && (m >> 16) & 0xff == aff2
                    && (m >> 8) & 0xff == aff1
                    && aff0 >> 4 == rs
                    && list & (1 << (aff0 & 0xf)) != 0
            };
            if !hit {
                continue;
            }
            // With DS == 1 an SGI1R write raises either group; SGI0R and
            // ASGI1R raise only an SGI configured as group 0.
            let group1 = self.irq(t, intid).is_some_and(|irq| irq.group1);
            if group == 0 && group1 {
                continue;
            }
            self.raise_sgi(t, intid, accessor, kicks);
        }
    }
}
