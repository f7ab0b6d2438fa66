//! The register operations the distributor and the redistributors share:
//! one bit, one byte or two bits per interrupt.

use super::state::{State, PRIORITY_MASK, PRIVATE_COUNT, SGI_COUNT};
use super::{Kicks, Model};
use ferrovisor_shared::gic::{
    GICD_ICACTIVER, GICD_ICENABLER, GICD_ICPENDR, GICD_IGROUPR, GICD_ISACTIVER, GICD_ISENABLER, GICD_ISPENDR,
};

/// The bit-per-interrupt registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// The register whose 32-interrupt bank starts at `base + 4 * n`, by
    /// `base` (`GICD_IGROUPR` ... `GICD_ICACTIVER`, same in `GICR_` SGI frames).
    pub fn at(offset: usize) -> Option<(BitReg, usize)> {
        let reg = match offset & !0x7f {
            GICD_IGROUPR => BitReg::Group,
            GICD_ISENABLER => BitReg::SetEnable,
            GICD_ICENABLER => BitReg::ClearEnable,
            GICD_ISPENDR => BitReg::SetPending,
            GICD_ICPENDR => BitReg::ClearPending,
            GICD_ISACTIVER => BitReg::SetActive,
            GICD_ICACTIVER => BitReg::ClearActive,
            _ => return None,
        };
        Some((reg, (offset & 0x7f) / 4))
    }
}

/// ICFGR field of an edge-triggered interrupt.
const CFG_EDGE: u32 = 0b10;

/// Who accesses a bank: `owner` holds the private interrupts in it, `accessor`
/// is the vCPU whose access it is (the source of a GICv2 SGI made active).
#[derive(Clone, Copy, Debug)]
pub struct Bank {
    pub owner: usize,
    pub accessor: usize,
}

impl State {
    fn is_v2_sgi(&self, intid: u32) -> bool {
        self.model == Model::V2 && intid < SGI_COUNT
    }

    /// A 32-bit read of a bit register covering INTIDs `first..first + 32`.
    pub fn read_bits(&self, bank: Bank, reg: BitReg, first: u32) -> u32 {
        let mut value = 0;
        for i in 0..32 {
            let Some(irq) = self.irq(bank.owner, first + i) else { continue };
            let bit = match reg {
                BitReg::Group => irq.group1,
                BitReg::SetEnable | BitReg::ClearEnable => irq.enabled,
                BitReg::SetPending | BitReg::ClearPending => irq.pending(self.model),
                BitReg::SetActive | BitReg::ClearActive => irq.is_active(self.model),
            };
            value |= u32::from(bit) << i;
        }
        value
    }

    /// A 32-bit write of a bit register covering INTIDs `first..first + 32`.
    pub fn write_bits(&mut self, bank: Bank, reg: BitReg, first: u32, value: u32, kicks: &mut Kicks) {
        for i in 0..32 {
            let intid = first + i;
            let set = value & (1 << i) != 0;
            if !set && reg != BitReg::Group {
                continue;
            }
            let v2_sgi = self.is_v2_sgi(intid);
            let src_bit = if bank.accessor < 8 { 1u8 << bank.accessor } else { 0 };
            let Some(irq) = self.irq_mut(bank.owner, intid) else { continue };
            let before = *irq;
            match reg {
                BitReg::Group => irq.group1 = set,
                BitReg::SetEnable => irq.enabled = true,
                BitReg::ClearEnable => irq.enabled = false,
                // GICv2 SGIs are made pending per source, through GICD_SPENDSGIR.
                BitReg::SetPending if v2_sgi => {}
                BitReg::ClearPending if v2_sgi => {}
                BitReg::SetPending => irq.latch = true,
                BitReg::ClearPending => {
                    irq.latch = false;
                    irq.lr_latch = false;
                }
                BitReg::SetActive | BitReg::ClearActive => {
                    let on = reg == BitReg::SetActive;
                    if v2_sgi {
                        irq.sgi_act = if on { irq.sgi_act | src_bit } else { 0 };
                    } else {
                        irq.active = on;
                    }
                    if irq.in_lr {
                        irq.lr_act_written = true;
                    }
                }
            }
            let after = *irq;
            if changed(&before, &after) {
                self.update(bank.owner, intid, kicks);
            }
        }
    }

