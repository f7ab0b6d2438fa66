//! The emulated GIC's frames on a VM's MMIO bus: thin adapters over the
//! vGIC's and the virtual ITS's own entry points. (A GICv2 guest's CPU
//! interface is the hardware's GICV, mapped by stage 2: no exits.)

use super::bus::MmioDevice;
use super::DeviceHost;
use crate::gic::vgic::budget::Share;
use crate::gic::vgic::its::{DropReason, Effect, GuestMemory, Its, ItsError};
use crate::gic::vgic::{Kicks, Model, Vgic};
use alloc::sync::Arc;
use ferrovisor_shared::gic::{
    GICD_IIDR, GICD_PIDR2_V2, GICD_PIDR2_V3, GICD_TYPER, GICD_TYPER2, GICR_IIDR, GICR_PIDR2, GICR_TYPER,
};
use ferrovisor_shared::its::{GITS_IIDR, GITS_PIDR2, GITS_TYPER};
use ferrovisor_shared::vcpu::ConstRegs;

/// What the redistributors and the ITS need beyond [`DeviceHost`]: the
/// guest memory their tables live in, and the way LPIs go.
pub trait LpiHost: DeviceHost {
    type Memory: GuestMemory;

    fn guest_memory(&self) -> &Self::Memory;

    /// Makes what the ITS (or a pending table) did to LPIs happen; returns
    /// the vCPUs to kick.
    fn apply_lpi_effects(&self, effects: &[Effect]) -> Kicks;

    /// The ITS refused `refused` more commands because the VM's share of
    /// the host's interrupt state (`entries`) is in use (a rate-limited
    /// warning).
    fn share_spent(&self, refused: u64, entries: usize);
}

/// The distributor (`GICD_*`: Arm IHI 0069 and IHI 0048, the Distributor register map).
pub struct Dist;

impl<H: DeviceHost + ?Sized> MmioDevice<H> for Dist {
    #[inline]
    fn read(&self, vm: &H, vcpu: usize, offset: u64, size: u8) -> u64 {
        vm.vgic().dist_read(vcpu, offset, size)
    }

    fn write(&self, vm: &H, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        vm.vgic().dist_write(vcpu, offset, size, value)
    }
}

/// The redistributors (`GICR_*`, Arm IHI 0069), one RD + SGI frame
/// pair per vCPU from the start of the range.
pub struct Redist;

impl<H: LpiHost + ?Sized> MmioDevice<H> for Redist {
    fn read(&self, vm: &H, vcpu: usize, offset: u64, size: u8) -> u64 {
        vm.vgic().redist_read(vcpu, offset, size)
    }

    /// LPIs a pending table held when its `GICR_CTLR.EnableLPIs` was set go
    /// the way the ITS's go.
    fn write(&self, vm: &H, vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        let mut kicks = vm.vgic().redist_write(vcpu, offset, size, value);
        let effects = vm.vgic().pending_table_effects(vm.guest_memory());
        if !effects.is_empty() {
            kicks.0 |= vm.apply_lpi_effects(&effects).0;
        }
        kicks
    }
}

/// The ITS frame (`GITS_*`, Arm IHI 0069): commands run against the
/// guest's memory, and what they do to LPIs goes to the VM.
pub struct ItsFrame {
    its: spin::Mutex<Its>,
}

impl ItsFrame {
    /// # Errors
    /// What [`Its::new`] refuses.
    pub fn new(vcpus: usize, lpi_id_bits: u32, share: Arc<Share>) -> Result<Self, ItsError> {
        Ok(Self { its: spin::Mutex::new(Its::with_share(vcpus, lpi_id_bits, share)?) })
    }

    /// Back to its state out of reset (a `SYSTEM_RESET` of the VM).
    pub fn reset(&self) {
        self.its.lock().reset();
    }

    /// A read of the frame, as a guest's (which reads nothing else).
    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        self.its.lock().mmio_read(offset, size)
    }
}

