//! The virtual GIC (docs/interrupts.md §3-§5): the distributor, redistributors and list
//! registers one VM sees, as plain logic (tested on the dev host).
//!
//! One [`Vgic`] per VM. All state sits behind one lock, taken for the length
//! of one call and never across calls. Every interrupt that is pending or
//! active for a vCPU (or sits in its list registers) is on that vCPU's "ap
//! list"; [`Vgic::flush`] fills the list registers from it before entry and
//! [`Vgic::sync`] folds them back after exit.
//!
//! The guest sees a GICv3 with a single security state (`GICD_CTLR.DS` == 1,
//! affinity routing always on, LPIs if [`VgicConfig::lpis`]) or a GICv2
//! without Security Extensions. Both report [`GIC_IIDR`].
//!
//! LPIs (GICv3 only): 16-bit INTIDs, at most [`MAX_LPIS`] of them in use.
//! The emulated ITS ([`its`]) says what happens to them through
//! [`Vgic::apply_its`]. Their pending state is kept in the host (the
//! guest's pending table is never read or written); priority and enable are
//! read from the guest's property table when an LPI is first made pending
//! and again on INV/INVALL only (the architecture lets the GIC cache them).
//!
//! State the guest or the host changes while an interrupt sits in a running
//! vCPU's list register is merged at sync, never dropped: a pending state
//! made again stays pending, one cleared stays cleared, and an active state
//! the host wrote wins over the list register's.
#![cfg_attr(target_os = "none", allow(dead_code, reason = "introspection used by the tests"))]

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use ferrovisor_shared::sgi::{self, SgiTable, SGI_TABLE_VCPUS};
use ferrovisor_shared::vcpu::VgicCpuState;
use spin::Mutex;

pub mod budget;
#[cfg(test)]
mod conformance_tests;
pub mod its;
#[cfg(test)]
mod lpi_tests;
mod lr;
mod mmio;
mod regs;
#[cfg(all(test, loom))]
mod sgi_models;
mod state;
#[cfg(test)]
mod tests;

use state::State;

/// `GICD_IIDR` and `GICR_IIDR`: ProductID 0, Variant 0, Revision 4,
/// Implementer 0x658 ("FX", Ferrovisor). Not a JEP106 assignment; chosen so
/// no guest matches it against a real implementation's errata.
pub const GIC_IIDR: u32 = 0x0000_4658;
/// Most vCPUs a VM can have (the width of [`Kicks`]).
pub const MAX_VCPUS: usize = 64;
/// Most vCPUs a GICv2 VM can have (its 8-bit CPU masks).
pub const MAX_VCPUS_V2: usize = 8;
/// Most SPIs (INTIDs 32..1020), rounded down to whole banks of 32.
pub const MAX_SPIS: u32 = 960;
/// Most distinct LPIs one VM can have made pending (each keeps its state
/// once made pending, until reset); further ones are ignored.
pub const MAX_LPIS: usize = 8192;
/// `GICD_TYPER.IDbits` + 1 with LPIs on: the `lpi_id_bits` to build the
/// VM's [`its::Its`] with.
pub const LPI_ID_BITS: u32 = state::LPI_ID_BITS;
/// Size of the distributor frame for `model`.
pub const fn dist_size(model: Model) -> u64 {
    match model {
        Model::V2 => 0x1000,
        Model::V3 => 0x1_0000,
    }
}
/// Distance between two vCPUs' redistributors (RD frame + SGI frame).
pub const REDIST_STRIDE: u64 = mmio::GICR_STRIDE;

/// The GIC architecture the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    V2,
    V3,
}

/// What one VM's vGIC is built with.
#[derive(Clone, Debug)]
pub struct VgicConfig {
    pub model: Model,
    /// One MPIDR per vCPU, in vCPU-index order (their affinity fields route
    /// SPIs and SGIs on GICv3).
    pub vcpu_mpidrs: Vec<u64>,
    /// A multiple of 32, at most [`MAX_SPIS`].
    pub nr_spis: u32,
    /// LPIs (`GICD_TYPER.LPIS`, `GICR_TYPER.PLPIS`), GICv3 only. Off, the
    /// LPI registers read as zero and ignore writes.
    pub lpis: bool,
    /// What its LPIs are charged to (the VM's share of the host's budget).
    pub share: Arc<budget::Share>,
}

