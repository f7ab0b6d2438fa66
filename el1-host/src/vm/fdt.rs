//! A guest's device tree, generated with `vm-fdt`.
//!
//! The guest's physical map copies QEMU virt's (docs/guests.md §1, §3), so code written
//! for QEMU virt — Linux, kvm-unit-tests — finds what it expects where it
//! expects it: the GIC at 0x0800_0000, a PL011 at 0x0900_0000, 32 virtio-mmio
//! transports from 0x0a00_0000 (which report "no device"), RAM from 1 GiB.
//! Node names, property order and interrupt specifiers follow what QEMU 10
//! generates for `-M virt` (compare `shared/tests/fixtures/qemu-virt-*.dtb`);
//! QEMU's devices that guests here do not get (PCIe, flash, fw-cfg, PL031,
//! PL061 and gpio-keys, the GICv2m frame) are left out; the PMU node is there
//! when the VM has a PMU (docs/pmu.md).
//!
//! vCPU `i` has the MPIDR [`vcpu_mpidr`]`(i)`: Aff0 = i % 16, Aff1 = i / 16.
//! Sixteen CPUs per Aff1 cluster is what a GICv3 SGI's 16-bit target list can
//! address at once, and what KVM does.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use vm_fdt::FdtWriter;

pub const GIC_DIST_BASE: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// The GICv2 CPU interface (where the host maps GICV).
pub const GIC_CPU_BASE: u64 = 0x0801_0000;
pub const GIC_CPU_SIZE: u64 = 0x2000;
pub const GIC_ITS_BASE: u64 = 0x0808_0000;
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// The GICv3 redistributors, one [`GIC_REDIST_STRIDE`] frame pair per vCPU,
/// up to the PL011.
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
pub const GIC_REDIST_STRIDE: u64 = 0x2_0000;
pub const GIC_REDIST_END: u64 = 0x0900_0000;
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
/// The PL011's SPI (INTID 33).
pub const UART_SPI: u32 = 1;
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
pub const VIRTIO_MMIO_COUNT: u32 = 32;
/// Transport n has SPI 16 + n (INTID 48 + n).
pub const VIRTIO_MMIO_SPI_BASE: u32 = 16;
/// The lowest and highest+1 guest physical addresses the devices above use:
/// guest RAM must stay out of it.
pub const DEVICE_WINDOW: (u64, u64) = (GIC_DIST_BASE, VIRTIO_MMIO_BASE + VIRTIO_MMIO_COUNT as u64 * VIRTIO_MMIO_SIZE);
/// The GIC maintenance interrupt's PPI (INTID 25).
pub const GIC_MAINTENANCE_PPI: u32 = 9;
/// The architected timer's PPIs: secure physical, non-secure physical,
/// virtual, hypervisor physical (INTIDs 29, 30, 27, 26).
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The PMU overflow interrupt's PPI (INTID 23), as QEMU virt wires it.
pub const PMU_PPI: u32 = 7;
/// The PL011's and APB's clock.
pub const APB_CLOCK_HZ: u32 = 24_000_000;
pub const UART_PATH: &str = "/pl011@9000000";

/// GICv2 has eight CPU interfaces.
pub const MAX_VCPUS_GICV2: u32 = 8;
/// As many redistributors as fit below the PL011 (123, as in QEMU).
pub const MAX_VCPUS_GICV3: u32 = ((GIC_REDIST_END - GIC_REDIST_BASE) / GIC_REDIST_STRIDE) as u32;

const PHANDLE_CLOCK: u32 = 1;
const PHANDLE_GIC: u32 = 2;
const PHANDLE_ITS: u32 = 3;

const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;

/// The interrupt controller a guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestGic {
    V2,
    V3 { its: bool },
}

/// What goes into a guest's device tree.
#[derive(Clone, Copy, Debug)]
pub struct GuestDt<'a> {
    /// The VM's name: the root's `model` is `ferrovisor,<name>`.
    pub name: &'a str,
    pub ram_base: u64,
    pub ram_size: u64,
    pub vcpus: u32,
    pub gic: GuestGic,
    /// `/chosen` `bootargs`.
    pub bootargs: &'a str,
    /// The initrd's guest physical `[start, end)`, inside RAM.
    pub initrd: Option<(u64, u64)>,
    /// A PMUv3 node (`arm,armv8-pmuv3`, overflow interrupt PPI 7 = INTID 23
    /// as on QEMU virt).
    pub pmu: bool,
}

