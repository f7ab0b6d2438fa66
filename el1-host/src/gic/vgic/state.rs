//! The vGIC's state behind its lock: per-interrupt state, per-vCPU ap lists,
//! and the rules that keep an interrupt on the ap list of the vCPU it is
//! pending or active for.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use ferrovisor_shared::vcpu::MAX_LIST_REGS;

use super::budget::Share;
use super::its::GuestMemory;
use super::{Kicks, Model};
use alloc::sync::Arc;

use ferrovisor_shared::gic::{GICD_CTLR_ENABLE_GRP0, GICD_CTLR_ENABLE_GRP1};
pub use ferrovisor_shared::gic::{GICD_IROUTER_IRM, LPI_BASE, MPIDR_AFFINITY_MASK, PRIVATE_COUNT, SGI_COUNT};
use ferrovisor_shared::its::XBASER_ATTRS;
pub use ferrovisor_shared::its::{PENDBASER_PA, PENDBASER_PTZ, PROPBASER_ID_BITS, PROPBASER_PA};

/// The implemented bits of an 8-bit priority (32 levels).
pub const PRIORITY_MASK: u8 = 0xf8;
/// `GICD_CTLR` group enables (EnableGrp0, EnableGrp1).
pub const CTLR_ENABLE_MASK: u32 = GICD_CTLR_ENABLE_GRP0 | GICD_CTLR_ENABLE_GRP1;
/// INTID bits with LPIs on (`GICD_TYPER.IDbits` + 1): LPIs are 8192..=65535.
pub const LPI_ID_BITS: u32 = 16;
/// `GICR_PROPBASER`: IDbits [4:0], InnerCache [9:7], Shareability [11:10],
/// PA [51:12], OuterCache [58:56]; the rest is RES0.
pub const PROPBASER_MASK: u64 = PROPBASER_ID_BITS | XBASER_ATTRS | PROPBASER_PA;
/// `GICR_PENDBASER`: InnerCache [9:7], Shareability [11:10], PA [51:16],
/// OuterCache [58:56]. PTZ [62] is write-only: it says the table is zero,
/// so EnableLPIs need not read it.
pub const PENDBASER_MASK: u64 = XBASER_ATTRS | PENDBASER_PA;
/// LPI property table entry: Enable [0], Priority [7:2].
const PROP_ENABLE: u8 = 1;
const PROP_PRIORITY: u8 = 0xfc;

/// One interrupt, as the distributor (or a redistributor) holds it.
#[derive(Clone, Copy, Debug)]
pub struct Irq {
    pub intid: u16,
    pub enabled: bool,
    /// The pending latch: an edge, a software `ISPENDR` write, an SGI.
    pub latch: bool,
    /// The input line of a level-sensitive (or edge, for edge detection) interrupt.
    pub line: bool,
    pub active: bool,
    pub group1: bool,
    pub priority: u8,
    pub edge: bool,
    /// Hardware-linked to this physical INTID.
    pub hw: Option<u32>,
    /// SPIs on GICv3: `GICD_IROUTER<n>` (affinity and IRM bits only).
    pub route: u64,
    /// SPIs on GICv2: `GICD_ITARGETSR` byte (CPU mask).
    pub targets: u8,
    /// SPIs on GICv3 with IRM == 0: the vCPU whose MPIDR matches `route`.
    pub routed_to: Option<u8>,
    /// GICv2 SGIs: pending per source CPU.
    pub sgi_pend: u8,
    /// GICv2 SGIs: active per source CPU.
    pub sgi_act: u8,
    /// The vCPU whose ap list holds this interrupt.
    pub ap: Option<u8>,
    /// In one (or, for a GICv2 SGI, several) list registers of the `ap` vCPU.
    pub in_lr: bool,
    /// The pending latch that went into the list register (given back at sync
    /// if the list register is still pending; dropped if the guest took it or
    /// the host cleared the pending state meanwhile).
    pub lr_latch: bool,
    /// GICv2 SGIs: the pending sources that went into list registers.
    pub lr_sgi_pend: u8,
    /// The host wrote the active state while it sat in a list register: the
    /// list register's active state is stale.
    pub lr_act_written: bool,
}