/// A configuration the vGIC cannot be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgicError {
    NoVcpus,
    TooManyVcpus { model: Model, count: usize, max: usize },
    BadSpiCount(u32),
    DuplicateAffinity { first: usize, second: usize },
    LpisNeedV3,
}

impl fmt::Display for VgicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VgicError::NoVcpus => write!(f, "no vCPUs"),
            VgicError::TooManyVcpus { model, count, max } => {
                write!(f, "{count} vCPUs, more than the {max} a {model:?} vGIC supports")
            }
            VgicError::BadSpiCount(n) => {
                write!(f, "{n} SPIs: the count must be a multiple of 32 and at most {MAX_SPIS}")
            }
            VgicError::DuplicateAffinity { first, second } => {
                write!(f, "vCPUs {first} and {second} have the same MPIDR affinity")
            }
            VgicError::LpisNeedV3 => write!(f, "LPIs need a GICv3 vGIC"),
        }
    }
}

/// Bit i set: vCPU i must be kicked (its state changed while it may be in
/// the guest or blocked). May include the calling vCPU itself.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kicks(pub u64);

impl Kicks {
    pub fn add(&mut self, vcpu: usize) {
        if let Some(bit) = 1u64.checked_shl(vcpu as u32).filter(|_| vcpu < 64) {
            self.0 |= bit;
        }
    }

    pub fn contains(self, vcpu: usize) -> bool {
        vcpu < 64 && self.0 & (1 << vcpu) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The vCPU indices, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&i| self.contains(i))
    }
}

impl core::ops::BitOr for Kicks {
    type Output = Kicks;
    fn bitor(self, rhs: Kicks) -> Kicks {
        Kicks(self.0 | rhs.0)
    }
}

/// Whether a write at `offset` of the distributor (or of a redistributor's
/// SGI frame, which has the same layout for them) may change what el2 is
/// told of the private interrupts (`config_changed`): `GICD_CTLR`'s group
/// enables, and the group, enable and priority registers of INTIDs 0-31.
/// Every other write (SGIR, pending and active state, SPIs) leaves it.
const fn private_config(offset: u64) -> bool {
    matches!(offset, 0x000..=0x003 | 0x080..=0x083 | 0x100..=0x103 | 0x180..=0x183 | 0x400..=0x41f)
}

/// One VM's virtual GIC.
pub struct Vgic {
    model: Model,
    nr_vcpus: usize,
    state: Mutex<State>,
    /// Per vCPU: its ap list may be non-empty. Set (under the lock) whenever
    /// an operation kicks the vCPU, cleared by a `flush` that found the list
    /// empty, so `flush` and `sync` of an idle vCPU, the common exit, take no
    /// lock. A setter publishes it before the request and kick that make the
    /// vCPU flush again (release/acquire through the request bits).
    listed: Vec<AtomicBool>,
    /// `State::deferred` is not empty.
    deferred: AtomicBool,
    /// Some vCPU's `scan_pending` is set: `pending_table_effects` has work,
    /// so the other redistributor writes need not look.
    scan_pending: AtomicBool,
    /// Bumped by every guest write to the distributor or a redistributor,
    /// a hardware link and a reset: what [`Vgic::hw_lr`] computed from is
    /// unchanged while this is (`vcpu::timers::load`).
    config_gen: AtomicU64,
    /// GICv3: the vCPUs' SGI mailboxes el2 posts to (`ferrovisor_shared::sgi`).
    sgi_table: Option<Box<SgiTable>>,
}

