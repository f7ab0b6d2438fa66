//! List registers: `flush` fills them from a vCPU's ap list before entry,
//! `sync` folds them back after exit. Raw formats: GICv3 `ICH_LR<n>_EL2`,
//! GICv2 `GICH_LR<n>`.

use ferrovisor_shared::vcpu::{VgicCpuState, MAX_LIST_REGS};

use super::state::{Irq, LrSlot, State};
use super::Model;

/// `ICH_HCR_EL2` / `GICH_HCR`: En.
pub const HCR_EN: u64 = 1 << 0;
/// Underflow maintenance interrupt enable: at most one list register valid.
pub const HCR_UIE: u64 = 1 << 1;

/// List-register state field values.
pub const STATE_PENDING: u64 = 0b01;
pub const STATE_ACTIVE: u64 = 0b10;

pub use ferrovisor_shared::gic::{lr_v2 as v2, lr_v3 as v3};

/// One list register's contents, before encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LrFields {
    pub intid: u32,
    pub state: u64,
    pub priority: u8,
    pub group1: bool,
    pub hw: Option<u32>,
    /// Maintenance on deactivation (ignored with `hw`).
    pub eoi: bool,
    /// GICv2 SGI source CPU.
    pub source: u8,
}

pub fn encode(model: Model, f: &LrFields) -> u64 {
    match model {
        Model::V3 => {
            let mut lr = u64::from(f.intid) & v3::VINTID_MASK
                | u64::from(f.priority) << v3::PRIORITY_SHIFT
                | (f.state & 3) << v3::STATE_SHIFT;
            if f.group1 {
                lr |= v3::GROUP;
            }
            match f.hw {
                Some(p) => lr |= v3::HW | (u64::from(p) & v3::PINTID_MASK) << v3::PINTID_SHIFT,
                None if f.eoi => lr |= v3::EOI,
                None => {}
            }
            lr
        }
        Model::V2 => {
            let mut lr = u64::from(f.intid) & v2::VINTID_MASK
                | u64::from(f.priority >> 3) << v2::PRIORITY_SHIFT
                | (f.state & 3) << v2::STATE_SHIFT;
            if f.group1 {
                lr |= v2::GROUP1;
            }
            match f.hw {
                Some(p) => lr |= v2::HW | (u64::from(p) & v2::PINTID_MASK) << v2::PINTID_SHIFT,
                None => {
                    lr |= (u64::from(f.source) & v2::CPUID_MASK) << v2::CPUID_SHIFT;
                    if f.eoi {
                        lr |= v2::EOI;
                    }
                }
            }
            lr
        }
    }
}

/// The virtual INTID of a raw list register.
pub fn vintid(model: Model, lr: u64) -> u32 {
    match model {
        Model::V3 => (lr & v3::VINTID_MASK) as u32,
        Model::V2 => (lr & v2::VINTID_MASK) as u32,
    }
}

/// The state field (pending bit 0, active bit 1) of a raw list register.
pub fn state_of(model: Model, lr: u64) -> u64 {
    match model {
        Model::V3 => (lr >> v3::STATE_SHIFT) & 3,
        Model::V2 => (lr >> v2::STATE_SHIFT) & 3,
    }
}

/// Ordering for the list registers: active first (the guest must be able to
/// deactivate them), then by priority, then by INTID.
fn flush_key(model: Model, irq: &Irq) -> (bool, u8, u16) {
    (!irq.is_active(model), irq.priority, irq.intid)
}

impl State {
    /// See [`super::Vgic::flush`].
    pub fn flush(&mut self, vcpu: usize, cpu_if: &mut VgicCpuState, nr_lrs: usize) {
        if self.vcpus.get(vcpu).is_some_and(|v| v.in_flight != 0) {
            // Filled before and never synced: take them back first, unchanged.
            self.sync(vcpu, cpu_if);
        }
        cpu_if.used_lrs = 0;
        cpu_if.hcr = HCR_EN;
        if vcpu >= self.vcpus.len() {
            return;
        }
        self.prune(vcpu);
        let nr_lrs = nr_lrs.min(MAX_LIST_REGS);
        let model = self.model;

        let mut list = core::mem::take(&mut self.vcpus[vcpu].ap_list);
        list.sort_unstable_by_key(|&intid| match self.irq(vcpu, intid.into()) {
            Some(irq) => flush_key(model, irq),
            None => (true, u8::MAX, intid),
        });

        let mut used = 0;
        let mut overflow = false;
        for &intid in &list {
            let Some(irq) = self.irq(vcpu, intid.into()).copied() else { continue };
            let deliverable = self.deliverable(&irq);
            let Some(vs) = self.vcpus.get_mut(vcpu) else { break };
            let irq_ref = if u32::from(intid) >= super::state::LPI_BASE {
                self.lpis.get_mut(&intid)
            } else if u32::from(intid) < super::state::PRIVATE_COUNT {
                vs.private.get_mut(usize::from(intid))
            } else {
                self.spis.get_mut(usize::from(intid) - super::state::PRIVATE_COUNT as usize)
            };
            let Some(irq_mut) = irq_ref else { continue };
            let done = if model == Model::V2 && irq.is_sgi() {
                fill_v2_sgi(irq_mut, deliverable, &mut vs.lr_map, &mut cpu_if.lr, &mut used, nr_lrs)
            } else {
                fill_one(model, irq_mut, deliverable, &mut vs.lr_map, &mut cpu_if.lr, &mut used, nr_lrs)
            };
            if !done {
                overflow = true;
                break;
            }
        }
        if let Some(vs) = self.vcpus.get_mut(vcpu) {
            vs.ap_list = list;
            vs.in_flight = used;
        }
        for lr in cpu_if.lr.iter_mut().skip(used) {
            *lr = 0;
        }
        cpu_if.used_lrs = used as u64;
        if overflow {
            cpu_if.hcr |= HCR_UIE;
        }
    }