/// Why a device tree could not be built.
#[derive(Debug, PartialEq, Eq)]
pub enum FdtError {
    NoVcpus,
    TooManyVcpus {
        vcpus: u32,
        max: u32,
        gic: GuestGic,
    },
    /// RAM is empty, runs past the address space, or overlaps the devices.
    BadRam {
        base: u64,
        size: u64,
    },
    /// The initrd range is backwards or not inside RAM.
    BadInitrd {
        start: u64,
        end: u64,
    },
    /// vm-fdt refused something (a NUL in the name or the bootargs, say).
    Writer(vm_fdt::Error),
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVcpus => write!(f, "a VM needs at least one vCPU"),
            Self::TooManyVcpus { vcpus, max, gic } => {
                let v = if matches!(gic, GuestGic::V2) { 2 } else { 3 };
                write!(f, "{vcpus} vCPUs is more than a guest GICv{v} can serve ({max})")
            }
            Self::BadRam { base, size } => write!(
                f,
                "guest RAM {base:#x}+{size:#x} is empty, runs past the address space, or overlaps the devices at \
                 {:#x}..{:#x}",
                DEVICE_WINDOW.0, DEVICE_WINDOW.1
            ),
            Self::BadInitrd { start, end } => write!(f, "initrd {start:#x}..{end:#x} is not a range inside guest RAM"),
            Self::Writer(e) => write!(f, "device tree writer: {e}"),
        }
    }
}

impl From<vm_fdt::Error> for FdtError {
    fn from(e: vm_fdt::Error) -> Self {
        Self::Writer(e)
    }
}

/// The MPIDR affinity of vCPU `index` (see the module's documentation).
pub const fn vcpu_mpidr(index: u32) -> u64 {
    (((index / 16) as u64) << 8) | (index % 16) as u64
}

/// The most vCPUs a guest with `gic` can have.
pub const fn max_vcpus(gic: GuestGic) -> u32 {
    match gic {
        GuestGic::V2 => MAX_VCPUS_GICV2,
        GuestGic::V3 { .. } => MAX_VCPUS_GICV3,
    }
}

fn check(cfg: &GuestDt<'_>) -> Result<(), FdtError> {
    if cfg.vcpus == 0 {
        return Err(FdtError::NoVcpus);
    }
    let max = max_vcpus(cfg.gic);
    if cfg.vcpus > max {
        return Err(FdtError::TooManyVcpus { vcpus: cfg.vcpus, max, gic: cfg.gic });
    }
    let bad_ram = FdtError::BadRam { base: cfg.ram_base, size: cfg.ram_size };
    let Some(ram_end) = cfg.ram_base.checked_add(cfg.ram_size) else { return Err(bad_ram) };
    if cfg.ram_size == 0 || (cfg.ram_base < DEVICE_WINDOW.1 && DEVICE_WINDOW.0 < ram_end) {
        return Err(bad_ram);
    }
    if let Some((start, end)) = cfg.initrd {
        if start > end || start < cfg.ram_base || end > ram_end {
            return Err(FdtError::BadInitrd { start, end });
        }
    }
    Ok(())
}

/// `(address, size)` pairs in two cells each, as `reg` wants them with
/// `#address-cells = #size-cells = 2`.
fn reg(w: &mut FdtWriter, pairs: &[(u64, u64)]) -> Result<(), FdtError> {
    let cells: Vec<u64> = pairs.iter().flat_map(|&(a, s)| [a, s]).collect();
    Ok(w.property_array_u64("reg", &cells)?)
}

fn strings(w: &mut FdtWriter, name: &str, values: &[&str]) -> Result<(), FdtError> {
    Ok(w.property_string_list(name, values.iter().map(|s| s.to_string()).collect::<Vec<String>>())?)
}