impl Vgic {
    /// # Errors
    /// A configuration with no vCPUs, more than [`MAX_VCPUS`] (or
    /// [`MAX_VCPUS_V2`] on GICv2), two vCPUs with one affinity (GICv3), or an
    /// SPI count that is not a multiple of 32 up to [`MAX_SPIS`], or LPIs on
    /// GICv2.
    pub fn new(cfg: VgicConfig) -> Result<Self, VgicError> {
        let count = cfg.vcpu_mpidrs.len();
        if count == 0 {
            return Err(VgicError::NoVcpus);
        }
        let max = match cfg.model {
            Model::V2 => MAX_VCPUS_V2,
            Model::V3 => MAX_VCPUS,
        };
        if count > max {
            return Err(VgicError::TooManyVcpus { model: cfg.model, count, max });
        }
        if !cfg.nr_spis.is_multiple_of(32) || cfg.nr_spis > MAX_SPIS {
            return Err(VgicError::BadSpiCount(cfg.nr_spis));
        }
        if cfg.lpis && cfg.model != Model::V3 {
            return Err(VgicError::LpisNeedV3);
        }
        if cfg.model == Model::V3 {
            for (i, a) in cfg.vcpu_mpidrs.iter().enumerate() {
                let aff = a & state::MPIDR_AFFINITY_MASK;
                if let Some(j) = cfg.vcpu_mpidrs[..i].iter().position(|b| b & state::MPIDR_AFFINITY_MASK == aff) {
                    return Err(VgicError::DuplicateAffinity { first: j, second: i });
                }
            }
        }
        Ok(Vgic {
            model: cfg.model,
            nr_vcpus: count,
            state: Mutex::new(State::new(cfg.model, &cfg.vcpu_mpidrs, cfg.nr_spis, cfg.lpis, cfg.share)),
            listed: (0..count).map(|_| AtomicBool::new(true)).collect(),
            deferred: AtomicBool::new(false),
            scan_pending: AtomicBool::new(false),
            config_gen: AtomicU64::new(1),
            sgi_table: Some({
                let mut t = Box::<SgiTable>::default();
                t.nr_vcpus = count.min(SGI_TABLE_VCPUS) as u64;
                t
            }),
        })
    }

    pub fn model(&self) -> Model {
        self.model
    }

    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    /// Marks the vCPUs in `kicks` as maybe having interrupts listed.
    fn mark(&self, kicks: Kicks) -> Kicks {
        for v in kicks.iter() {
            if let Some(f) = self.listed.get(v) {
                f.store(true, Ordering::Release);
            }
        }
        kicks
    }

    /// After `flush`/`sync` under the lock: kicks they deferred.
    fn note_deferred(&self, s: &State) {
        if !s.deferred.is_empty() {
            self.mark(s.deferred);
            self.deferred.store(true, Ordering::Release);
        }
    }

    /// A guest read of the distributor by `vcpu`; `offset` from the frame's
    /// base, `size` 1, 2, 4 or 8. Unaligned, wrong-size and reserved
    /// accesses read as zero.
    pub fn dist_read(&self, vcpu: usize, offset: u64, size: u8) -> u64 {
        self.state.lock().dist_read(vcpu, offset, size)
    }

    /// A guest write of the distributor (unaligned, wrong-size and reserved
    /// accesses are ignored).
    pub fn dist_write(&self, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        let mut kicks = Kicks::default();
        let mut s = self.state.lock();
        s.dist_write(vcpu, offset, size, value, &mut kicks);
        if private_config(offset) {
            self.config_changed(&s);
        }
        self.mark(kicks)
    }

    /// GICv3 only: `offset` from the base of the whole redistributor region;
    /// vCPU i's RD frame is at i * 0x2_0000, its SGI frame at i * 0x2_0000 +
    /// 0x1_0000. Offsets beyond the last vCPU: RAZ/WI.
    pub fn redist_read(&self, vcpu: usize, offset: u64, size: u8) -> u64 {
        self.state.lock().redist_read(vcpu, offset, size)
    }

    /// See [`Vgic::redist_read`].
    pub fn redist_write(&self, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        let mut kicks = Kicks::default();
        let mut s = self.state.lock();
        s.redist_write(vcpu, offset, size, value, &mut kicks);
        let frame = offset % REDIST_STRIDE;
        let sgi_frame = ferrovisor_shared::gic::GICR_SGI_BASE as u64;
        if frame >= sgi_frame && private_config(frame - sgi_frame) {
            self.config_changed(&s);
        }
        if core::mem::take(&mut s.scan_requested) {
            self.scan_pending.store(true, Ordering::Relaxed);
        }
        self.mark(kicks)
    }

    /// A trapped SGI generation register write from `vcpu` (GICv3):
    /// `ICC_SGI1R_EL1` with `group` 1 raises the SGI whatever its group (a
    /// single security state); `ICC_SGI0R_EL1` and `ICC_ASGI1R_EL1` with
    /// `group` 0 raise it only if it is configured as group 0.
    pub fn sgi_write(&self, vcpu: usize, value: u64, group: u8) -> Kicks {
        let mut kicks = Kicks::default();
        let mut s = self.state.lock();
        s.sgi_write(vcpu, value, group, &mut kicks);
        self.mark(kicks)
    }