    /// See [`super::Vgic::sync`].
    pub fn sync(&mut self, vcpu: usize, cpu_if: &mut VgicCpuState) {
        cpu_if.used_lrs = 0;
        let model = self.model;
        let Some(vs) = self.vcpus.get_mut(vcpu) else { return };
        let n = vs.in_flight.min(MAX_LIST_REGS);
        vs.in_flight = 0;
        let map = vs.lr_map;
        for (slot, &lr) in map.iter().zip(cpu_if.lr.iter()).take(n) {
            let state = state_of(model, lr);
            let Some(irq) = self.irq_mut(vcpu, slot.intid.into()) else { continue };
            fold(model, irq, slot.source, state);
        }
        for slot in map.iter().take(n) {
            if let Some(irq) = self.irq_mut(vcpu, slot.intid.into()) {
                irq.in_lr = false;
                irq.lr_latch = false;
                irq.lr_sgi_pend = 0;
                irq.lr_act_written = false;
            }
        }
        self.fold_el2(vcpu, cpu_if, n);
        self.prune(vcpu);
    }

    /// The list registers el2 filled itself while the vCPU ran (a
    /// hardware-linked interrupt whose physical INTID fired, `vtimer_lr`; a
    /// GICv3 SGI another CPU posted, `ferrovisor_shared::sgi`). One of the
    /// last flush's (`< n`, the same interrupt) was folded with it; the
    /// others carry interrupts the host did not put there, whose state comes
    /// back here. A pending SGI is latched again (el2 took it from the
    /// mailbox); a hardware interrupt's pending state is its line's, which
    /// the host samples after this.
    fn fold_el2(&mut self, vcpu: usize, cpu_if: &mut VgicCpuState, n: usize) {
        let model = self.model;
        let mut bits = core::mem::take(&mut cpu_if.el2_lrs);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(&lr) = cpu_if.lr.get(i) else { continue };
            let intid = vintid(model, lr);
            let state = state_of(model, lr);
            // Only private interrupts are ever put there this way.
            if intid >= super::state::PRIVATE_COUNT {
                continue;
            }
            // A GICv2 SGI's list register names its source (CPUID).
            let source = if model == Model::V2 { ((lr >> v2::CPUID_SHIFT) & v2::CPUID_MASK) as u8 } else { 0 };
            let Some(irq) = self.irq_mut(vcpu, intid) else { continue };
            if i >= n {
                fold(model, irq, source, state);
            }
            if state & STATE_PENDING != 0 && irq.hw.is_none() {
                if model == Model::V2 && irq.is_sgi() {
                    irq.sgi_pend |= 1 << source;
                } else {
                    irq.latch = true;
                }
            }
            // A private interrupt: no other vCPU to kick.
            self.update(vcpu, intid, &mut super::Kicks::default());
        }
    }

    /// See [`super::Vgic::has_pending`].
    pub fn has_pending(&self, vcpu: usize, cpu_if: &VgicCpuState) -> bool {
        let Some(vs) = self.vcpus.get(vcpu) else { return false };
        let (pmr, grp0, grp1) = match self.model {
            Model::V3 => ((cpu_if.vmcr >> 24) as u8, cpu_if.vmcr & 1 != 0, cpu_if.vmcr & 2 != 0),
            Model::V2 => ((((cpu_if.vmcr >> 27) & 0x1f) as u8) << 3, cpu_if.vmcr & 1 != 0, cpu_if.vmcr & 2 != 0),
        };
        vs.ap_list.iter().filter_map(|&intid| self.irq(vcpu, intid.into())).any(|irq| {
            let takeable = if self.model == Model::V2 && irq.is_sgi() {
                // Each source is its own interrupt: one not already active.
                (irq.sgi_pend | if irq.in_lr { irq.lr_sgi_pend } else { 0 }) & !irq.sgi_act != 0
            } else {
                irq.pending(self.model) && !irq.active
            };
            let group_on = if irq.group1 { grp1 } else { grp0 };
            takeable && irq.enabled && self.group_enabled(irq) && group_on && irq.priority < pmr
        })
    }
}