/// Builds the device tree blob for `cfg`.
///
/// # Errors
/// No vCPUs or more than the GIC serves, RAM that is empty, runs past the
/// address space or overlaps the device window, an initrd outside RAM, or
/// strings that vm-fdt refuses (a NUL in the name or bootargs).
pub fn build(cfg: &GuestDt<'_>) -> Result<Vec<u8>, FdtError> {
    check(cfg)?;
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("#address-cells", 2)?;
    w.property_string("model", &format!("ferrovisor,{}", cfg.name))?;
    w.property_string("compatible", "linux,dummy-virt")?;

    let psci = w.begin_node("psci")?;
    w.property_string("method", "hvc")?;
    strings(&mut w, "compatible", &["arm,psci-1.0", "arm,psci-0.2"])?;
    w.end_node(psci)?;

    let memory = w.begin_node(&format!("memory@{:x}", cfg.ram_base))?;
    reg(&mut w, &[(cfg.ram_base, cfg.ram_size)])?;
    w.property_string("device_type", "memory")?;
    w.end_node(memory)?;

    for n in 0..VIRTIO_MMIO_COUNT {
        let base = VIRTIO_MMIO_BASE + u64::from(n) * VIRTIO_MMIO_SIZE;
        let node = w.begin_node(&format!("virtio_mmio@{base:x}"))?;
        w.property_array_u32("interrupts", &[GIC_SPI, VIRTIO_MMIO_SPI_BASE + n, IRQ_EDGE_RISING])?;
        reg(&mut w, &[(base, VIRTIO_MMIO_SIZE)])?;
        w.property_string("compatible", "virtio,mmio")?;
        w.end_node(node)?;
    }

    let uart = w.begin_node(&UART_PATH[1..])?;
    strings(&mut w, "clock-names", &["uartclk", "apb_pclk"])?;
    w.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    w.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH])?;
    reg(&mut w, &[(UART_BASE, UART_SIZE)])?;
    strings(&mut w, "compatible", &["arm,pl011", "arm,primecell"])?;
    w.end_node(uart)?;

    gic_node(&mut w, cfg)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#size-cells", 0)?;
    w.property_u32("#address-cells", 1)?;
    for i in 0..cfg.vcpus {
        let mpidr = vcpu_mpidr(i);
        let cpu = w.begin_node(&format!("cpu@{mpidr:x}"))?;
        // The affinity fields fit in one cell: Aff1 < 8, Aff0 < 16.
        w.property_u32("reg", mpidr as u32)?;
        w.property_string("enable-method", "psci")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_string("device_type", "cpu")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    // GICv2 PPI specifiers carry a mask of the CPUs they go to (bits 8..15),
    // as QEMU writes them; GICv3's have none.
    let ppi_flags = match cfg.gic {
        GuestGic::V2 => (((1u32 << cfg.vcpus.min(8)) - 1) << 8) | IRQ_LEVEL_HIGH,
        GuestGic::V3 { .. } => IRQ_LEVEL_HIGH,
    };
    let timer = w.begin_node("timer")?;
    let irqs: Vec<u32> = TIMER_PPIS.iter().flat_map(|&ppi| [GIC_PPI, ppi, ppi_flags]).collect();
    w.property_array_u32("interrupts", &irqs)?;
    w.property_null("always-on")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    w.end_node(timer)?;

    if cfg.pmu {
        let pmu = w.begin_node("pmu")?;
        w.property_array_u32("interrupts", &[GIC_PPI, PMU_PPI, ppi_flags])?;
        w.property_string("compatible", "arm,armv8-pmuv3")?;
        w.end_node(pmu)?;
    }

    let clock = w.begin_node("apb-pclk")?;
    w.property_phandle(PHANDLE_CLOCK)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_u32("clock-frequency", APB_CLOCK_HZ)?;
    w.property_u32("#clock-cells", 0)?;
    w.property_string("compatible", "fixed-clock")?;
    w.end_node(clock)?;

    let aliases = w.begin_node("aliases")?;
    w.property_string("serial0", UART_PATH)?;
    w.end_node(aliases)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", cfg.bootargs)?;
    w.property_string("stdout-path", UART_PATH)?;
    if let Some((start, end)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    w.end_node(root)?;
    Ok(w.finish()?)
}

fn gic_node(w: &mut FdtWriter, cfg: &GuestDt<'_>) -> Result<(), FdtError> {
    let gic = w.begin_node(&format!("intc@{GIC_DIST_BASE:x}"))?;
    w.property_phandle(PHANDLE_GIC)?;
    w.property_array_u32("interrupts", &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_LEVEL_HIGH])?;
    match cfg.gic {
        GuestGic::V2 => {
            reg(w, &[(GIC_DIST_BASE, GIC_DIST_SIZE), (GIC_CPU_BASE, GIC_CPU_SIZE)])?;
            w.property_string("compatible", "arm,cortex-a15-gic")?;
        }
        GuestGic::V3 { .. } => {
            let redist = u64::from(cfg.vcpus) * GIC_REDIST_STRIDE;
            reg(w, &[(GIC_DIST_BASE, GIC_DIST_SIZE), (GIC_REDIST_BASE, redist)])?;
            w.property_u32("#redistributor-regions", 1)?;
            w.property_string("compatible", "arm,gic-v3")?;
        }
    }
    // Children's addresses are the parent's: an empty `ranges`.
    w.property_null("ranges")?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("#address-cells", 2)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    if let GuestGic::V3 { its: true } = cfg.gic {
        let its = w.begin_node(&format!("its@{GIC_ITS_BASE:x}"))?;
        w.property_phandle(PHANDLE_ITS)?;
        reg(w, &[(GIC_ITS_BASE, GIC_ITS_SIZE)])?;
        w.property_u32("#msi-cells", 1)?;
        w.property_null("msi-controller")?;
        w.property_string("compatible", "arm,gic-v3-its")?;
        w.end_node(its)?;
    }
    w.end_node(gic)?;
    Ok(())
}