    /// A device's interrupt line (an SPI, or a PPI of `vcpu`) is at `level`.
    /// A level-sensitive interrupt is pending while the line is high; an
    /// edge-triggered one becomes pending on a rising level. SGIs and
    /// unknown INTIDs are ignored.
    pub fn set_line(&self, vcpu: usize, intid: u32, level: bool) -> Kicks {
        let mut kicks = Kicks::default();
        let mut s = self.state.lock();
        if intid < state::SGI_COUNT {
            return kicks;
        }
        let model = s.model;
        let Some(irq) = s.irq_mut(vcpu, intid) else { return kicks };
        let before = (irq.pending(model), irq.latch);
        if level && !irq.line && irq.edge {
            irq.latch = true;
        }
        irq.line = level;
        if before != (irq.pending(model), irq.latch) {
            s.update(vcpu, intid, &mut kicks);
        }
        self.mark(kicks)
    }

    /// Applies what the VM's ITS decided (in order): LPIs made pending or
    /// not, moved to another vCPU, or their configuration re-read from the
    /// property table in `mem`. Effects naming LPIs beyond [`LPI_ID_BITS`],
    /// vCPUs that do not exist, or anything with LPIs off are ignored.
    pub fn apply_its(&self, mem: &dyn its::GuestMemory, effects: &[its::Effect]) -> Kicks {
        let mut kicks = Kicks::default();
        let mut s = self.state.lock();
        if !s.lpis_on {
            return kicks;
        }
        for e in effects {
            s.apply_its(mem, e, &mut kicks);
        }
        self.mark(kicks)
    }

    /// The LPIs pending in the pending tables of redistributors whose
    /// EnableLPIs was just set without `GICR_PENDBASER.PTZ`, read from `mem`
    /// once, as `SetPending` effects for the caller to apply as it applies
    /// its ITS's (`apply_its`, or direct injection). INTIDs from 8192 up to
    /// the vCPU's `GICR_PROPBASER.IDbits` (at most [`LPI_ID_BITS`]); an
    /// unreadable table reads as empty; at most [`MAX_LPIS`] effects, as no
    /// more LPIs could be kept.
    pub fn pending_table_effects(&self, mem: &dyn its::GuestMemory) -> Vec<its::Effect> {
        let mut effects = Vec::new();
        if !self.scan_pending.swap(false, Ordering::Relaxed) {
            return effects;
        }
        let mut s = self.state.lock();
        for (vcpu, vs) in s.vcpus.iter_mut().enumerate().filter(|(_, vs)| vs.scan_pending) {
            vs.scan_pending = false;
            let id_bits = ((vs.propbaser & state::PROPBASER_ID_BITS) as u32 + 1).min(LPI_ID_BITS);
            if id_bits < 14 {
                continue;
            }
            let mut table = alloc::vec![0u8; ((1usize << id_bits) - its::LPI_BASE as usize) / 8];
            let first = (vs.pendbaser & state::PENDBASER_PA) + u64::from(its::LPI_BASE / 8);
            if mem.read(first, &mut table).is_err() {
                continue;
            }
            let set = table.iter().enumerate().flat_map(|(i, &byte)| {
                (0..8).filter(move |b| byte & (1 << b) != 0).map(move |b| its::LPI_BASE + (i * 8 + b) as u32)
            });
            for intid in set.take(MAX_LPIS.saturating_sub(effects.len())) {
                effects.push(its::Effect::SetPending { vcpu, intid });
            }
        }
        effects
    }

    /// Priority and enable of LPI `intid` in the property table `vcpu`'s
    /// `GICR_PROPBASER` names (disabled when unreadable), for LPIs the GIC
    /// delivers itself (GICv4).
    pub fn lpi_property(&self, mem: &dyn its::GuestMemory, vcpu: usize, intid: u32) -> (u8, bool) {
        self.state.lock().read_property(mem, vcpu, intid)
    }

