//! virtio-mmio transports that report "no device" (device ID 0), as QEMU's
//! unused ones do: code written for QEMU virt probes them and moves on.

use super::bus::MmioDevice;
use super::map;
use crate::gic::vgic::Kicks;

const MAGIC: u64 = 0x7472_6976; // "virt"
const VERSION: u64 = 2;
const VENDOR_QEMU: u64 = 0x554d_4551;

/// A read of an empty transport's register at `offset`.
pub fn read(offset: u64) -> u64 {
    match offset {
        0x000 => MAGIC,
        0x004 => VERSION,
        0x00c => VENDOR_QEMU,
        _ => 0,
    }
}

/// The 32 transports of QEMU virt's map, one range on the bus.
pub struct Transports;

impl<H: ?Sized> MmioDevice<H> for Transports {
    #[inline]
    fn read(&self, _vm: &H, _vcpu: usize, offset: u64, _size: u8) -> u64 {
        read(offset % map::VIRTIO_STRIDE)
    }

    /// Writes go nowhere: there is no device to configure.
    fn write(&self, _vm: &H, _vcpu: usize, _offset: u64, _size: u8, _value: u64) -> Kicks {
        Kicks::default()
    }
}

#[cfg(test)]
mod tests {
    use super::{map, MmioDevice, Transports};

    #[test]
    fn every_transport_reports_no_device() {
        for t in 0..map::VIRTIO_COUNT {
            let base = t * map::VIRTIO_STRIDE;
            assert_eq!(Transports.read(&(), 0, base, 4), 0x7472_6976, "transport {t}: MagicValue");
            assert_eq!(Transports.read(&(), 0, base + 8, 4), 0, "transport {t}: DeviceID");
        }
        assert_eq!(MmioDevice::<()>::write(&Transports, &(), 0, 0x70, 4, 1).0, 0);
        assert_eq!(Transports.read(&(), 0, 0x70, 4), 0, "a write changes nothing");
    }

    #[test]
    fn reports_no_device() {
        assert_eq!(super::read(0), 0x7472_6976);
        assert_eq!(super::read(4), 2);
        assert_eq!(super::read(8), 0, "DeviceID 0: no device");
        assert_eq!(super::read(0x70), 0);
    }

    mod random {
        use super::{map, MmioDevice, Transports};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::fuzz::config(512))]

            /// Any access to any of the 32 transports, writes in between: each
            /// reads as virtio-mmio's "no device" (virtio 1.2 §4.2.2: MagicValue
            /// "virt" at 0x000, Version 2 at 0x004, DeviceID 0 at 0x008; QEMU's
            /// VendorID at 0x00c) and zero elsewhere, and a write kicks nobody.
            #[test]
            fn every_access_sees_no_device(
                ops in prop::collection::vec((0..map::VIRTIO_STRIDE * map::VIRTIO_COUNT, 0u8..9, any::<u64>()), 1..32),
            ) {
                for (off, size, value) in ops {
                    prop_assert_eq!(MmioDevice::<()>::write(&Transports, &(), 0, off, size, value).0, 0);
                    let want = match off % map::VIRTIO_STRIDE {
                        0x000 => 0x7472_6976,
                        0x004 => 2,
                        0x00c => 0x554d_4551,
                        _ => 0,
                    };
                    prop_assert_eq!(Transports.read(&(), 0, off, size), want, "offset {:#x}", off);
                }
            }
        }
    }
}