/// A test-only reader of the whole tree (every node's path and properties),
/// independent of `shared::dt`, for the structural checks.
#[cfg(test)]
mod flat {
    use std::collections::BTreeMap;

    pub type Props = BTreeMap<String, Vec<u8>>;

    fn be32(b: &[u8], off: usize) -> u32 {
        u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Every node, by path ("/" for the root), in document order.
    pub fn nodes(blob: &[u8]) -> Vec<(String, Props)> {
        assert_eq!(be32(blob, 0), 0xd00d_feed);
        let structs = be32(blob, 8) as usize;
        let strings = be32(blob, 12) as usize;
        let mut off = structs;
        let mut path: Vec<String> = Vec::new();
        let mut out: Vec<(String, Props)> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        loop {
            let token = be32(blob, off);
            off += 4;
            match token {
                1 => {
                    let end = off + blob[off..].iter().position(|&b| b == 0).unwrap();
                    let name = std::str::from_utf8(&blob[off..end]).unwrap().to_string();
                    off = (end + 1).next_multiple_of(4);
                    path.push(name);
                    let p = if path.len() == 1 {
                        "/".to_string()
                    } else {
                        path[1..].iter().fold(String::new(), |a, n| a + "/" + n)
                    };
                    open.push(out.len());
                    out.push((p, Props::new()));
                }
                2 => {
                    path.pop();
                    open.pop();
                }
                3 => {
                    let len = be32(blob, off) as usize;
                    let nameoff = be32(blob, off + 4) as usize;
                    let value = blob[off + 8..off + 8 + len].to_vec();
                    off = (off + 8 + len).next_multiple_of(4);
                    let s = strings + nameoff;
                    let end = s + blob[s..].iter().position(|&b| b == 0).unwrap();
                    let name = std::str::from_utf8(&blob[s..end]).unwrap().to_string();
                    out[*open.last().unwrap()].1.insert(name, value);
                }
                4 => {}
                9 => return out,
                t => panic!("bad token {t:#x}"),
            }
        }
    }

    pub fn cells(v: &[u8]) -> Vec<u32> {
        v.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect()
    }

    pub fn strs(v: &[u8]) -> Vec<&str> {
        v.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| std::str::from_utf8(s).unwrap()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::flat::{cells, nodes, strs, Props};
    use super::*;
    use ferrovisor_shared::dt::{
        Board, BoardKind, EnableMethod, GicDesc, MemRegion, PsciMethod, PsciVersion, UartKind,
    };
    use std::collections::BTreeSet;

    const QEMU_V2: &[u8] = include_bytes!("../../../shared/tests/fixtures/qemu-virt-gicv2.dtb");
    const QEMU_V3: &[u8] = include_bytes!("../../../shared/tests/fixtures/qemu-virt-gicv3.dtb");

    fn cfg(gic: GuestGic, vcpus: u32) -> GuestDt<'static> {
        GuestDt {
            name: "test0",
            ram_base: 0x4000_0000,
            ram_size: 0x4000_0000,
            vcpus,
            gic,
            bootargs: "console=ttyAMA0 -- selftest setup smp=4",
            initrd: Some((0x4800_0000, 0x4800_0123)),
            pmu: true,
        }
    }

    fn node<'a>(tree: &'a [(String, Props)], path: &str) -> &'a Props {
        &tree.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("no node {path}")).1
    }

    #[test]
    fn gicv3_guest_reads_back_as_kvm_unit_tests_expect() {
        let blob = build(&cfg(GuestGic::V3 { its: true }, 4)).unwrap();
        let b = Board::from_slice(&blob).unwrap();
        assert_eq!(b.kind(), BoardKind::QemuVirt);
        assert_eq!(b.model(), "ferrovisor,test0");
        assert_eq!(b.memory(), &[MemRegion::new(0x4000_0000, 0x4000_0000)]);
        let mpidrs: Vec<u64> = b.cpus().iter().map(|c| c.mpidr).collect();
        assert_eq!(mpidrs, [0, 1, 2, 3]);
        assert!(b.cpus().iter().all(|c| c.enable_method == EnableMethod::Psci));
        let psci = b.psci().unwrap();
        assert_eq!(psci.method, PsciMethod::Hvc);
        assert!(psci.version >= PsciVersion::V0_2);
        let uart = b.console().unwrap();
        assert_eq!((uart.kind, uart.base, uart.size), (UartKind::Pl011, 0x0900_0000, 0x1000));
        assert_eq!(
            b.gic(),
            Some(GicDesc::V3 {
                gicd: MemRegion::new(0x0800_0000, 0x1_0000),
                gicr: MemRegion::new(0x080a_0000, 4 * 0x2_0000),
                redist_regions: 1,
                its: Some(MemRegion::new(0x0808_0000, 0x2_0000)),
                maintenance_irq: Some(25),
            })
        );
        let t = b.timer().unwrap();
        assert_eq!((t.secure_phys, t.nonsecure_phys, t.virt, t.hyp_phys), (29, 30, 27, 26));
        assert_eq!(b.bootargs(), "console=ttyAMA0 -- selftest setup smp=4");
        assert_eq!(b.initrd(), Some(MemRegion::from_bounds(0x4800_0000, 0x4800_0123)));

        let tree = nodes(&blob);
        let psci = node(&tree, "/psci");
        assert_eq!(strs(&psci["compatible"]), ["arm,psci-1.0", "arm,psci-0.2"]);
        for cpu in tree.iter().filter(|(p, _)| p.starts_with("/cpus/cpu@")) {
            assert_eq!(strs(&cpu.1["device_type"]), ["cpu"]);
        }
        let chosen = node(&tree, "/chosen");
        assert_eq!(chosen["linux,initrd-start"].len(), 8, "64-bit initrd addresses");
        assert_eq!(strs(&node(&tree, "/aliases")["serial0"]), ["/pl011@9000000"]);
    }

    #[test]
    fn gicv2_guest_without_initrd() {
        let mut c = cfg(GuestGic::V2, 2);
        c.initrd = None;
        c.bootargs = "";
        let blob = build(&c).unwrap();
        let b = Board::from_slice(&blob).unwrap();
        assert_eq!(
            b.gic(),
            Some(GicDesc::V2 {
                gicd: MemRegion::new(0x0800_0000, 0x1_0000),
                gicc: MemRegion::new(0x0801_0000, 0x2000),
                gich: None,
                gicv: None,
                maintenance_irq: Some(25),
            })
        );
        assert_eq!(b.cpus().len(), 2);
        assert_eq!(b.initrd(), None);
        assert_eq!(b.bootargs(), "");
        let tree = nodes(&blob);
        assert!(!node(&tree, "/chosen").contains_key("linux,initrd-start"));
        // Two CPUs: the PPIs' CPU mask is 0b11.
        let timer = cells(&node(&tree, "/timer")["interrupts"]);
        assert_eq!(timer, [1, 13, 0x304, 1, 14, 0x304, 1, 11, 0x304, 1, 10, 0x304]);
        let t = b.timer().unwrap();
        assert_eq!((t.nonsecure_phys, t.virt), (30, 27));
    }

    #[test]
    fn mpidrs_group_sixteen_vcpus_per_aff1() {
        assert_eq!(vcpu_mpidr(0), 0);
        assert_eq!(vcpu_mpidr(15), 0xf);
        assert_eq!(vcpu_mpidr(16), 0x100);
        assert_eq!(vcpu_mpidr(37), 0x205);
        let blob = build(&cfg(GuestGic::V3 { its: false }, 20)).unwrap();
        let tree = nodes(&blob);
        let regs: Vec<u32> =
            tree.iter().filter(|(p, _)| p.starts_with("/cpus/cpu@")).map(|(_, n)| cells(&n["reg"])[0]).collect();
        let want: Vec<u32> = (0..20).map(|i| vcpu_mpidr(i) as u32).collect();
        assert_eq!(regs, want);
        assert!(tree.iter().any(|(p, _)| p == "/cpus/cpu@103"), "unit address = reg");
        assert_eq!(
            cells(&node(&tree, "/intc@8000000")["reg"]),
            [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 20 * 0x2_0000]
        );
        // The host's parser keeps eight CPUs and counts the rest.
        let b = Board::from_slice(&blob).unwrap();
        assert_eq!(b.cpus().len() + b.cpus_ignored(), 20);
        assert!(!tree.iter().any(|(p, _)| p.starts_with("/intc@8000000/")), "no ITS asked for");
    }

    #[test]
    fn every_gic_child_has_a_compatible_and_the_gic_is_a_parent() {
        for gic in [GuestGic::V2, GuestGic::V3 { its: false }, GuestGic::V3 { its: true }] {
            let tree = nodes(&build(&cfg(gic, 4)).unwrap());
            let intc = node(&tree, "/intc@8000000");
            for p in ["interrupt-controller", "ranges"] {
                assert!(intc[p].is_empty(), "{gic:?}: {p}");
            }
            for (p, v) in [("#interrupt-cells", 3), ("#address-cells", 2), ("#size-cells", 2)] {
                assert_eq!(cells(&intc[p]), [v], "{gic:?}: {p}");
            }
            assert_eq!(cells(&intc["interrupts"]), [1, 9, 4]);
            let phandle = cells(&intc["phandle"]);
            assert_eq!(cells(&node(&tree, "/")["interrupt-parent"]), phandle);
            let children: Vec<_> = tree.iter().filter(|(p, _)| p.starts_with("/intc@8000000/")).collect();
            assert_eq!(children.len(), usize::from(gic == GuestGic::V3 { its: true }));
            for (p, props) in children {
                assert!(props.contains_key("compatible"), "{p} has no compatible");
                assert!(props.contains_key("msi-controller"));
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_describe() {
        let c = |f: &dyn Fn(&mut GuestDt<'static>)| {
            let mut c = cfg(GuestGic::V3 { its: true }, 4);
            f(&mut c);
            build(&c)
        };
        assert_eq!(c(&|c| c.vcpus = 0), Err(FdtError::NoVcpus));
        assert!(matches!(c(&|c| (c.gic, c.vcpus) = (GuestGic::V2, 9)), Err(FdtError::TooManyVcpus { max: 8, .. })));
        assert!(c(&|c| c.vcpus = 123).is_ok());
        assert!(matches!(c(&|c| c.vcpus = 124), Err(FdtError::TooManyVcpus { max: 123, .. })));
        assert!(matches!(c(&|c| c.ram_size = 0), Err(FdtError::BadRam { .. })));
        assert!(matches!(c(&|c| c.ram_base = 0x0900_0000), Err(FdtError::BadRam { .. })));
        assert!(matches!(c(&|c| (c.ram_base, c.ram_size) = (0, 0x0800_0001)), Err(FdtError::BadRam { .. })));
        assert!(c(&|c| (c.ram_base, c.ram_size, c.initrd) = (0, 0x0800_0000, None)).is_ok());
        assert!(matches!(c(&|c| c.ram_base = u64::MAX - 0xfff), Err(FdtError::BadRam { .. })));
        assert!(matches!(c(&|c| c.initrd = Some((0x4900_0000, 0x4800_0000))), Err(FdtError::BadInitrd { .. })));
        assert!(matches!(c(&|c| c.initrd = Some((0x7fff_f000, 0x8000_1000))), Err(FdtError::BadInitrd { .. })));
        assert_eq!(c(&|c| c.name = "a\0b"), Err(FdtError::Writer(vm_fdt::Error::InvalidString)));
        assert_eq!(c(&|c| c.bootargs = "x\0"), Err(FdtError::Writer(vm_fdt::Error::InvalidString)));
        let e = c(&|c| c.vcpus = 124).unwrap_err().to_string();
        assert_eq!(e, "124 vCPUs is more than a guest GICv3 can serve (123)");
    }

    /// QEMU nodes a guest here does not get.
    const NOT_EMULATED: [&str; 7] = [
        "platform-bus@c000000",
        "fw-cfg@9020000",
        "gpio-keys",
        "pl061@9030000",
        "pcie@10000000",
        "pl031@9010000",
        "flash@0",
    ];

    fn children(tree: &[(String, Props)], parent: &str) -> BTreeSet<String> {
        let prefix = if parent == "/" { "/".to_string() } else { format!("{parent}/") };
        tree.iter()
            .filter_map(|(p, _)| p.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Ours against QEMU's own (`-M virt,virtualization=on -smp 4`, 1 GiB):
    /// the same node names, less the devices not emulated, and the same
    /// values where a guest driver reads them.
    #[test]
    fn matches_qemu_virt_layout() {
        for (gic, qemu) in [(GuestGic::V2, QEMU_V2), (GuestGic::V3 { its: true }, QEMU_V3)] {
            let ours = nodes(&build(&cfg(gic, 4)).unwrap());
            let theirs = nodes(qemu);
            let mut want = children(&theirs, "/");
            for n in NOT_EMULATED {
                assert!(want.remove(n), "{gic:?}: QEMU has no {n} any more?");
            }
            assert_eq!(children(&ours, "/"), want, "{gic:?}: top-level nodes");
            let mut cpus = children(&theirs, "/cpus");
            assert!(cpus.remove("cpu-map"));
            assert_eq!(children(&ours, "/cpus"), cpus);
            let gic_children = children(&ours, "/intc@8000000");
            let mut qemu_gic_children = children(&theirs, "/intc@8000000");
            qemu_gic_children.remove("v2m@8020000");
            assert_eq!(gic_children, qemu_gic_children, "{gic:?}: GIC children");

            let same = |path: &str, prop: &str| {
                assert_eq!(node(&ours, path)[prop], node(&theirs, path)[prop], "{gic:?}: {path} {prop}");
            };
            for n in 0..32u64 {
                let p = format!("/virtio_mmio@{:x}", 0x0a00_0000 + n * 0x200);
                for prop in ["reg", "interrupts", "compatible"] {
                    same(&p, prop);
                }
            }
            for prop in ["reg", "interrupts", "compatible", "clock-names"] {
                same("/pl011@9000000", prop);
            }
            for prop in ["clock-frequency", "#clock-cells", "compatible", "clock-output-names"] {
                same("/apb-pclk", prop);
            }
            same("/memory@40000000", "reg");
            same("/pmu", "interrupts");
            same("/pmu", "compatible");
            same("/aliases", "serial0");
            same("/chosen", "stdout-path");
            for prop in ["#interrupt-cells", "#address-cells", "#size-cells", "interrupts", "compatible"] {
                same("/intc@8000000", prop);
            }
            for p in ["/cpus/cpu@0", "/cpus/cpu@3"] {
                same(p, "reg");
                same(p, "enable-method");
            }
            // QEMU lists a fifth timer PPI (the EL2 virtual timer) for its
            // EL2-capable CPUs; our guests run at EL1 and get the first four.
            let timer = cells(&node(&ours, "/timer")["interrupts"]);
            assert_eq!(timer[..], cells(&node(&theirs, "/timer")["interrupts"])[..12], "{gic:?}: timer");
            let ours_reg = cells(&node(&ours, "/intc@8000000")["reg"]);
            let theirs_reg = cells(&node(&theirs, "/intc@8000000")["reg"]);
            match gic {
                // QEMU's guest sees GICH and GICV too (virtualization=on);
                // our GICC is the 8 KiB of the hardware's GICV behind it,
                // where QEMU's frame is 64 KiB.
                GuestGic::V2 => {
                    assert_eq!(ours_reg[..7], theirs_reg[..7]);
                    assert_eq!((ours_reg[7], theirs_reg[7]), (0x2000, 0x1_0000));
                }
                // QEMU sizes the redistributor region for 123 CPUs, ours for 4.
                GuestGic::V3 { .. } => {
                    assert_eq!(ours_reg[..6], theirs_reg[..6]);
                    assert_eq!(ours_reg[7], 4 * 0x2_0000);
                    same("/intc@8000000/its@8080000", "reg");
                    same("/intc@8000000/its@8080000", "#msi-cells");
                }
            }
        }
    }

    /// dtc's checks over our output, when dtc is installed (it is not needed
    /// otherwise).
    #[test]
    fn dtc_decompiles_it_without_complaint() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        for gic in [GuestGic::V2, GuestGic::V3 { its: true }] {
            let blob = build(&cfg(gic, 4)).unwrap();
            let child = Command::new("dtc")
                .args(["-I", "dtb", "-O", "dts", "-o", "/dev/null", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let Ok(mut child) = child else {
                eprintln!("dtc not installed: skipped");
                return;
            };
            child.stdin.take().unwrap().write_all(&blob).unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{gic:?}: dtc failed: {stderr}");
            assert!(stderr.trim().is_empty(), "{gic:?}: dtc warns: {stderr}");
        }
    }

    /// What the user gives a VM (its name, command line, vCPUs, memory,
    /// initrd), anything at all: the guest's tree is refused, or reads back
    /// with our parser as given.
    mod random {
        use super::*;
        use proptest::prelude::*;

        fn gic() -> impl Strategy<Value = GuestGic> {
            prop_oneof![Just(GuestGic::V2), any::<bool>().prop_map(|its| GuestGic::V3 { its })]
        }

        proptest! {
            #![proptest_config(crate::fuzz::config(256))]

            #[test]
            fn any_vm_gives_an_error_or_a_tree_that_reads_back(
                name in prop_oneof![3 => "[!-~]{1,32}", 1 => any::<String>()],
                bootargs in prop_oneof![3 => "[ -~]{0,300}", 1 => any::<String>(), 1 => "[a\\x00]{0,4}"],
                vcpus in prop_oneof![4 => 1u32..9, 1 => 0u32..40],
                gic in gic(),
                ram in prop_oneof![
                    4 => (1u64..512).prop_map(|m| (0x4000_0000, m << 20)),
                    1 => (any::<u64>(), any::<u64>()),
                ],
                initrd in proptest::option::of((any::<u64>(), 0u64..0x100_0000, any::<bool>())),
                pmu: bool,
            ) {
                let (ram_base, ram_size) = ram;
                // Mostly inside RAM, sometimes anywhere.
                let initrd = initrd.map(|(at, len, inside)| {
                    let start = if inside { ram_base.wrapping_add(at % ram_size.max(1)) } else { at };
                    (start, start.wrapping_add(len))
                });
                let c = GuestDt { name: &name, ram_base, ram_size, vcpus, gic, bootargs: &bootargs, initrd, pmu };
                let Ok(blob) = build(&c) else { return Ok(()) };
                let b = Board::from_slice(&blob);
                prop_assert!(b.is_ok(), "{:?}", b.err());
                let b = b.unwrap();
                prop_assert_eq!(b.model(), format!("ferrovisor,{name}"));
                prop_assert_eq!(b.bootargs(), bootargs.as_str());
                // The host's own reader keeps the first MAX_CPUS and counts the rest.
                prop_assert_eq!(b.cpus().len() + b.cpus_ignored(), vcpus as usize);
                prop_assert_eq!(b.memory(), &[MemRegion::new(ram_base, ram_size)]);
                if let Some((start, end)) = initrd.filter(|(s, e)| s < e) {
                    prop_assert_eq!(b.initrd(), Some(MemRegion::from_bounds(start, end)));
                }
                // Its size follows what it is given: far below the 64 KiB Vm::build
                // leaves it, but for a long command line.
                prop_assert!(blob.len() <= 16 * 1024 + 2 * (name.len() + bootargs.len()), "{} bytes", blob.len());
            }
        }
    }
}