    /// Links virtual `intid` (a PPI of `vcpu`, or an SPI) to physical
    /// `pintid` (a PPI or SPI, 16..1020): its list registers get HW = 1, so
    /// the guest's deactivation deactivates the physical interrupt. `None`
    /// unlinks. Other INTIDs are ignored.
    pub fn set_hw(&self, vcpu: usize, intid: u32, pintid: Option<u32>) {
        if pintid.is_some_and(|p| !(16..1020).contains(&p)) || intid < state::SGI_COUNT {
            return;
        }
        let mut s = self.state.lock();
        if let Some(irq) = s.irq_mut(vcpu, intid) {
            irq.hw = pintid;
        }
        self.config_changed(&s);
    }

    /// Called under the lock after a change [`Vgic::hw_lr`] or the SGI
    /// mailboxes' `takeable` depend on.
    fn config_changed(&self, s: &State) {
        self.config_gen.fetch_add(1, Ordering::Release);
        let Some(t) = &self.sgi_table else { return };
        for (i, mb) in t.vcpu.iter().enumerate().take(t.nr_vcpus as usize) {
            let (mut takeable, mut group1, mut priority) = (0u16, 0u16, [0u8; 16]);
            for n in 0..state::SGI_COUNT {
                let Some(irq) = s.irq(i, n) else { continue };
                if irq.enabled && s.group_enabled(irq) {
                    takeable |= 1 << n;
                }
                if irq.group1 {
                    group1 |= 1 << n;
                }
                priority[n as usize] = irq.priority;
            }
            mb.publish(takeable, group1, &priority);
        }
    }

    /// The physical address of the SGI mailboxes for el2 (the host's memory
    /// is identity-mapped): on GICv3 always, on GICv2 once the guest's
    /// `GICD_SGIR` is known ([`Vgic::set_sgir_ipa`]); 0 otherwise.
    pub fn sgi_table_pa(&self) -> u64 {
        self.sgi_table
            .as_deref()
            .filter(|t| self.model == Model::V3 || t.sgir_ipa.load(Ordering::Relaxed) != 0)
            .map_or(0, |t| t as *const SgiTable as u64)
    }

    /// GICv2: where the guest's distributor puts `GICD_SGIR`, whose writes
    /// el2 delivers (before the VM runs).
    pub fn set_sgir_ipa(&self, ipa: u64) {
        if let Some(t) = self.sgi_table.as_deref().filter(|_| self.model == Model::V2) {
            t.sgir_ipa.store(ipa, Ordering::Relaxed);
        }
    }

    /// After exit (after el2 left the mailbox, so no sender posts to it
    /// without seeing that): raises the SGIs el2 posted for `vcpu` that are
    /// not in its list registers yet.
    #[inline(always)]
    pub fn take_posted(&self, vcpu: usize) {
        let Some(mb) = self.sgi_table.as_deref().and_then(|t| t.vcpu.get(vcpu)) else { return };
        let bits = sgi::take(&mb.pending);
        if bits != 0 {
            self.raise_posted(vcpu, bits);
        }
    }

    #[inline(never)]
    fn raise_posted(&self, vcpu: usize, mut bits: u64) {
        let mut kicks = Kicks::default();
        let mut s = self.state.lock();
        while bits != 0 {
            let k = bits.trailing_zeros();
            bits &= bits - 1;
            // GICv3: bit n is SGI n; GICv2: bit 8n + source (`SgiTable`).
            let (n, source) = match self.model {
                Model::V3 => (k, vcpu),
                Model::V2 => (k / 8, (k % 8) as usize),
            };
            if n < state::SGI_COUNT {
                s.raise_sgi(vcpu, n, source, &mut kicks);
            }
        }
        drop(s);
        self.mark(kicks);
    }

    /// Whether SGIs wait in `vcpu`'s mailbox (a vCPU in `WFI` wakes on it).
    pub fn has_posted(&self, vcpu: usize) -> bool {
        self.sgi_table
            .as_deref()
            .and_then(|t| t.vcpu.get(vcpu))
            .is_some_and(|mb| mb.pending.load(Ordering::Acquire) != 0)
    }

    /// The configuration generation (see `config_gen`); never 0.
    pub fn config_gen(&self) -> u64 {
        self.config_gen.load(Ordering::Acquire)
    }

