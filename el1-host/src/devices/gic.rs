//! The emulated GIC's frames on a VM's MMIO bus: thin adapters over the
//! vGIC's and the virtual ITS's own entry points. (A GICv2 guest's CPU
//! interface is the hardware's GICV, mapped by stage 2: no exits.)

use super::bus::MmioDevice;
use super::DeviceHost;
use crate::gic::vgic::budget::Share;
use crate::gic::vgic::its::{DropReason, Effect, GuestMemory, Its, ItsError};
use crate::gic::vgic::Kicks;
use alloc::sync::Arc;

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
}

impl<H: LpiHost + ?Sized> MmioDevice<H> for ItsFrame {
    fn read(&self, _vm: &H, _vcpu: usize, offset: u64, size: u8) -> u64 {
        self.its.lock().mmio_read(offset, size)
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