impl Irq {
    /// The reset state of `intid`.
    pub fn new(model: Model, intid: u32) -> Self {
        let sgi = intid < SGI_COUNT;
        Irq {
            intid: intid as u16,
            // SGIs reset enabled (as on GIC-400 and under KVM); the rest disabled.
            enabled: sgi,
            latch: false,
            line: false,
            active: false,
            // GICv3 guests run in Non-secure group 1; a GICv2 guest without
            // Security Extensions sees everything in group 0 until it says otherwise.
            group1: model == Model::V3,
            priority: 0,
            // SGIs are always edge; PPIs and SPIs reset level-sensitive.
            edge: sgi,
            hw: None,
            route: 0,
            targets: 0,
            routed_to: None,
            sgi_pend: 0,
            sgi_act: 0,
            ap: None,
            in_lr: false,
            lr_latch: false,
            lr_sgi_pend: 0,
            lr_act_written: false,
        }
    }

    pub fn is_sgi(&self) -> bool {
        u32::from(self.intid) < SGI_COUNT
    }

    pub fn is_private(&self) -> bool {
        u32::from(self.intid) < PRIVATE_COUNT
    }

    #[inline]
    pub fn is_lpi(&self) -> bool {
        u32::from(self.intid) >= LPI_BASE
    }

    /// A new LPI for `vcpu`: edge-like (pending until taken), group 1, no
    /// active state; priority and enable come from the property table.
    fn new_lpi(intid: u16, vcpu: u8) -> Self {
        Irq { edge: true, group1: true, enabled: false, routed_to: Some(vcpu), ..Irq::new(Model::V3, intid.into()) }
    }

    /// The pending state, including what sits in a list register.
    #[inline]
    pub fn pending(&self, model: Model) -> bool {
        if model == Model::V2 && self.is_sgi() {
            return self.sgi_pend | self.lr_sgi_pend_view() != 0;
        }
        self.latch || (self.in_lr && self.lr_latch) || (!self.edge && self.line)
    }

    fn lr_sgi_pend_view(&self) -> u8 {
        if self.in_lr {
            self.lr_sgi_pend
        } else {
            0
        }
    }

    #[inline]
    pub fn is_active(&self, model: Model) -> bool {
        if model == Model::V2 && self.is_sgi() {
            self.sgi_act != 0
        } else {
            self.active
        }
    }
}

/// What one list register holds: the interrupt and, for a GICv2 SGI, its source.
#[derive(Clone, Copy, Debug, Default)]
pub struct LrSlot {
    pub intid: u16,
    pub source: u8,
}

/// One vCPU's private interrupts and list-register bookkeeping.
pub struct VcpuState {
    pub mpidr: u64,
    pub private: [Irq; PRIVATE_COUNT as usize],
    /// INTIDs pending or active for this vCPU, or in its list registers.
    pub ap_list: Vec<u16>,
    /// What `flush` put in list registers `0..in_flight`.
    pub lr_map: [LrSlot; MAX_LIST_REGS],
    pub in_flight: usize,
    /// `GICR_WAKER.ProcessorSleep`.
    pub sleep: bool,
    /// `GICR_CTLR.EnableLPIs`.
    pub enable_lpis: bool,
    pub propbaser: u64,
    pub pendbaser: u64,
    /// The last `GICR_PENDBASER` write had PTZ (the table is zero).
    pub pend_ptz: bool,
    /// EnableLPIs was set with a pending table that may hold pending LPIs:
    /// it is still to be read (`Vgic::pending_table_effects`).
    pub scan_pending: bool,
}

impl VcpuState {
    fn new(model: Model, mpidr: u64) -> Self {
        VcpuState {
            mpidr,
            private: core::array::from_fn(|i| Irq::new(model, i as u32)),
            ap_list: Vec::new(),
            lr_map: [LrSlot::default(); MAX_LIST_REGS],
            in_flight: 0,
            sleep: true,
            enable_lpis: false,
            propbaser: 0,
            pendbaser: 0,
            pend_ptz: false,
            scan_pending: false,
        }
    }
}

/// Everything the vGIC lock guards.
pub struct State {
    pub model: Model,
    pub nr_spis: u32,
    /// `GICD_CTLR` EnableGrp0 (bit 0) and EnableGrp1 (bit 1).
    pub ctlr: u32,
    pub vcpus: Vec<VcpuState>,
    pub spis: Vec<Irq>,
    /// vCPUs to kick for moves done where no caller can take the kicks.
    pub deferred: Kicks,
    /// LPIs are implemented (`GICD_TYPER.LPIS`).
    pub lpis_on: bool,
    /// A vCPU's `scan_pending` was set by the write just made.
    pub scan_requested: bool,
    /// The LPIs ever made pending, by INTID (at most [`super::MAX_LPIS`]).
    pub lpis: BTreeMap<u16, Irq>,
    /// What `lpis` is charged to: the VM's share of the host's.
    pub share: Arc<Share>,
}