/// Puts one interrupt (not a GICv2 SGI) in the next list register. False when
/// none is left.
fn fill_one(
    model: Model,
    irq: &mut Irq,
    deliverable: bool,
    map: &mut [LrSlot; MAX_LIST_REGS],
    lrs: &mut [u64; MAX_LIST_REGS],
    used: &mut usize,
    nr_lrs: usize,
) -> bool {
    let mut state = 0;
    // An LPI has no active state: its list register is only ever pending,
    // with no EOI maintenance (it is edge-like).
    if irq.active && !irq.is_lpi() {
        state |= STATE_ACTIVE;
    }
    // The pending state of a hardware interrupt stays at the physical
    // distributor while it is active; a level one without hardware is
    // resampled when the guest deactivates it (EOI maintenance).
    let pend_ok = !irq.active || (irq.hw.is_none() && irq.edge);
    if deliverable && pend_ok {
        state |= STATE_PENDING;
    }
    if state == 0 {
        return true;
    }
    if *used >= nr_lrs {
        return false;
    }
    let fields = LrFields {
        intid: irq.intid.into(),
        state,
        priority: irq.priority,
        group1: irq.group1,
        hw: irq.hw,
        eoi: !irq.edge,
        source: 0,
    };
    if let (Some(slot), Some(lr)) = (map.get_mut(*used), lrs.get_mut(*used)) {
        *lr = encode(model, &fields);
        *slot = LrSlot { intid: irq.intid, source: 0 };
        *used += 1;
    }
    irq.in_lr = true;
    irq.lr_act_written = false;
    if state & STATE_PENDING != 0 {
        // The latch goes with the list register; sync gives it back if the
        // guest did not take it.
        irq.lr_latch = irq.latch;
        irq.latch = false;
    } else {
        irq.lr_latch = false;
    }
    true
}

/// A GICv2 SGI: one list register per source CPU (pending or active). False
/// when the list registers ran out before every source had one.
fn fill_v2_sgi(
    irq: &mut Irq,
    deliverable: bool,
    map: &mut [LrSlot; MAX_LIST_REGS],
    lrs: &mut [u64; MAX_LIST_REGS],
    used: &mut usize,
    nr_lrs: usize,
) -> bool {
    let pend = if deliverable { irq.sgi_pend } else { 0 };
    let sources = pend | irq.sgi_act;
    if sources == 0 {
        return true;
    }
    irq.lr_act_written = false;
    for src in 0..8u8 {
        let bit = 1u8 << src;
        if sources & bit == 0 {
            continue;
        }
        if *used >= nr_lrs {
            return false;
        }
        let mut state = 0;
        if irq.sgi_act & bit != 0 {
            state |= STATE_ACTIVE;
        }
        if pend & bit != 0 {
            state |= STATE_PENDING;
        }
        let fields = LrFields {
            intid: irq.intid.into(),
            state,
            priority: irq.priority,
            group1: irq.group1,
            hw: None,
            eoi: false,
            source: src,
        };
        if let (Some(slot), Some(lr)) = (map.get_mut(*used), lrs.get_mut(*used)) {
            *lr = encode(Model::V2, &fields);
            *slot = LrSlot { intid: irq.intid, source: src };
            *used += 1;
        }
        if !irq.in_lr {
            irq.in_lr = true;
            irq.lr_sgi_pend = 0;
        }
        if state & STATE_PENDING != 0 {
            irq.sgi_pend &= !bit;
            irq.lr_sgi_pend |= bit;
        }
    }
    true
}

/// Folds one saved list register back into its interrupt.
fn fold(model: Model, irq: &mut Irq, source: u8, state: u64) {
    let pending = state & STATE_PENDING != 0;
    let active = state & STATE_ACTIVE != 0;
    if model == Model::V2 && irq.is_sgi() {
        let bit = 1u8.checked_shl(source.into()).unwrap_or(0);
        if pending {
            irq.sgi_pend |= irq.lr_sgi_pend & bit;
        }
        if !irq.lr_act_written {
            if active {
                irq.sgi_act |= bit;
            } else {
                irq.sgi_act &= !bit;
            }
        }
        return;
    }
    if irq.is_lpi() {
        // Still pending: not taken, the latch comes back. Invalid or active:
        // the guest acknowledged it, and an LPI is never active here.
        if pending && !active {
            irq.latch |= irq.lr_latch;
        }
        return;
    }
    if pending {
        // Not taken: the latch comes back (unless the host cleared it
        // meanwhile, which also cleared lr_latch). A latch set while it was
        // in the list register is kept either way.
        irq.latch |= irq.lr_latch;
    }
    if !irq.lr_act_written {
        irq.active = active;
    }
}