    /// Reads `n` (1..=4) priority bytes starting at INTID `first`.
    pub fn read_priority(&self, owner: usize, first: u32, n: u32) -> u32 {
        (0..n).fold(0, |acc, i| {
            let p = self.irq(owner, first + i).map_or(0, |irq| irq.priority);
            acc | u32::from(p) << (8 * i)
        })
    }

    pub fn write_priority(&mut self, owner: usize, first: u32, n: u32, value: u32, kicks: &mut Kicks) {
        for i in 0..n {
            let p = (value >> (8 * i)) as u8 & PRIORITY_MASK;
            let Some(irq) = self.irq_mut(owner, first + i) else { continue };
            if irq.priority != p {
                irq.priority = p;
                // Only a queued interrupt's order changes.
                if irq.ap.is_some() {
                    self.update(owner, first + i, kicks);
                }
            }
        }
    }

    /// `ICFGR<n>`: 16 interrupts from `first`, two bits each.
    pub fn read_config(&self, owner: usize, first: u32) -> u32 {
        (0..16).fold(0, |acc, i| match self.irq(owner, first + i) {
            Some(irq) if irq.edge => acc | CFG_EDGE << (2 * i),
            _ => acc,
        })
    }

    pub fn write_config(&mut self, owner: usize, first: u32, value: u32, kicks: &mut Kicks) {
        for i in 0..16 {
            let intid = first + i;
            if intid < SGI_COUNT {
                continue; // SGIs are always edge-triggered.
            }
            let edge = (value >> (2 * i)) & CFG_EDGE != 0;
            let Some(irq) = self.irq_mut(owner, intid) else { continue };
            if irq.edge != edge {
                irq.edge = edge;
                self.update(owner, intid, kicks);
            }
        }
    }

    /// GICv2 `GICD_ITARGETSR`: `n` bytes from INTID `first`. Private ones
    /// read as the accessing CPU's own bit. With one vCPU they are all RAZ/WI
    /// and every SPI goes to it (IHI 0048B §4.3.12, as on QEMU).
    pub fn read_targets(&self, accessor: usize, first: u32, n: u32) -> u32 {
        if self.vcpus.len() == 1 {
            return 0;
        }
        let own = if accessor < 8 { 1u32 << accessor } else { 0 };
        (0..n).fold(0, |acc, i| {
            let intid = first + i;
            let t = if intid < PRIVATE_COUNT {
                if self.exists(accessor, intid) {
                    own
                } else {
                    0
                }
            } else {
                self.irq(accessor, intid).map_or(0, |irq| u32::from(irq.targets))
            };
            acc | t << (8 * i)
        })
    }

    pub fn write_targets(&mut self, first: u32, n: u32, value: u32, kicks: &mut Kicks) {
        if self.vcpus.len() == 1 {
            return;
        }
        let mask = self.vcpu_mask();
        for i in 0..n {
            let intid = first + i;
            if intid < PRIVATE_COUNT {
                continue;
            }
            let t = (value >> (8 * i)) as u8 & mask;
            let Some(irq) = self.irq_mut(0, intid) else { continue };
            if irq.targets != t {
                irq.targets = t;
                self.update(0, intid, kicks);
            }
        }
    }

    /// Makes SGI `intid` of `target` pending from `source` (the source
    /// matters on GICv2 only).
    pub fn raise_sgi(&mut self, target: usize, intid: u32, source: usize, kicks: &mut Kicks) {
        let model = self.model;
        let Some(irq) = self.irq_mut(target, intid & 0xf) else { return };
        if model == Model::V2 {
            let Some(bit) = (source < 8).then(|| 1u8 << source) else { return };
            if irq.sgi_pend & bit != 0 {
                return;
            }
            irq.sgi_pend |= bit;
        } else {
            if irq.latch {
                return;
            }
            irq.latch = true;
        }
        self.update(target, intid & 0xf, kicks);
    }
}

/// Whether anything that decides delivery changed.
fn changed(a: &super::state::Irq, b: &super::state::Irq) -> bool {
    a.enabled != b.enabled
        || a.latch != b.latch
        || a.lr_latch != b.lr_latch
        || a.active != b.active
        || a.group1 != b.group1
        || a.sgi_pend != b.sgi_pend
        || a.sgi_act != b.sgi_act
        || a.lr_act_written != b.lr_act_written
}
