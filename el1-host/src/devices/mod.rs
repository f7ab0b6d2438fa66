//! Devices the host emulates for guests, behind stage-2 faults: each
//! registers its range on the VM's [`bus::MmioBus`] and sees an offset into
//! it, an access size and, for writes, the value.

pub mod bus;
pub mod gic;
pub mod pl011;
pub mod virtio;

use crate::gic::vgic::Vgic;
use crate::vm::stats::ExitKind;
use alloc::boxed::Box;
use alloc::sync::Arc;
use bus::{BusError, MmioBus};
use gic::{Dist, ItsFrame, LpiHost, Redist};
use pl011::Uart;

/// What a VM gives the devices it emulates.
pub trait DeviceHost {
    fn vgic(&self) -> &Vgic;

    /// A finished line of the guest's console output (without its newline).
    fn console_line(&self, text: &str);
}

/// A VM's MMIO bus, laid out as [`map`]: its UART, the empty virtio
/// transports, the distributor and, for a GICv3, one redistributor per vCPU
/// and the ITS (when it has one).
///
/// # Errors
/// A range the bus refuses (none of QEMU virt's, for up to 8 vCPUs).
pub fn guest_bus<H: LpiHost + 'static>(
    vcpus: u32,
    gicv3: bool,
    uart: &Arc<Uart>,
    its: Option<&Arc<ItsFrame>>,
) -> Result<MmioBus<H>, BusError> {
    let mut bus = MmioBus::new();
    bus.register(map::UART, map::UART_SIZE, ExitKind::Mmio, Box::new(uart.clone()))?;
    let virtio_size = map::VIRTIO_STRIDE * map::VIRTIO_COUNT;
    bus.register(map::VIRTIO, virtio_size, ExitKind::Mmio, Box::new(virtio::Transports))?;
    bus.register(map::GIC_DIST, map::GIC_DIST_SIZE, ExitKind::Gic, Box::new(Dist))?;
    if gicv3 {
        let redist_size = map::GIC_REDIST_STRIDE * u64::from(vcpus);
        bus.register(map::GIC_REDIST, redist_size, ExitKind::Gic, Box::new(Redist))?;
    }
    if let Some(its) = its {
        bus.register(map::GIC_ITS, map::GIC_ITS_SIZE, ExitKind::Gic, Box::new(its.clone()))?;
    }
    Ok(bus)
}

/// The guest physical map (a copy of QEMU virt's, docs/guests.md §1).
pub mod map {
    pub const GIC_DIST: u64 = 0x0800_0000;
    pub const GIC_DIST_SIZE: u64 = 0x1_0000;
    pub const GIC_CPU: u64 = 0x0801_0000;
    /// The GICv2 CPU interface's 8 KiB, backed by the physical GICV frame.
    pub const GIC_CPU_SIZE: u64 = 0x2000;
    pub const GIC_ITS: u64 = 0x0808_0000;
    pub const GIC_ITS_SIZE: u64 = 0x2_0000;
    pub const GIC_REDIST: u64 = 0x080a_0000;
    /// One redistributor (RD + SGI frames) per vCPU.
    pub const GIC_REDIST_STRIDE: u64 = 0x2_0000;
    pub const UART: u64 = 0x0900_0000;
    pub const UART_SIZE: u64 = 0x1000;
    /// SPI 1.
    pub const UART_SPI: u32 = 1;
    pub const VIRTIO: u64 = 0x0a00_0000;
    pub const VIRTIO_STRIDE: u64 = 0x200;
    pub const VIRTIO_COUNT: u64 = 32;
    pub const RAM: u64 = 0x4000_0000;
}

#[cfg(test)]
mod tests;