    /// The list register el2 may write for `vcpu`'s hardware-linked `intid`
    /// when its physical interrupt fires while the vCPU runs: pending,
    /// HW = 1, the physical INTID, the interrupt's priority and group. 0
    /// when the guest could not take it (disabled, its group disabled in
    /// the distributor, not linked): the host decides then, as for any
    /// other interrupt.
    pub fn hw_lr(&self, vcpu: usize, intid: u32) -> u64 {
        let s = self.state.lock();
        let Some(irq) = s.irq(vcpu, intid) else { return 0 };
        let Some(pintid) = irq.hw.filter(|_| irq.enabled && s.group_enabled(irq)) else { return 0 };
        lr::encode(
            s.model,
            &lr::LrFields {
                intid,
                state: lr::STATE_PENDING,
                priority: irq.priority,
                group1: irq.group1,
                hw: Some(pintid),
                eoi: false,
                source: 0,
            },
        )
    }

    /// Whether `intid` (a PPI of `vcpu`, or an SPI) is pending or active for
    /// the guest, or sits in a list register.
    pub fn is_pending_or_active(&self, vcpu: usize, intid: u32) -> bool {
        let s = self.state.lock();
        s.irq(vcpu, intid).is_some_and(|irq| irq.in_lr || irq.pending(s.model) || irq.is_active(s.model))
    }

    /// Before entry: fills `cpu_if.lr[..used_lrs]` with `vcpu`'s
    /// highest-priority pending and active interrupts (active ones first),
    /// sets `cpu_if.hcr` to En, plus UIE when more are waiting than the
    /// `nr_lrs` list registers (1-16) hold. List registers from an earlier
    /// flush not yet synced are folded back first.
    pub fn flush(&self, vcpu: usize, cpu_if: &mut VgicCpuState, nr_lrs: usize) {
        let listed = self.listed.get(vcpu);
        if cpu_if.used_lrs == 0 && !listed.is_some_and(|f| f.load(Ordering::Acquire)) {
            cpu_if.hcr = lr::HCR_EN;
            return;
        }
        let mut s = self.state.lock();
        s.flush(vcpu, cpu_if, nr_lrs);
        if let Some(f) = listed.filter(|_| s.ap_list_is_empty(vcpu)) {
            f.store(false, Ordering::Relaxed);
        }
        self.note_deferred(&s);
    }

    /// After exit: folds the list registers the last flush filled (as el2
    /// saved them) back into the interrupts' states; sets `used_lrs` to 0.
    /// Interrupts that moved to another vCPU are kicked through
    /// [`Vgic::take_kicks`].
    pub fn sync(&self, vcpu: usize, cpu_if: &mut VgicCpuState) {
        if cpu_if.used_lrs == 0 {
            // Nothing was in flight (the last flush filled no list register).
            return;
        }
        let el2_filled = cpu_if.el2_lrs != 0;
        let mut s = self.state.lock();
        s.sync(vcpu, cpu_if);
        if el2_filled {
            // What el2 put there may still be active: the next flush looks.
            let mut k = Kicks::default();
            k.add(vcpu);
            self.mark(k);
        }
        self.note_deferred(&s);
    }

    /// Kicks owed from `flush` and `sync` (an interrupt retargeted while it
    /// sat in a list register moves to its new vCPU there). Cleared on read;
    /// call after `sync`.
    pub fn take_kicks(&self) -> Kicks {
        // A plain load first: nearly every exit owes nothing, and the swap
        // is a load-exclusive/store-exclusive loop (no LSE). A flag set
        // after the load is taken at the next exit, as after a swap.
        if !self.deferred.load(Ordering::Relaxed) || !self.deferred.swap(false, Ordering::Acquire) {
            return Kicks::default();
        }
        core::mem::take(&mut self.state.lock().deferred)
    }

    /// Whether `vcpu` has an interrupt the guest could take now: enabled,
    /// pending and not active, its group enabled in `GICD_CTLR` and in the
    /// virtual CPU interface (`cpu_if.vmcr`), priority above the VMCR's
    /// priority mask. A vCPU blocked in WFI wakes on this.
    pub fn has_pending(&self, vcpu: usize, cpu_if: &VgicCpuState) -> bool {
        self.state.lock().has_pending(vcpu, cpu_if)
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        self.state.lock().check_invariants();
    }

    /// `SYSTEM_RESET`: every register back to its reset value. Hardware links
    /// and input line levels (the devices' wiring) stay.
    pub fn reset(&self) {
        let mut s = self.state.lock();
        s.reset();
        self.config_changed(&s);
        drop(s);
        for f in &self.listed {
            f.store(true, Ordering::Release);
        }
    }
}