impl Drop for State {
    fn drop(&mut self) {
        self.share.give_lpis(self.lpis.len());
    }
}

impl State {
    pub fn new(model: Model, mpidrs: &[u64], nr_spis: u32, lpis_on: bool, share: Arc<Share>) -> Self {
        let mut s = State {
            model,
            nr_spis,
            ctlr: 0,
            vcpus: mpidrs.iter().map(|&m| VcpuState::new(model, m)).collect(),
            spis: (0..nr_spis).map(|i| Irq::new(model, PRIVATE_COUNT + i)).collect(),
            deferred: Kicks::default(),
            lpis_on,
            scan_requested: false,
            lpis: BTreeMap::new(),
            share,
        };
        for i in 0..s.spis.len() {
            s.resolve_route(i);
        }
        s
    }

    /// Back to reset values; the wiring (hardware links, input line levels)
    /// stays, as it belongs to the devices and not to the guest.
    pub fn reset(&mut self) {
        let model = self.model;
        self.ctlr = 0;
        self.deferred = Kicks::default();
        let fresh = |old: &Irq| Irq { hw: old.hw, line: old.line, ..Irq::new(model, old.intid.into()) };
        for v in &mut self.vcpus {
            for irq in &mut v.private {
                *irq = fresh(irq);
            }
            v.ap_list.clear();
            v.in_flight = 0;
            v.sleep = true;
            v.enable_lpis = false;
            v.propbaser = 0;
            v.pendbaser = 0;
            v.pend_ptz = false;
            v.scan_pending = false;
        }
        self.share.give_lpis(self.lpis.len());
        self.lpis.clear();
        for irq in &mut self.spis {
            *irq = fresh(irq);
        }
        for i in 0..self.spis.len() {
            self.resolve_route(i);
        }
        // Level lines still high are pending again, but nothing is enabled yet:
        // no ap list needs them.
    }

    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// Whether `intid` names an interrupt (private ones need a valid `owner`).
    pub fn exists(&self, owner: usize, intid: u32) -> bool {
        if intid >= LPI_BASE {
            self.lpi_key(intid).is_some_and(|k| self.lpis.contains_key(&k))
        } else if intid < PRIVATE_COUNT {
            owner < self.vcpus.len()
        } else {
            intid - PRIVATE_COUNT < self.nr_spis
        }
    }

    /// An LPI INTID as the key of `lpis` (none with LPIs off).
    #[inline]
    fn lpi_key(&self, intid: u32) -> Option<u16> {
        u16::try_from(intid).ok().filter(|_| self.lpis_on && intid >= LPI_BASE)
    }

    #[inline]
    pub fn irq(&self, owner: usize, intid: u32) -> Option<&Irq> {
        if intid >= LPI_BASE {
            self.lpis.get(&self.lpi_key(intid)?)
        } else if intid < PRIVATE_COUNT {
            self.vcpus.get(owner)?.private.get(intid as usize)
        } else {
            self.spis.get((intid - PRIVATE_COUNT) as usize)
        }
    }

    #[inline]
    pub fn irq_mut(&mut self, owner: usize, intid: u32) -> Option<&mut Irq> {
        if intid >= LPI_BASE {
            let key = self.lpi_key(intid)?;
            self.lpis.get_mut(&key)
        } else if intid < PRIVATE_COUNT {
            self.vcpus.get_mut(owner)?.private.get_mut(intid as usize)
        } else {
            self.spis.get_mut((intid - PRIVATE_COUNT) as usize)
        }
    }

    #[inline]
    pub fn group_enabled(&self, irq: &Irq) -> bool {
        self.ctlr & (1 << u32::from(irq.group1)) != 0
    }

    /// Pending, enabled and its group forwarded by the distributor (an LPI
    /// also needs its redistributor's `GICR_CTLR.EnableLPIs`).
    #[inline]
    pub fn deliverable(&self, irq: &Irq) -> bool {
        let lpis_ok =
            !irq.is_lpi() || irq.routed_to.and_then(|v| self.vcpus.get(usize::from(v))).is_some_and(|v| v.enable_lpis);
        irq.enabled && irq.pending(self.model) && self.group_enabled(irq) && lpis_ok
    }

    /// The lowest-numbered vCPU in a GICv2 CPU mask.
    fn first_in_mask(&self, mask: u8) -> Option<usize> {
        let mask = mask & self.vcpu_mask();
        (mask != 0).then(|| mask.trailing_zeros() as usize)
    }