/// The GIC registers of a VM whose value nothing the guest or the host
/// does changes (their emulation reads only what the VM was built with:
/// the model, the vCPUs' MPIDRs, the SPI count, LPIs), as (frame, offset,
/// size). `GICD_CTLR`, `GICR_WAKER`, `GICR_CTLR`, `GITS_CTLR` and the rest
/// hold state and are never here.
const GICD_CONSTS_V3: [(usize, u8); 4] = [(GICD_IIDR, 4), (GICD_TYPER, 4), (GICD_TYPER2, 4), (GICD_PIDR2_V3, 4)];
const GICD_CONSTS_V2: [(usize, u8); 3] = [(GICD_IIDR, 4), (GICD_TYPER, 4), (GICD_PIDR2_V2, 4)];
/// Every redistributor's (one entry covers them all).
const GICR_CONSTS_ALL: [(usize, u8); 2] = [(GICR_IIDR, 4), (GICR_PIDR2, 4)];
/// The vCPU's own redistributor's (`GICR_TYPER` differs between them; a
/// read of another's goes to the host).
const GICR_CONSTS_OWN: [(usize, u8); 3] = [(GICR_TYPER, 8), (GICR_TYPER, 4), (GICR_TYPER + 4, 4)];
const GITS_CONSTS: [(usize, u8); 5] =
    [(GITS_IIDR, 4), (GITS_TYPER, 8), (GITS_TYPER, 4), (GITS_TYPER + 4, 4), (GITS_PIDR2, 4)];

/// The table el2 answers vCPU `vcpu`'s loads of constant GIC registers
/// from (docs/exit.md §4), for a VM laid out as [`super::map`] with this
/// vGIC and ITS. Each value is what the emulation reads now, so the two
/// cannot disagree; the tests check that nothing the guest does changes them.
pub fn const_regs(vgic: &Vgic, its: Option<&ItsFrame>, vcpu: usize) -> ConstRegs {
    use super::map;
    let mut t = ConstRegs::default();
    let mut push = |ipa: u64, size: u8, value: u64, frames: u16, shift: u32| {
        let added = t.push(ipa, size, value, frames, shift);
        debug_assert!(added, "the constant GIC registers fit the table");
    };
    let gicd: &[(usize, u8)] = match vgic.model() {
        Model::V3 => &GICD_CONSTS_V3,
        Model::V2 => &GICD_CONSTS_V2,
    };
    for &(off, size) in gicd {
        push(map::GIC_DIST + off as u64, size, vgic.dist_read(vcpu, off as u64, size), 1, 0);
    }
    if vgic.model() == Model::V3 {
        const STRIDE_SHIFT: u32 = map::GIC_REDIST_STRIDE.trailing_zeros();
        const _: () = assert!(1 << STRIDE_SHIFT == map::GIC_REDIST_STRIDE);
        let frames = u16::try_from(vgic.nr_vcpus()).unwrap_or(u16::MAX);
        for &(off, size) in &GICR_CONSTS_ALL {
            push(map::GIC_REDIST + off as u64, size, vgic.redist_read(vcpu, off as u64, size), frames, STRIDE_SHIFT);
        }
        let own = map::GIC_REDIST_STRIDE * vcpu as u64;
        for &(off, size) in &GICR_CONSTS_OWN {
            let off = own + off as u64;
            push(map::GIC_REDIST + off, size, vgic.redist_read(vcpu, off, size), 1, 0);
        }
    }
    if let Some(its) = its {
        for &(off, size) in &GITS_CONSTS {
            push(map::GIC_ITS + off as u64, size, its.mmio_read(off as u64, size), 1, 0);
        }
    }
    t
}

impl<H: LpiHost + ?Sized> MmioDevice<H> for ItsFrame {
    fn read(&self, _vm: &H, _vcpu: usize, offset: u64, size: u8) -> u64 {
        self.mmio_read(offset, size)
    }

    fn write(&self, vm: &H, _vcpu: usize, offset: u64, size: u8, value: u64) -> Kicks {
        // Held while the effects are applied: commands of two vCPUs take
        // effect in the order the ITS ran them.
        let mut its = self.its.lock();
        let spent = its.drops(DropReason::ShareSpent);
        let effects = its.mmio_write_buffered(vm.guest_memory(), offset, size, value);
        let kicks = if effects.is_empty() { Kicks::default() } else { vm.apply_lpi_effects(effects) };
        let refused = its.drops(DropReason::ShareSpent) - spent;
        if refused > 0 {
            vm.share_spent(refused, its.share_entries());
        }
        kicks
    }
}