    /// GICv2: CPU-mask bits of the vCPUs that exist.
    pub fn vcpu_mask(&self) -> u8 {
        match self.vcpus.len() {
            n if n >= 8 => 0xff,
            n => ((1u16 << n) - 1) as u8,
        }
    }

    /// The vCPU index whose MPIDR has `affinity` (Aff3.Aff2.Aff1.Aff0 in MPIDR layout).
    pub fn vcpu_by_affinity(&self, affinity: u64) -> Option<usize> {
        self.vcpus.iter().position(|v| v.mpidr & MPIDR_AFFINITY_MASK == affinity & MPIDR_AFFINITY_MASK)
    }

    /// Recomputes `routed_to` of SPI index `spi` from its `route`.
    pub fn resolve_route(&mut self, spi: usize) {
        let Some(irq) = self.spis.get(spi) else { return };
        let to = self.vcpu_by_affinity(irq.route).and_then(|v| u8::try_from(v).ok());
        if let Some(irq) = self.spis.get_mut(spi) {
            irq.routed_to = to;
        }
    }

    /// The vCPU `irq` is delivered to when it is not already held somewhere.
    pub fn target(&self, owner: usize, irq: &Irq) -> Option<usize> {
        if irq.is_private() {
            return (owner < self.vcpus.len()).then_some(owner);
        }
        if irq.is_lpi() {
            // The ITS collection's vCPU, as the last SetPending or Move said.
            return irq.routed_to.map(usize::from).filter(|&v| v < self.vcpus.len());
        }
        match self.model {
            // A uniprocessor GIC's ITARGETSR are RAZ/WI: its SPIs all go to the one CPU.
            Model::V2 if self.vcpus.len() == 1 => Some(0),
            Model::V2 => self.first_in_mask(irq.targets),
            Model::V3 if irq.route & GICD_IROUTER_IRM != 0 => {
                // 1 of N: the first vCPU that is awake, else vCPU 0.
                Some(self.vcpus.iter().position(|v| !v.sleep).unwrap_or(0))
            }
            Model::V3 => irq.routed_to.map(usize::from),
        }
    }

    /// Which vCPU's ap list `irq` belongs on now, if any.
    fn oracle(&self, owner: usize, irq: &Irq) -> Option<usize> {
        if irq.in_lr {
            // Stays with the vCPU whose list registers hold it until sync.
            return irq.ap.map(usize::from);
        }
        let active = irq.is_active(self.model);
        if active {
            if let Some(v) = irq.ap {
                // An active interrupt is deactivated where it was taken.
                return Some(usize::from(v));
            }
        }
        if active || self.deliverable(irq) {
            self.target(owner, irq)
        } else {
            None
        }
    }

    /// After a change to (`owner`'s) `intid`: puts it on the right ap list and
    /// kicks the vCPU that must look at it.
    pub fn update(&mut self, owner: usize, intid: u32, kicks: &mut Kicks) {
        let Some(irq) = self.irq(owner, intid).copied() else { return };
        let want = self.oracle(owner, &irq);
        let cur = irq.ap.map(usize::from);
        if cur == want {
            if let Some(v) = cur {
                kicks.add(v);
            }
            return;
        }
        if let Some(c) = cur {
            self.remove_from_ap_list(c, irq.intid);
        }
        let new_ap = want.and_then(|w| u8::try_from(w).ok()).filter(|&w| usize::from(w) < self.vcpus.len());
        if let Some(w) = new_ap {
            if let Some(v) = self.vcpus.get_mut(usize::from(w)) {
                v.ap_list.push(irq.intid);
            }
            kicks.add(usize::from(w));
        }
        if let Some(irq) = self.irq_mut(owner, intid) {
            irq.ap = new_ap;
        }
    }

    /// Whether `vcpu` has nothing pending or active (and nothing in its list
    /// registers).
    pub fn ap_list_is_empty(&self, vcpu: usize) -> bool {
        self.vcpus.get(vcpu).is_none_or(|v| v.ap_list.is_empty() && v.in_flight == 0)
    }

    fn remove_from_ap_list(&mut self, vcpu: usize, intid: u16) {
        if let Some(v) = self.vcpus.get_mut(vcpu) {
            if let Some(pos) = v.ap_list.iter().position(|&i| i == intid) {
                v.ap_list.swap_remove(pos);
            }
        }
    }

    /// Re-evaluates every interrupt (after a `GICD_CTLR` change).
    pub fn update_all(&mut self, kicks: &mut Kicks) {
        for v in 0..self.vcpus.len() {
            for intid in 0..PRIVATE_COUNT {
                self.update(v, intid, kicks);
            }
        }
        for i in 0..self.nr_spis {
            self.update(0, PRIVATE_COUNT + i, kicks);
        }
        self.update_lpis(None, kicks);
    }

    /// Re-evaluates the LPIs targeting `vcpu` (all with `None`).
    pub fn update_lpis(&mut self, vcpu: Option<usize>, kicks: &mut Kicks) {
        let want = |irq: &Irq| vcpu.is_none() || irq.routed_to.map(usize::from) == vcpu;
        let ids: Vec<u16> = self.lpis.values().filter(|irq| want(irq)).map(|irq| irq.intid).collect();
        for intid in ids {
            self.update(0, intid.into(), kicks);
        }
    }

    /// Priority and enable of LPI `intid` from the property table `vcpu`'s
    /// `GICR_PROPBASER` names. An INTID beyond `PROPBASER.IDbits` (or
    /// IDbits below 14 bits) or an entry outside guest RAM reads as disabled.
    pub fn read_property(&self, mem: &dyn GuestMemory, vcpu: usize, intid: u32) -> (u8, bool) {
        let Some(vs) = self.vcpus.get(vcpu) else { return (0, false) };
        let id_bits = (vs.propbaser & PROPBASER_ID_BITS) as u32 + 1;
        if id_bits < 14 || intid >> id_bits.min(31) != 0 || intid < LPI_BASE {
            return (0, false);
        }
        let mut byte = [0u8];
        let ipa = (vs.propbaser & PROPBASER_PA) + u64::from(intid - LPI_BASE);
        if mem.read(ipa, &mut byte).is_err() {
            return (0, false);
        }
        (byte[0] & PROP_PRIORITY & PRIORITY_MASK, byte[0] & PROP_ENABLE != 0)
    }

    /// Re-reads LPI `intid`'s configuration from its target's property table.
    fn reload_lpi(&mut self, mem: &dyn GuestMemory, intid: u16, kicks: &mut Kicks) {
        let Some(vcpu) = self.lpis.get(&intid).and_then(|irq| irq.routed_to) else { return };
        let (priority, enabled) = self.read_property(mem, vcpu.into(), intid.into());
        if let Some(irq) = self.lpis.get_mut(&intid) {
            irq.priority = priority;
            irq.enabled = enabled;
        }
        self.update(0, intid.into(), kicks);
    }

    /// See [`super::Vgic::apply_its`].
    pub fn apply_its(&mut self, mem: &dyn GuestMemory, effect: &super::its::Effect, kicks: &mut Kicks) {
        use super::its::Effect;
        let nr = self.vcpus.len();
        match *effect {
            Effect::SetPending { vcpu, intid } => {
                let (Some(key), Ok(v)) = (self.lpi_key(intid), u8::try_from(vcpu)) else { return };
                if vcpu >= nr {
                    return;
                }
                if !self.lpis.contains_key(&key) {
                    if self.lpis.len() >= super::MAX_LPIS || !self.share.take_lpis(1) {
                        return;
                    }
                    // First use: the property table is read now, then cached
                    // until INV or INVALL (IHI 0069 allows caching it).
                    let (priority, enabled) = self.read_property(mem, vcpu, intid);
                    self.lpis.insert(key, Irq { priority, enabled, ..Irq::new_lpi(key, v) });
                }
                if let Some(irq) = self.lpis.get_mut(&key) {
                    irq.routed_to = Some(v);
                    irq.latch = true;
                }
                self.update(0, intid, kicks);
            }
            Effect::ClearPending { intid, .. } => {
                let Some(irq) = self.irq_mut(0, intid) else { return };
                irq.latch = false;
                irq.lr_latch = false;
                self.update(0, intid, kicks);
            }
            Effect::Move { intid, to, .. } => {
                let Ok(to) = u8::try_from(to) else { return };
                if usize::from(to) >= nr {
                    return;
                }
                let Some(irq) = self.irq_mut(0, intid) else { return };
                irq.routed_to = Some(to);
                self.update(0, intid, kicks);
            }
            Effect::Invalidate { intid, .. } => {
                if let Some(key) = self.lpi_key(intid).filter(|k| self.lpis.contains_key(k)) {
                    self.reload_lpi(mem, key, kicks);
                }
            }
            Effect::MoveAll { from, to } => {
                let Ok(to) = u8::try_from(to) else { return };
                if usize::from(to) >= nr {
                    return;
                }
                for key in self.lpis_of(from) {
                    if let Some(irq) = self.lpis.get_mut(&key) {
                        irq.routed_to = Some(to);
                    }
                    self.update(0, key.into(), kicks);
                }
            }
            Effect::InvalidateAll { vcpu } => {
                for key in self.lpis_of(vcpu) {
                    self.reload_lpi(mem, key, kicks);
                }
            }
        }
    }

    /// The LPIs routed to `vcpu`.
    fn lpis_of(&self, vcpu: usize) -> Vec<u16> {
        self.lpis.values().filter(|irq| irq.routed_to.map(usize::from) == Some(vcpu)).map(|irq| irq.intid).collect()
    }

    /// Re-evaluates SPIs routed 1-of-N (after a `GICR_WAKER` change).
    pub fn update_1_of_n(&mut self, kicks: &mut Kicks) {
        if self.model != Model::V3 {
            return;
        }
        for i in 0..self.nr_spis {
            let irm = self.spis.get(i as usize).is_some_and(|irq| irq.route & GICD_IROUTER_IRM != 0);
            if irm {
                self.update(0, PRIVATE_COUNT + i, kicks);
            }
        }
    }

    /// Drops from `vcpu`'s ap list what no longer belongs there and moves
    /// what belongs to another vCPU (kicked through `deferred`).
    pub fn prune(&mut self, vcpu: usize) {
        let mut kicks = Kicks::default();
        let mut i = 0;
        while let Some(&intid) = self.vcpus.get(vcpu).and_then(|v| v.ap_list.get(i)) {
            self.update(vcpu, intid.into(), &mut kicks);
            // A removal swaps the last entry into slot i: look at it next.
            if self.vcpus.get(vcpu).and_then(|v| v.ap_list.get(i)) == Some(&intid) {
                i += 1;
            }
        }
        // The vCPU doing the pruning looks at its own list next anyway.
        kicks.0 &= !(1u64.checked_shl(vcpu as u32).unwrap_or(0));
        self.deferred.0 |= kicks.0;
    }
}

#[cfg(test)]
impl State {
    /// The ap-list bookkeeping holds together: each listed interrupt names
    /// the list it is on, once; outside list registers each interrupt is on
    /// the list of the vCPU it is to be delivered to (or deactivated on), and
    /// on none if neither; list-register residents belong to a vCPU with
    /// list registers in flight.
    pub fn check_invariants(&self) {
        for (v, vs) in self.vcpus.iter().enumerate() {
            for (k, &intid) in vs.ap_list.iter().enumerate() {
                assert!(!vs.ap_list[..k].contains(&intid), "INTID {intid} twice on vCPU {v}'s list");
                let irq = self.irq(v, intid.into()).expect("listed INTID exists");
                assert_eq!(irq.ap.map(usize::from), Some(v), "INTID {intid} on vCPU {v}'s list");
            }
        }
        for irq in &self.spis {
            let to = self.vcpu_by_affinity(irq.route).and_then(|v| u8::try_from(v).ok());
            assert_eq!(irq.routed_to, to, "SPI {} routed by {:#x}", irq.intid, irq.route);
        }
        let private = self.vcpus.iter().enumerate().flat_map(|(v, vs)| vs.private.iter().map(move |irq| (v, irq)));
        let spis = self.spis.iter().map(|irq| (0, irq));
        let lpis = self.lpis.values().map(|irq| (0, irq));
        assert!(self.lpis_on || self.lpis.is_empty());
        assert!(self.lpis.len() <= super::MAX_LPIS);
        for (owner, irq) in private.chain(spis).chain(lpis) {
            if irq.is_lpi() {
                assert!(!irq.active, "LPI {} has no active state", irq.intid);
            }
            if let Some(a) = irq.ap {
                let vs = &self.vcpus[usize::from(a)];
                assert!(vs.ap_list.contains(&irq.intid), "INTID {} says vCPU {a}", irq.intid);
                if irq.is_private() {
                    assert_eq!(usize::from(a), owner);
                }
            }
            if irq.in_lr {
                let a = irq.ap.expect("a list-register resident is listed");
                assert_ne!(self.vcpus[usize::from(a)].in_flight, 0);
            } else {
                // Listed exactly where it is to be delivered (or deactivated).
                assert_eq!(irq.ap.map(usize::from), self.oracle(owner, irq), "INTID {} of vCPU {owner}", irq.intid);
            }
        }
    }
}
