//! Behaviour of the vGIC as a guest and the run loop see it.

use super::lr::{v2 as lr2, v3 as lr3, HCR_EN, HCR_UIE};
use super::*;
use ferrovisor_shared::gic::{
    self, GICD_CPENDSGIR, GICD_CTLR, GICD_ICACTIVER, GICD_ICENABLER, GICD_ICFGR, GICD_ICPENDR, GICD_IGROUPR, GICD_IIDR,
    GICD_IPRIORITYR, GICD_IROUTER, GICD_ISACTIVER, GICD_ISENABLER, GICD_ISPENDR, GICD_ITARGETSR, GICD_SGIR,
    GICD_SPENDSGIR, GICD_TYPER, GICR_SGI_BASE, MPIDR_AFFINITY_MASK,
};
use ferrovisor_shared::vcpu::MAX_LIST_REGS;

// The vGIC's entry points take u64 offsets.
const CTLR: u64 = GICD_CTLR as u64;
const TYPER: u64 = GICD_TYPER as u64;
const IIDR: u64 = GICD_IIDR as u64;
const IGROUPR: u64 = GICD_IGROUPR as u64;
const ISENABLER: u64 = GICD_ISENABLER as u64;
const ICENABLER: u64 = GICD_ICENABLER as u64;
const ISPENDR: u64 = GICD_ISPENDR as u64;
const ICPENDR: u64 = GICD_ICPENDR as u64;
const ISACTIVER: u64 = GICD_ISACTIVER as u64;
const ICACTIVER: u64 = GICD_ICACTIVER as u64;
const IPRIORITYR: u64 = GICD_IPRIORITYR as u64;
const ITARGETSR: u64 = GICD_ITARGETSR as u64;
const ICFGR: u64 = GICD_ICFGR as u64;
const SGIR: u64 = GICD_SGIR as u64;
const CPENDSGIR: u64 = GICD_CPENDSGIR as u64;
const SPENDSGIR: u64 = GICD_SPENDSGIR as u64;
const IROUTER: u64 = GICD_IROUTER as u64;
const GICR_TYPER: u64 = gic::GICR_TYPER as u64;
const GICR_WAKER: u64 = gic::GICR_WAKER as u64;
const SGI_FRAME: u64 = GICR_SGI_BASE as u64;

const SPI: u32 = 40;
const PRIO_HIGH_PMR: u64 = 0xff;
/// GICv2 GICD_SPENDSGIRn (IHI 0048 §4.3.20).
const GICD_SPENDSGIR_BASE: u64 = 0xf20;

fn mpidr(i: usize) -> u64 {
    (1 << 31) | i as u64
}

fn v3(n: usize) -> Vgic {
    Vgic::new(VgicConfig {
        model: Model::V3,
        vcpu_mpidrs: (0..n).map(mpidr).collect(),
        nr_spis: 64,
        lpis: false,
        share: crate::gic::vgic::budget::Share::unlimited(),
    })
    .unwrap()
}

fn v2(n: usize) -> Vgic {
    Vgic::new(VgicConfig {
        model: Model::V2,
        vcpu_mpidrs: (0..n).map(mpidr).collect(),
        nr_spis: 64,
        lpis: false,
        share: crate::gic::vgic::budget::Share::unlimited(),
    })
    .unwrap()
}

/// Offset of a bit register's word for `intid`, and the bit.
fn bank(base: u64, intid: u32) -> (u64, u64) {
    (base + 4 * u64::from(intid / 32), 1 << (intid % 32))
}

fn rd(vcpu: usize) -> u64 {
    vcpu as u64 * REDIST_STRIDE
}

fn sgi(vcpu: usize) -> u64 {
    rd(vcpu) + SGI_FRAME
}

/// Writes a bit of a distributor bit register.
fn dset(g: &Vgic, base: u64, intid: u32) -> Kicks {
    let (off, bit) = bank(base, intid);
    g.dist_write(0, off, 4, bit)
}

fn dget(g: &Vgic, vcpu: usize, base: u64, intid: u32) -> bool {
    let (off, bit) = bank(base, intid);
    g.dist_read(vcpu, off, 4) & bit != 0
}

fn rset(g: &Vgic, vcpu: usize, base: u64, intid: u32) -> Kicks {
    g.redist_write(vcpu, sgi(vcpu) + base, 4, 1 << intid)
}

fn rget(g: &Vgic, vcpu: usize, base: u64, intid: u32) -> bool {
    g.redist_read(vcpu, sgi(vcpu) + base, 4) & (1 << intid) != 0
}

fn enable_groups(g: &Vgic) {
    g.dist_write(0, CTLR, 4, 0b11);
}

fn state(model: Model, lr: u64) -> u64 {
    match model {
        Model::V3 => lr >> 62,
        Model::V2 => (lr >> 28) & 3,
    }
}

fn with_state(model: Model, lr: u64, s: u64) -> u64 {
    match model {
        Model::V3 => (lr & !(3 << 62)) | s << 62,
        Model::V2 => (lr & !(3 << 28)) | s << 28,
    }
}

fn vintid(model: Model, lr: u64) -> u32 {
    match model {
        Model::V3 => lr as u32,
        Model::V2 => (lr & 0x3ff) as u32,
    }
}

fn lrs(c: &VgicCpuState) -> &[u64] {
    &c.lr[..c.used_lrs as usize]
}

/// A v3 VMCR with every group on and the priority mask open.
fn vmcr_open() -> u64 {
    PRIO_HIGH_PMR << 24 | 0b11
}

/// An enabled, edge-triggered SPI routed to `vcpu` with `prio`.
fn setup_spi(g: &Vgic, intid: u32, vcpu: usize, prio: u8) {
    match g.model() {
        Model::V3 => {
            g.dist_write(0, IROUTER + 8 * u64::from(intid), 8, mpidr(vcpu) & MPIDR_AFFINITY_MASK);
        }
        Model::V2 => {
            g.dist_write(0, ITARGETSR + u64::from(intid), 1, 1 << vcpu);
        }
    }
    g.dist_write(0, IPRIORITYR + u64::from(intid), 1, prio.into());
    let cfg = ICFGR + 4 * u64::from(intid / 16);
    let cur = g.dist_read(0, cfg, 4);
    g.dist_write(0, cfg, 4, cur | 2 << (2 * (intid % 16)));
    dset(g, ISENABLER, intid);
}

#[test]
fn bad_configs_are_refused() {
    let cfg = |model, n: usize, nr_spis| VgicConfig {
        model,
        vcpu_mpidrs: (0..n).map(mpidr).collect(),
        nr_spis,
        lpis: false,
        share: crate::gic::vgic::budget::Share::unlimited(),
    };
    assert_eq!(Vgic::new(cfg(Model::V3, 0, 32)).err(), Some(VgicError::NoVcpus));
    assert_eq!(
        Vgic::new(cfg(Model::V2, 9, 32)).err(),
        Some(VgicError::TooManyVcpus { model: Model::V2, count: 9, max: 8 })
    );
    assert!(Vgic::new(cfg(Model::V2, 8, 32)).is_ok());
    assert!(Vgic::new(cfg(Model::V3, 64, 32)).is_ok());
    assert!(matches!(Vgic::new(cfg(Model::V3, 65, 32)), Err(VgicError::TooManyVcpus { count: 65, .. })));
    assert_eq!(Vgic::new(cfg(Model::V3, 1, 33)).err(), Some(VgicError::BadSpiCount(33)));
    assert_eq!(Vgic::new(cfg(Model::V3, 1, 992)).err(), Some(VgicError::BadSpiCount(992)));
    assert!(Vgic::new(cfg(Model::V3, 1, 960)).is_ok());
    assert!(Vgic::new(cfg(Model::V3, 1, 0)).is_ok());
    let dup = VgicConfig {
        model: Model::V3,
        vcpu_mpidrs: alloc::vec![0x8000_0001, 0x1],
        nr_spis: 32,
        lpis: false,
        share: crate::gic::vgic::budget::Share::unlimited(),
    };
    assert_eq!(Vgic::new(dup).err(), Some(VgicError::DuplicateAffinity { first: 0, second: 1 }));
    let msg = alloc::format!("{}", VgicError::TooManyVcpus { model: Model::V2, count: 9, max: 8 });
    assert!(msg.contains('9') && msg.contains('8'), "{msg}");
}

#[test]
fn v3_distributor_reset_values() {
    let g = v3(4);
    assert_eq!(g.model(), Model::V3);
    assert_eq!(g.nr_vcpus(), 4);
    // ARE (bit 4) and DS (bit 6) read as one, groups disabled.
    assert_eq!(g.dist_read(0, CTLR, 4), 0x50);
    // 64 SPIs: ITLinesNumber 2, IDbits 9, A3V, RSS; CPUNumber 0 with ARE.
    assert_eq!(g.dist_read(0, TYPER, 4), 2 | 9 << 19 | 1 << 24 | 1 << 26);
    assert_eq!(g.dist_read(0, IIDR, 4), u64::from(GIC_IIDR));
    assert_eq!(g.dist_read(0, 0xffe8, 4), 0x30);
    // SPIs reset in group 1, disabled, not pending, priority 0, level.
    assert_eq!(g.dist_read(0, IGROUPR + 4, 4), 0xffff_ffff);
    assert_eq!(g.dist_read(0, ISENABLER + 4, 4), 0);
    assert_eq!(g.dist_read(0, ISPENDR + 4, 4), 0);
    assert_eq!(g.dist_read(0, IPRIORITYR + 32, 4), 0);
    assert_eq!(g.dist_read(0, ICFGR + 8, 4), 0);
    assert_eq!(g.dist_read(0, IROUTER + 8 * 32, 8), 0);
    // The private banks are RAZ/WI in the distributor with ARE.
    assert_eq!(g.dist_read(0, IGROUPR, 4), 0);
    g.dist_write(0, ISENABLER, 4, 0xffff_ffff);
    assert_eq!(g.redist_read(0, sgi(0) + ISENABLER, 4), 0xffff);
    g.dist_write(0, IPRIORITYR, 4, 0xffff_ffff);
    assert_eq!(g.redist_read(0, sgi(0) + IPRIORITYR, 4), 0);
    assert_eq!(g.dist_read(0, IROUTER + 8 * 20, 8), 0);
    // Beyond the last SPI: RAZ/WI.
    g.dist_write(0, ISENABLER + 12, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, ISENABLER + 12, 4), 0);
    g.dist_write(0, IPRIORITYR + 96, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, IPRIORITYR + 96, 4), 0);
    // ITARGETSR and SGIR do nothing with ARE.
    g.dist_write(0, ITARGETSR + 32, 4, 0x0101_0101);
    assert_eq!(g.dist_read(0, ITARGETSR + 32, 4), 0);
    // CTLR: only the group enables are writable.
    g.dist_write(0, CTLR, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, CTLR, 4), 0x53);
}

#[test]
fn v3_redistributor_reset_values() {
    let g = v3(2);
    for v in 0..2 {
        assert_eq!(g.redist_read(0, sgi(v) + IGROUPR, 4), 0xffff_ffff);
        // SGIs reset enabled.
        assert_eq!(g.redist_read(0, sgi(v) + ISENABLER, 4), 0xffff);
        assert_eq!(g.redist_read(0, sgi(v) + ISPENDR, 4), 0);
        assert_eq!(g.redist_read(0, sgi(v) + ICFGR, 4), 0xaaaa_aaaa);
        assert_eq!(g.redist_read(0, sgi(v) + ICFGR + 4, 4), 0);
        assert_eq!(g.redist_read(0, rd(v) + GICR_WAKER, 4), 0b110);
        assert_eq!(g.redist_read(0, rd(v) + 0x4, 4), u64::from(GIC_IIDR));
        assert_eq!(g.redist_read(0, rd(v) + 0xffe8, 4), 0x30);
    }
}

#[test]
fn v2_distributor_reset_values() {
    let g = v2(3);
    assert_eq!(g.dist_read(0, CTLR, 4), 0);
    assert_eq!(g.dist_read(0, TYPER, 4), 2 | 2 << 5);
    assert_eq!(g.dist_read(0, IIDR, 4), u64::from(GIC_IIDR));
    assert_eq!(g.dist_read(0, 0xfe8, 4), 0x20);
    assert_eq!(g.dist_read(0, 0xffe8, 4), 0);
    // Group 0 everywhere, SGIs enabled, SGIs edge.
    assert_eq!(g.dist_read(1, IGROUPR, 4), 0);
    assert_eq!(g.dist_read(1, ISENABLER, 4), 0xffff);
    assert_eq!(g.dist_read(1, ICFGR, 4), 0xaaaa_aaaa);
    assert_eq!(g.dist_read(0, ITARGETSR + 32, 4), 0);
    g.dist_write(0, CTLR, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, CTLR, 4), 0b11);
    // The redistributor does not exist on GICv2.
    g.redist_write(0, sgi(0) + ISENABLER, 4, 0xffff_ffff);
    assert_eq!(g.redist_read(0, rd(0) + GICR_TYPER, 8), 0);
}

#[test]
fn set_and_clear_pairs() {
    for g in [v3(2), v2(2)] {
        // SPIs through the distributor.
        for (set, clear) in [(ISENABLER, ICENABLER), (ISPENDR, ICPENDR), (ISACTIVER, ICACTIVER)] {
            assert!(!dget(&g, 0, set, SPI));
            dset(&g, set, SPI);
            assert!(dget(&g, 0, set, SPI), "{set:#x}");
            assert!(dget(&g, 0, clear, SPI), "{clear:#x} reads the same state");
            assert!(!dget(&g, 0, set, SPI + 1), "one bit only");
            dset(&g, clear, SPI);
            assert!(!dget(&g, 0, set, SPI));
        }
        // Writing zeros changes nothing.
        dset(&g, ISENABLER, SPI);
        g.dist_write(0, bank(ICENABLER, SPI).0, 4, 0);
        assert!(dget(&g, 0, ISENABLER, SPI));
        // IGROUPR is read-write per bit.
        let (off, bit) = bank(IGROUPR, SPI);
        g.dist_write(0, off, 4, bit);
        assert_eq!(g.dist_read(0, off, 4), bit);
    }
    // PPIs of vCPU 1 through its redistributor leave vCPU 0's alone.
    let g = v3(2);
    for (set, clear) in [(ISENABLER, ICENABLER), (ISPENDR, ICPENDR), (ISACTIVER, ICACTIVER)] {
        rset(&g, 1, set, 27);
        assert!(rget(&g, 1, set, 27));
        assert!(!rget(&g, 0, set, 27));
        rset(&g, 1, clear, 27);
        assert!(!rget(&g, 1, set, 27));
    }
    // PPIs of the accessing vCPU through the GICv2 distributor.
    let g = v2(2);
    g.dist_write(1, ISPENDR, 4, 1 << 27);
    assert!(dget(&g, 1, ISPENDR, 27));
    assert!(!dget(&g, 0, ISPENDR, 27));
}

#[test]
fn priorities_are_byte_accessible_and_masked() {
    for g in [v3(1), v2(1)] {
        let base = IPRIORITYR + u64::from(SPI);
        g.dist_write(0, base, 4, 0x1234_56ff);
        assert_eq!(g.dist_read(0, base, 4), 0x1030_50f8);
        g.dist_write(0, base + 2, 1, 0xab);
        assert_eq!(g.dist_read(0, base + 2, 1), 0xa8);
        assert_eq!(g.dist_read(0, base + 3, 1), 0x10);
        assert_eq!(g.dist_read(0, base, 4), 0x10a8_50f8);
        // Halfword and unaligned accesses: RAZ/WI.
        g.dist_write(0, base, 2, 0);
        assert_eq!(g.dist_read(0, base, 4), 0x10a8_50f8);
        assert_eq!(g.dist_read(0, base, 2), 0);
        assert_eq!(g.dist_read(0, base + 1, 4), 0);
    }
    let g = v3(1);
    g.redist_write(0, sgi(0) + IPRIORITYR + 27, 1, 0xff);
    assert_eq!(g.redist_read(0, sgi(0) + IPRIORITYR + 24, 4), 0xf8 << 24);
}

#[test]
fn sgi_configuration_is_read_only() {
    let g = v3(1);
    g.redist_write(0, sgi(0) + ICFGR, 4, 0);
    assert_eq!(g.redist_read(0, sgi(0) + ICFGR, 4), 0xaaaa_aaaa);
    // PPIs are configurable.
    g.redist_write(0, sgi(0) + ICFGR + 4, 4, 0x8000_0002);
    assert_eq!(g.redist_read(0, sgi(0) + ICFGR + 4, 4), 0x8000_0002);
    let g = v2(1);
    g.dist_write(0, ICFGR, 4, 0);
    assert_eq!(g.dist_read(0, ICFGR, 4), 0xaaaa_aaaa);
    // SPIs: only the edge bit of each field is kept.
    g.dist_write(0, ICFGR + 8, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, ICFGR + 8, 4), 0xaaaa_aaaa);
}

#[test]
fn irouter_routes_spis() {
    let g = v3(4);
    enable_groups(&g);
    let router = IROUTER + 8 * u64::from(SPI);
    // Aff3 and the IRM bit are kept, other bits are not.
    g.dist_write(0, router, 8, u64::MAX);
    assert_eq!(g.dist_read(0, router, 8), 0xff_80ff_ffff);
    // 32-bit halves.
    g.dist_write(0, router, 4, 2);
    g.dist_write(0, router + 4, 4, 0);
    assert_eq!(g.dist_read(0, router, 8), 2);
    assert_eq!(g.dist_read(0, router, 4), 2);
    assert_eq!(g.dist_read(0, router + 4, 4), 0);
    dset(&g, ISENABLER, SPI);
    let kicks = dset(&g, ISPENDR, SPI);
    assert_eq!(kicks, Kicks(1 << 2));
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
    g.flush(2, &mut c, 4);
    assert_eq!(c.used_lrs, 1);
    assert_eq!(vintid(Model::V3, c.lr[0]), SPI);
    g.sync(2, &mut c);

    // A route to no vCPU delivers nowhere; routing it back delivers.
    let spi2 = SPI + 1;
    g.dist_write(0, IROUTER + 8 * u64::from(spi2), 8, 1 << 32);
    dset(&g, ISENABLER, spi2);
    assert_eq!(dset(&g, ISPENDR, spi2), Kicks(0));
    assert_eq!(g.dist_write(0, IROUTER + 8 * u64::from(spi2), 8, 3), Kicks(1 << 3));

    // IRM = 1: the first awake vCPU.
    let spi3 = SPI + 2;
    g.dist_write(0, IROUTER + 8 * u64::from(spi3), 8, 1 << 31);
    dset(&g, ISENABLER, spi3);
    g.redist_write(1, rd(1) + GICR_WAKER, 4, 0);
    assert_eq!(dset(&g, ISPENDR, spi3), Kicks(1 << 1));
    assert!(g.has_pending(1, &VgicCpuState { vmcr: vmcr_open(), ..Default::default() }));
}

#[test]
fn redistributor_typer_and_waker() {
    let mpidrs = alloc::vec![0x8000_0000, 0x8000_0101, 0x80_8102_0304];
    let g = Vgic::new(VgicConfig {
        model: Model::V3,
        vcpu_mpidrs: mpidrs,
        nr_spis: 32,
        lpis: false,
        share: crate::gic::vgic::budget::Share::unlimited(),
    })
    .unwrap();
    let typer = |v: usize| g.redist_read(0, rd(v) + GICR_TYPER, 8);
    assert_eq!(typer(0), 0);
    assert_eq!(typer(1), 0x0000_0101 << 32 | 1 << 8);
    // Aff3 0x80, Aff2 2, Aff1 3, Aff0 4; Processor_Number 2; Last.
    assert_eq!(typer(2), 0x8002_0304 << 32 | 2 << 8 | 1 << 4);
    assert_eq!(g.redist_read(0, rd(2) + GICR_TYPER, 4), 2 << 8 | 1 << 4);
    assert_eq!(g.redist_read(0, rd(2) + GICR_TYPER + 4, 4), 0x8002_0304);
    // Beyond the last vCPU: RAZ/WI.
    assert_eq!(g.redist_read(0, rd(3) + GICR_TYPER, 8), 0);
    g.redist_write(0, rd(3) + SGI_FRAME + ISENABLER, 4, 1);
    assert_eq!(g.redist_read(0, rd(3) + SGI_FRAME + ISENABLER, 4), 0);
    // Only bits [31:0] of the region offset a frame; absurd offsets are harmless.
    assert_eq!(g.redist_read(0, !7, 8), 0);

    // WAKER: ProcessorSleep writable, ChildrenAsleep follows it.
    g.redist_write(1, rd(1) + GICR_WAKER, 4, 0);
    assert_eq!(g.redist_read(1, rd(1) + GICR_WAKER, 4), 0);
    assert_eq!(g.redist_read(1, rd(0) + GICR_WAKER, 4), 0b110);
    g.redist_write(1, rd(1) + GICR_WAKER, 4, 0b10);
    assert_eq!(g.redist_read(1, rd(1) + GICR_WAKER, 4), 0b110);
    g.redist_write(1, rd(1) + GICR_WAKER, 4, 0b100);
    assert_eq!(g.redist_read(1, rd(1) + GICR_WAKER, 4), 0);
}

#[test]
fn v2_targets() {
    let g = v2(4);
    // SGIs and PPIs: read-only, the reader's own bit in every byte.
    g.dist_write(0, ITARGETSR, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, ITARGETSR, 4), 0x0101_0101);
    assert_eq!(g.dist_read(2, ITARGETSR + 28, 4), 0x0404_0404);
    assert_eq!(g.dist_read(3, ITARGETSR + 31, 1), 0x08);
    // SPIs: bits of vCPUs that do not exist are masked.
    g.dist_write(0, ITARGETSR + 32, 4, 0xffff_ffff);
    assert_eq!(g.dist_read(0, ITARGETSR + 32, 4), 0x0f0f_0f0f);
    g.dist_write(0, ITARGETSR + 32, 4, 0x0103_020f);
    assert_eq!(g.dist_read(1, ITARGETSR + 32, 4), 0x0103_020f);
    g.dist_write(0, ITARGETSR + 33, 1, 0x08);
    assert_eq!(g.dist_read(1, ITARGETSR + 32, 4), 0x0103_080f);
    // Beyond the last SPI: RAZ/WI.
    g.dist_write(0, ITARGETSR + 96, 4, 0x0101_0101);
    assert_eq!(g.dist_read(0, ITARGETSR + 96, 4), 0);
    // An SPI goes to the lowest-numbered vCPU of its mask.
    enable_groups(&g);
    dset(&g, ISENABLER, 33);
    assert_eq!(dset(&g, ISPENDR, 33), Kicks(1 << 3));
    dset(&g, ISENABLER, 32);
    assert_eq!(dset(&g, ISPENDR, 32), Kicks(1 << 0));
}

#[test]
fn v2_sgir_target_filters() {
    let g = v2(4);
    let pend = |target: usize, sgi: u64| g.dist_read(target, SPENDSGIR + sgi, 1);
    // Target list: vCPUs 1 and 3 (and the bit of a vCPU that does not exist).
    let k = g.dist_write(2, SGIR, 4, 0b1_1010 << 16 | 5);
    assert_eq!(k, Kicks(0), "groups disabled: pending, but nowhere to deliver");
    assert_eq!((pend(0, 5), pend(1, 5), pend(2, 5), pend(3, 5)), (0, 0b100, 0, 0b100));
    // ISPENDR0 shows an SGI pending from any source.
    assert!(dget(&g, 1, ISPENDR, 5));
    enable_groups(&g);
    // All but self.
    let k = g.dist_write(1, SGIR, 4, 1 << 24 | 6);
    assert_eq!(k, Kicks(0b1101));
    assert_eq!((pend(0, 6), pend(1, 6), pend(2, 6), pend(3, 6)), (0b10, 0, 0b10, 0b10));
    // Self only.
    assert_eq!(g.dist_write(3, SGIR, 4, 2 << 24 | 0xff << 16 | 7), Kicks(1 << 3));
    assert_eq!((pend(0, 7), pend(3, 7)), (0, 0b1000));
    // Filter 3 is reserved.
    assert_eq!(g.dist_write(3, SGIR, 4, 3 << 24 | 0xff << 16 | 8), Kicks(0));
    assert_eq!(pend(0, 8), 0);
    // SPENDSGIR / CPENDSGIR set and clear sources; ISPENDR0 cannot.
    g.dist_write(0, SPENDSGIR + 4, 4, 0x03 << 16);
    assert_eq!(g.dist_read(0, SPENDSGIR + 4, 4), 0x03 << 16);
    g.dist_write(0, CPENDSGIR + 6, 1, 0b10);
    assert_eq!(g.dist_read(0, CPENDSGIR + 6, 1), 0x01);
    g.dist_write(0, ICPENDR, 4, 1 << 6);
    assert!(dget(&g, 0, ISPENDR, 6));
    g.dist_write(0, ISPENDR, 4, 1 << 9);
    assert!(!dget(&g, 0, ISPENDR, 9));
}

#[test]
fn icc_sgi1r_targets() {
    // Two clusters of two (Aff1 0 and 1) and one with Aff0 = 17 (needs RS = 1).
    let mpidrs = alloc::vec![0x0, 0x1, 0x100, 0x101, 0x11];
    let g = Vgic::new(VgicConfig {
        model: Model::V3,
        vcpu_mpidrs: mpidrs,
        nr_spis: 32,
        lpis: false,
        share: crate::gic::vgic::budget::Share::unlimited(),
    })
    .unwrap();
    enable_groups(&g);
    let sgi1r = |aff1: u64, list: u64, intid: u64| aff1 << 16 | intid << 24 | list;
    let pending = |v: usize, intid: u32| rget(&g, v, ISPENDR, intid);
    // Aff1 = 1, targets Aff0 1: vCPU 3 only.
    assert_eq!(g.sgi_write(0, sgi1r(1, 0b10, 1), 1), Kicks(1 << 3));
    assert!(pending(3, 1) && !pending(1, 1) && !pending(2, 1));
    // Aff1 = 0, both: vCPUs 0 and 1 (the sender may target itself).
    assert_eq!(g.sgi_write(0, sgi1r(0, 0b11, 2), 1), Kicks(0b11));
    // RS = 1, bit 1: Aff0 17.
    assert_eq!(g.sgi_write(0, 1 << 44 | sgi1r(0, 0b10, 3), 1), Kicks(1 << 4));
    // Aff2 mismatch: nobody.
    assert_eq!(g.sgi_write(0, 1 << 32 | sgi1r(0, 0xffff, 4), 1), Kicks(0));
    // IRM = 1: all but self, whatever the list.
    assert_eq!(g.sgi_write(2, 1 << 40 | sgi1r(0, 0, 5), 1), Kicks(0b11011));
    assert!(!pending(2, 5) && pending(0, 5) && pending(4, 5));
    // SGI0R (group 0) raises only SGIs configured as group 0.
    assert_eq!(g.sgi_write(0, sgi1r(0, 0b10, 6), 0), Kicks(0));
    assert!(!pending(1, 6));
    g.redist_write(1, sgi(1) + IGROUPR, 4, 0xffff_ffff & !(1 << 6));
    assert_eq!(g.sgi_write(0, sgi1r(0, 0b10, 6), 0), Kicks(1 << 1));
    // SGI1R raises a group 0 SGI too (single security state).
    g.redist_write(1, sgi(1) + ICPENDR, 4, 1 << 6);
    assert_eq!(g.sgi_write(0, sgi1r(0, 0b10, 6), 1), Kicks(1 << 1));
    // A GICv2 VM ignores it.
    let g2 = v2(2);
    assert_eq!(g2.sgi_write(0, sgi1r(0, 0b11, 1), 1), Kicks(0));
    assert!(!dget(&g2, 1, ISPENDR, 1));
}

#[test]
fn flush_takes_the_highest_priority_and_sets_underflow() {
    let g = v3(1);
    enable_groups(&g);
    let prios = [0x80u8, 0x10, 0xa0, 0x08, 0x40];
    for (i, &p) in prios.iter().enumerate() {
        setup_spi(&g, 32 + i as u32, 0, p);
        dset(&g, ISPENDR, 32 + i as u32);
    }
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 2);
    assert_eq!(c.used_lrs, 2);
    assert_eq!(c.hcr, HCR_EN | HCR_UIE);
    assert_eq!((vintid(Model::V3, c.lr[0]), vintid(Model::V3, c.lr[1])), (35, 33));
    assert_eq!(c.lr[0] >> 48 & 0xff, 0x08);
    assert_eq!(state(Model::V3, c.lr[0]), 1);
    // Edge, group 1, no EOI maintenance.
    assert_eq!(c.lr[0] & (lr3::GROUP | lr3::EOI | lr3::HW), lr3::GROUP);
    // The guest takes and finishes both: the next flush brings the next two.
    c.lr[0] = 0;
    c.lr[1] = 0;
    g.sync(0, &mut c);
    assert_eq!(c.used_lrs, 0);
    g.flush(0, &mut c, 2);
    assert_eq!((vintid(Model::V3, c.lr[0]), vintid(Model::V3, c.lr[1])), (36, 32));
    assert_eq!(c.hcr, HCR_EN | HCR_UIE);
    c.lr[0] = 0;
    c.lr[1] = 0;
    g.sync(0, &mut c);
    g.flush(0, &mut c, 16);
    assert_eq!(lrs(&c).iter().map(|&l| vintid(Model::V3, l)).collect::<Vec<_>>(), [34]);
    assert_eq!(c.hcr, HCR_EN);
    // More list registers than the hardware's limit are not used.
    g.flush(0, &mut c, 100);
    assert_eq!(c.used_lrs, 1);
}

#[test]
fn active_interrupts_get_list_registers_first() {
    let g = v3(1);
    enable_groups(&g);
    setup_spi(&g, 32, 0, 0xf0);
    setup_spi(&g, 33, 0, 0x00);
    dset(&g, ISACTIVER, 32);
    dset(&g, ISPENDR, 33);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 1);
    assert_eq!(vintid(Model::V3, c.lr[0]), 32);
    assert_eq!(state(Model::V3, c.lr[0]), 2);
    assert_eq!(c.hcr, HCR_EN | HCR_UIE);
}

#[test]
fn sync_folds_every_list_register_state() {
    let g = v3(1);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0x20);
    let mut c = VgicCpuState::default();
    let check = |pending: bool, active: bool| {
        assert_eq!(dget(&g, 0, ISPENDR, SPI), pending, "pending");
        assert_eq!(dget(&g, 0, ISACTIVER, SPI), active, "active");
    };
    dset(&g, ISPENDR, SPI);
    g.flush(0, &mut c, 4);
    assert_eq!(state(Model::V3, c.lr[0]), 1);
    // Still pending: the guest has not taken it.
    g.sync(0, &mut c);
    check(true, false);
    g.flush(0, &mut c, 4);
    assert_eq!(state(Model::V3, c.lr[0]), 1);
    // The guest acknowledged it.
    c.lr[0] = with_state(Model::V3, c.lr[0], 2);
    g.sync(0, &mut c);
    check(false, true);
    // Made pending again (an edge) while active: pending and active.
    dset(&g, ISPENDR, SPI);
    g.flush(0, &mut c, 4);
    assert_eq!(state(Model::V3, c.lr[0]), 3);
    g.sync(0, &mut c);
    check(true, true);
    // The guest deactivates it; it is pending again.
    g.flush(0, &mut c, 4);
    c.lr[0] = with_state(Model::V3, c.lr[0], 1);
    g.sync(0, &mut c);
    check(true, false);
    // Taken and deactivated: invalid, off the ap list.
    g.flush(0, &mut c, 4);
    c.lr[0] = with_state(Model::V3, c.lr[0], 0);
    g.sync(0, &mut c);
    check(false, false);
    assert!(!g.is_pending_or_active(0, SPI));
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
}

#[test]
fn an_edge_made_pending_in_a_list_register_is_not_lost() {
    let g = v3(2);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0x20);
    assert_eq!(g.set_line(0, SPI, true), Kicks(1));
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    assert!(g.is_pending_or_active(0, SPI));
    // While vCPU 0 runs: another edge, from a device and from vCPU 1.
    g.set_line(0, SPI, false);
    assert_eq!(g.set_line(0, SPI, true), Kicks(1), "the vCPU holding it is kicked");
    // The guest acknowledged the first.
    c.lr[0] = with_state(Model::V3, c.lr[0], 2);
    g.sync(0, &mut c);
    assert!(dget(&g, 0, ISPENDR, SPI) && dget(&g, 0, ISACTIVER, SPI));

    // An SGI sent while the same SGI sits in the target's list register.
    let sgi1r = |intid: u64| intid << 24 | 1;
    g.sgi_write(1, sgi1r(3), 1);
    g.flush(0, &mut c, 4);
    let slot = lrs(&c).iter().position(|&l| vintid(Model::V3, l) == 3).unwrap();
    assert_eq!(g.sgi_write(1, sgi1r(3), 1), Kicks(1));
    c.lr[slot] = with_state(Model::V3, c.lr[slot], 0);
    g.sync(0, &mut c);
    assert!(rget(&g, 0, ISPENDR, 3));
}

#[test]
fn host_changes_while_in_a_list_register_win() {
    let g = v3(2);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0x20);
    dset(&g, ISPENDR, SPI);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    // vCPU 1 clears the pending state while it sits in vCPU 0's list register.
    let (off, bit) = bank(ICPENDR, SPI);
    assert_eq!(g.dist_write(1, off, 4, bit), Kicks(1));
    g.sync(0, &mut c);
    assert!(!dget(&g, 0, ISPENDR, SPI));
    assert!(!g.is_pending_or_active(0, SPI));

    // And the active state.
    dset(&g, ISPENDR, SPI);
    g.flush(0, &mut c, 4);
    let (off, bit) = bank(ICACTIVER, SPI);
    c.lr[0] = with_state(Model::V3, c.lr[0], 2);
    g.dist_write(1, off, 4, bit);
    g.sync(0, &mut c);
    assert!(!dget(&g, 0, ISACTIVER, SPI));
}

#[test]
fn flushing_twice_without_entry_loses_nothing() {
    let g = v3(1);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0x20);
    dset(&g, ISPENDR, SPI);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 1);
    assert_eq!(state(Model::V3, c.lr[0]), 1);
    g.sync(0, &mut c);
    assert!(dget(&g, 0, ISPENDR, SPI));
}

#[test]
fn level_interrupts_are_resampled_on_deactivation() {
    let g = v3(1);
    enable_groups(&g);
    rset(&g, 0, ISENABLER, 27);
    g.set_line(0, 27, true);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 1);
    assert_eq!(vintid(Model::V3, c.lr[0]), 27);
    assert_eq!(state(Model::V3, c.lr[0]), 1);
    assert_ne!(c.lr[0] & lr3::EOI, 0, "a software level interrupt asks for EOI maintenance");
    // Taken: active; the line is still high but the list register says active only.
    c.lr[0] = with_state(Model::V3, c.lr[0], 2);
    g.sync(0, &mut c);
    g.flush(0, &mut c, 4);
    assert_eq!(state(Model::V3, c.lr[0]), 2);
    assert_ne!(c.lr[0] & lr3::EOI, 0);
    // Deactivated while the line is still high: pending again.
    c.lr[0] = with_state(Model::V3, c.lr[0], 0);
    g.sync(0, &mut c);
    assert!(rget(&g, 0, ISPENDR, 27));
    g.flush(0, &mut c, 4);
    assert_eq!(state(Model::V3, c.lr[0]), 1);
    // The device drops the line while it waits in the list register: gone.
    g.set_line(0, 27, false);
    g.sync(0, &mut c);
    assert!(!rget(&g, 0, ISPENDR, 27));
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
    // A software-pended level interrupt loses that pending state once taken.
    rset(&g, 0, ISPENDR, 27);
    g.flush(0, &mut c, 4);
    c.lr[0] = with_state(Model::V3, c.lr[0], 0);
    g.sync(0, &mut c);
    assert!(!rget(&g, 0, ISPENDR, 27));
}

#[test]
fn hardware_linked_interrupts() {
    let g = v3(1);
    enable_groups(&g);
    g.set_hw(0, 27, Some(26));
    // An SGI cannot be linked, nor linked to one.
    g.set_hw(0, 3, Some(26));
    g.set_hw(0, 28, Some(5));
    rset(&g, 0, ISENABLER, 27);
    rset(&g, 0, ISENABLER, 28);
    g.redist_write(0, sgi(0) + IPRIORITYR + 27, 1, 0xa0);
    g.redist_write(0, sgi(0) + IPRIORITYR + 28, 1, 0xa0);
    g.set_line(0, 27, true);
    g.set_line(0, 28, true);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    let lr27 = *lrs(&c).iter().find(|&&l| vintid(Model::V3, l) == 27).unwrap();
    assert_eq!(lr27, 27 | 26 << 32 | 0xa0 << 48 | lr3::GROUP | lr3::HW | 1 << 62);
    let lr28 = *lrs(&c).iter().find(|&&l| vintid(Model::V3, l) == 28).unwrap();
    assert_eq!(lr28, 28 | lr3::EOI | 0xa0 << 48 | lr3::GROUP | 1 << 62);
    // Active: never pending+active in a hardware list register.
    for l in c.lr.iter_mut().take(c.used_lrs as usize) {
        *l = with_state(Model::V3, *l, 2);
    }
    g.sync(0, &mut c);
    g.flush(0, &mut c, 4);
    let lr27 = *lrs(&c).iter().find(|&&l| vintid(Model::V3, l) == 27).unwrap();
    assert_eq!(state(Model::V3, lr27), 2);
    g.sync(0, &mut c);
    // Unlinked: a software interrupt again.
    g.set_hw(0, 27, None);
    g.flush(0, &mut c, 4);
    let lr27 = *lrs(&c).iter().find(|&&l| vintid(Model::V3, l) == 27).unwrap();
    assert_eq!(lr27 & lr3::HW, 0);
}

/// The list register el2 writes for the virtual timer when its physical
/// PPI fires during a run (docs/interrupts.md §6): the same as the host's
/// flush would write, and none while the guest could not take it.
#[test]
fn el2s_timer_list_register_is_the_hosts_and_only_when_takeable() {
    for (g, rd_base, model) in [(v3(2), sgi(1), Model::V3), (v2(2), 0, Model::V2)] {
        let priority_at = |intid: u32| match model {
            Model::V3 => rd_base + IPRIORITYR + u64::from(intid),
            Model::V2 => IPRIORITYR + u64::from(intid),
        };
        let write = |off: u64, size: u8, value: u64| match model {
            Model::V3 => g.redist_write(1, off, size, value),
            Model::V2 => g.dist_write(1, off, size, value),
        };
        let gen0 = g.config_gen();
        assert_eq!(g.hw_lr(1, 27), 0, "{model:?}: not linked yet");
        g.set_hw(1, 27, Some(27));
        assert_ne!(g.config_gen(), gen0, "a link changes what the list register is made of");
        assert_eq!(g.hw_lr(1, 27), 0, "{model:?}: disabled (the reset value)");
        write(if model == Model::V3 { rd_base + ISENABLER } else { ISENABLER }, 4, 1 << 27);
        assert_eq!(g.hw_lr(1, 27), 0, "{model:?}: its group disabled in GICD_CTLR");
        let gen1 = g.config_gen();
        g.dist_write(0, CTLR, 4, 0b11);
        assert_ne!(g.config_gen(), gen1);
        write(priority_at(27), 1, 0xa0);
        let lr = g.hw_lr(1, 27);
        // What the host's flush writes for the same pending interrupt.
        g.set_line(1, 27, true);
        let mut c = VgicCpuState::default();
        g.flush(1, &mut c, 4);
        assert_eq!(lrs(&c), [lr], "{model:?}");
        assert_eq!(state(model, lr), 1, "{model:?}: pending");
        assert_eq!(g.hw_lr(0, 27), 0, "{model:?}: another vCPU's is not linked");
        g.sync(1, &mut c);
    }
}

/// What el2 put in a list register itself comes back at the next exit:
/// the guest took the timer's interrupt (active) and the host's next flush
/// gives it back to the guest to deactivate; once deactivated it is gone.
#[test]
fn list_registers_el2_filled_fold_back() {
    for (g, model) in [(v3(1), Model::V3), (v2(1), Model::V2)] {
        enable_groups(&g);
        g.set_hw(0, 27, Some(27));
        match model {
            Model::V3 => rset(&g, 0, ISENABLER, 27),
            Model::V2 => dset(&g, ISENABLER, 27),
        };
        let mut c = VgicCpuState::default();
        g.flush(0, &mut c, 4);
        assert_eq!(c.used_lrs, 0, "{model:?}: nothing pending");
        // el2: the PPI fired; the guest acknowledged its copy before the exit.
        c.lr[0] = with_state(model, g.hw_lr(0, 27), 2);
        c.used_lrs = 1;
        c.el2_lrs = 1;
        g.sync(0, &mut c);
        assert_eq!(c.el2_lrs, 0, "{model:?}: folded");
        g.flush(0, &mut c, 4);
        let lr = *lrs(&c).iter().find(|&&l| vintid(model, l) == 27).expect("active, so listed again");
        assert_eq!(state(model, lr), 2, "{model:?}: active, not pending (its line is low)");
        // The guest deactivates it: invalid at the next exit, and gone.
        c.lr[0] = with_state(model, lr, 0);
        g.sync(0, &mut c);
        g.flush(0, &mut c, 4);
        assert!(lrs(&c).iter().all(|&l| vintid(model, l) != 27), "{model:?}: {:x?}", lrs(&c));
    }
}

/// GICv2 SGIs el2 posted carry their source in the list register (CPUID):
/// one still pending comes back pending from that source alone (IHI 0048
/// §4.3.20, GICD_SPENDSGIRn: a bit per source), one taken is active.
#[test]
fn gicv2_sgis_el2_posted_fold_back_with_their_source() {
    let g = v2(4);
    enable_groups(&g);
    let mut c = VgicCpuState::default();
    g.flush(2, &mut c, 4);
    // SGI 6 from vCPU 1 pending, SGI 6 from vCPU 3 taken.
    c.lr[0] = 6 | 1 << 10 | 1 << 28;
    c.lr[1] = 6 | 3 << 10 | 2 << 28;
    c.used_lrs = 2;
    c.el2_lrs = 0b11;
    g.sync(2, &mut c);
    let spendsgir = g.dist_read(2, GICD_SPENDSGIR_BASE + 4, 4);
    assert_eq!((spendsgir >> 16) & 0xff, 1 << 1, "SGI 6 pending from vCPU 1 alone");
    g.flush(2, &mut c, 4);
    let mut got: alloc::vec::Vec<(u64, u64)> = lrs(&c).iter().map(|&l| ((l >> 10) & 7, state(Model::V2, l))).collect();
    got.sort();
    assert_eq!(got, [(1, 1), (3, 2)], "from vCPU 1 pending, from vCPU 3 active");
    assert_eq!(g.dist_read(0, GICD_SPENDSGIR_BASE + 4, 4), 0, "vCPU 0 saw none of it");
}

/// GICv3 SGIs el2 moved from a mailbox into list registers
/// (`ferrovisor_shared::sgi`) come back at the exit as the guest left them:
/// still pending (latched again, so the next flush lists it), or active;
/// and an active SGI el2 made pending again in the host's own list
/// register keeps both states. Nothing is lost or doubled.
#[test]
fn sgis_el2_posted_fold_back() {
    let g = v3(2);
    enable_groups(&g);
    rset(&g, 1, ISENABLER, 3);
    rset(&g, 1, ISENABLER, 5);
    let mut c = VgicCpuState::default();
    g.flush(1, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
    // el2: SGI 3 and 5 posted; the guest took 5 (active), not 3.
    let sgi_lr = |n: u64, st: u64| n | lr3::GROUP | st << 62;
    c.lr[0] = sgi_lr(3, 1);
    c.lr[1] = sgi_lr(5, 2);
    c.used_lrs = 2;
    c.el2_lrs = 0b11;
    g.sync(1, &mut c);
    assert!(rget(&g, 1, ISPENDR, 3), "still pending");
    assert!(!rget(&g, 1, ISPENDR, 5) && rget(&g, 1, ISACTIVER, 5), "taken");
    g.flush(1, &mut c, 4);
    let find = |c: &VgicCpuState, n: u32| lrs(c).iter().copied().find(|&l| vintid(Model::V3, l) == n);
    assert_eq!(find(&c, 3).map(|l| state(Model::V3, l)), Some(1));
    assert_eq!(find(&c, 5).map(|l| state(Model::V3, l)), Some(2));
    // el2 posts 5 again while the guest still has it active: it marks the
    // host's list register pending and active.
    let i = lrs(&c).iter().position(|&l| vintid(Model::V3, l) == 5).unwrap();
    c.lr[i] = with_state(Model::V3, c.lr[i], 3);
    let j = lrs(&c).iter().position(|&l| vintid(Model::V3, l) == 3).unwrap();
    c.lr[j] = with_state(Model::V3, c.lr[j], 0);
    c.el2_lrs = 1 << i;
    g.sync(1, &mut c);
    assert!(rget(&g, 1, ISPENDR, 5) && rget(&g, 1, ISACTIVER, 5), "pending and active");
    assert!(!rget(&g, 1, ISPENDR, 3), "taken and ended: gone");
    // The other vCPU saw none of it.
    assert!(!rget(&g, 0, ISPENDR, 3) && !rget(&g, 0, ISPENDR, 5));
}

/// What el2 needs to post an SGI is published at every configuration
/// change: which SGIs each vCPU can take, their groups and priorities.
#[test]
fn the_sgi_mailboxes_follow_the_configuration() {
    use core::sync::atomic::Ordering::Relaxed;
    let g = v3(2);
    assert_ne!(g.sgi_table_pa(), 0);
    // SAFETY: the table lives in the vGIC; read-only here.
    let t = unsafe { &*(g.sgi_table_pa() as *const ferrovisor_shared::sgi::SgiTable) };
    assert_eq!(t.nr_vcpus, 2);
    assert!(!t.vcpu[1].can_take(3), "groups disabled in GICD_CTLR at reset");
    enable_groups(&g);
    assert!(t.vcpu[1].can_take(3) && t.vcpu[0].can_take(3), "SGIs enabled at reset, as KVM's are");
    rset(&g, 0, ICENABLER, 3);
    assert!(t.vcpu[1].can_take(3), "vCPU 1's still enabled");
    assert!(!t.vcpu[0].can_take(3), "vCPU 0's disabled");
    g.redist_write(1, sgi(1) + IPRIORITYR + 3, 1, 0x60);
    let taken = t.vcpu[1].takeable.load(Relaxed);
    assert_eq!(t.vcpu[1].lr_v3(3, taken), 3 | 0x60 << 48 | lr3::GROUP | 1 << 62);
    g.reset();
    assert!(!t.vcpu[1].can_take(3), "reset: groups off again");
    let g2 = v2(2);
    assert_eq!(g2.sgi_table_pa(), 0, "GICv2: none until GICD_SGIR's address is known");
    g2.set_sgir_ipa(0x0800_0f00);
    assert_ne!(g2.sgi_table_pa(), 0);
    // SAFETY: as above.
    let t2 = unsafe { &*(g2.sgi_table_pa() as *const ferrovisor_shared::sgi::SgiTable) };
    enable_groups(&g2);
    let gen = g2.config_gen();
    g2.dist_write(1, 0xf00, 4, 2 << 24 | 3);
    assert_eq!(g2.config_gen(), gen, "an SGI write changes no configuration");
    g2.dist_write(1, IPRIORITYR + 3, 1, 0x88);
    assert_ne!(g2.config_gen(), gen);
    let taken = t2.vcpu[1].takeable.load(Relaxed);
    assert_eq!(t2.vcpu[1].lr_v2(3, 0, taken) >> 23 & 0x1f, 0x88 >> 3, "GICD_IPRIORITYR is banked per CPU for SGIs");
}

#[test]
fn has_pending_honours_priority_mask_and_groups() {
    let g = v3(1);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0x80);
    let vmcr = |pmr: u64, grp: u64| VgicCpuState { vmcr: pmr << 24 | grp, ..Default::default() };
    assert!(!g.has_pending(0, &vmcr(0xff, 3)), "nothing pending yet");
    dset(&g, ISPENDR, SPI);
    assert!(g.has_pending(0, &vmcr(0xff, 3)));
    assert!(g.has_pending(0, &vmcr(0x88, 0b10)));
    assert!(!g.has_pending(0, &vmcr(0x80, 3)), "priority must be below the mask");
    assert!(!g.has_pending(0, &vmcr(0xff, 0b01)), "group 1 disabled in the CPU interface");
    g.dist_write(0, CTLR, 4, 0b01);
    assert!(!g.has_pending(0, &vmcr(0xff, 3)), "group 1 disabled in the distributor");
    g.dist_write(0, CTLR, 4, 0b10);
    assert!(g.has_pending(0, &vmcr(0xff, 3)));
    // Group 0 needs VENG0.
    dset(&g, ICENABLER, SPI);
    assert!(!g.has_pending(0, &vmcr(0xff, 3)), "disabled");
    dset(&g, ISENABLER, SPI);
    let (off, bit) = bank(IGROUPR, SPI);
    g.dist_write(0, off, 4, g.dist_read(0, off, 4) & !bit);
    g.dist_write(0, CTLR, 4, 0b11);
    assert!(g.has_pending(0, &vmcr(0xff, 0b01)));
    assert!(!g.has_pending(0, &vmcr(0xff, 0b10)));
    // Pending and active: not takeable.
    dset(&g, ISACTIVER, SPI);
    assert!(!g.has_pending(0, &vmcr(0xff, 3)));
    // Unknown vCPU.
    assert!(!g.has_pending(7, &vmcr(0xff, 3)));

    // GICv2: VMPriMask [31:27], VMGrp0En bit 0.
    let g = v2(1);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0x80);
    dset(&g, ISPENDR, SPI);
    let vmcr2 = |mask: u64, grp: u64| VgicCpuState { vmcr: mask << 27 | grp, ..Default::default() };
    assert!(g.has_pending(0, &vmcr2(0x11, 0b01)));
    assert!(!g.has_pending(0, &vmcr2(0x10, 0b01)));
    assert!(!g.has_pending(0, &vmcr2(0x1f, 0b10)));
}

#[test]
fn enabling_queues_and_disabling_unqueues() {
    let g = v3(2);
    setup_spi(&g, SPI, 1, 0);
    dset(&g, ISPENDR, SPI);
    let vm = VgicCpuState { vmcr: vmcr_open(), ..Default::default() };
    assert!(!g.has_pending(1, &vm));
    // Turning the group on in GICD_CTLR delivers what was waiting.
    assert_eq!(g.dist_write(0, CTLR, 4, 0b10), Kicks(1 << 1));
    assert!(g.has_pending(1, &vm));
    dset(&g, ICENABLER, SPI);
    assert!(!g.has_pending(1, &vm));
    let mut c = VgicCpuState::default();
    g.flush(1, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
    assert_eq!(dset(&g, ISENABLER, SPI), Kicks(1 << 1));
    g.flush(1, &mut c, 4);
    assert_eq!(c.used_lrs, 1);
}

#[test]
fn retargeting_while_in_a_list_register_moves_at_sync() {
    let g = v3(2);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0);
    dset(&g, ISPENDR, SPI);
    let mut c0 = VgicCpuState::default();
    g.flush(0, &mut c0, 4);
    // Retargeted to vCPU 1: vCPU 0 is kicked to give it up.
    let k = g.dist_write(0, IROUTER + 8 * u64::from(SPI), 8, 1);
    assert!(k.contains(0));
    g.sync(0, &mut c0);
    assert_eq!(g.take_kicks(), Kicks(1 << 1));
    assert_eq!(g.take_kicks(), Kicks(0));
    let mut c1 = VgicCpuState::default();
    g.flush(1, &mut c1, 4);
    assert_eq!(vintid(Model::V3, c1.lr[0]), SPI);
    g.flush(0, &mut c0, 4);
    assert_eq!(c0.used_lrs, 0);
}

#[test]
fn retargeting_a_waiting_interrupt_moves_it_at_once() {
    let vm = VgicCpuState { vmcr: vmcr_open(), ..Default::default() };
    // GICv2: ITARGETSR.
    let g = v2(3);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0);
    assert_eq!(dset(&g, ISPENDR, SPI), Kicks(1));
    assert_eq!(g.dist_write(0, ITARGETSR + u64::from(SPI), 1, 0b110), Kicks(1 << 1));
    assert!(!g.has_pending(0, &vm) && g.has_pending(1, &vm));
    // GICv3: IROUTER, and 1 of N following GICR_WAKER.
    let g = v3(3);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0);
    dset(&g, ISPENDR, SPI);
    assert_eq!(g.dist_write(0, IROUTER + 8 * u64::from(SPI), 8, 2), Kicks(1 << 2));
    assert!(!g.has_pending(0, &vm) && g.has_pending(2, &vm));
    // Everyone asleep: vCPU 0 takes 1-of-N interrupts.
    assert_eq!(g.dist_write(0, IROUTER + 8 * u64::from(SPI), 8, 1 << 31), Kicks(1));
    assert_eq!(g.redist_write(1, rd(1) + GICR_WAKER, 4, 0), Kicks(1 << 1));
    assert!(!g.has_pending(0, &vm) && g.has_pending(1, &vm));
    // A new priority reorders the list registers of the vCPU it waits for.
    assert_eq!(g.dist_write(0, IPRIORITYR + u64::from(SPI), 1, 0x80), Kicks(1 << 1));
    assert_eq!(g.dist_write(0, IPRIORITYR + u64::from(SPI + 1), 1, 0x80), Kicks(0));
}

#[test]
fn v2_list_registers() {
    let g = v2(3);
    enable_groups(&g);
    g.dist_write(0, IPRIORITYR, 4, 0x48 << 24);
    // SGI 3 to vCPU 0 from vCPUs 1 and 2: one list register per source.
    g.dist_write(1, SGIR, 4, 1 << 16 | 3);
    g.dist_write(2, SGIR, 4, 1 << 16 | 3);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 2);
    assert_eq!(c.lr[0], 3 | 1 << 10 | (0x48 >> 3) << 23 | 1 << 28);
    assert_eq!(c.lr[1], 3 | 2 << 10 | (0x48 >> 3) << 23 | 1 << 28);
    // The guest takes the one from vCPU 1; the other stays pending.
    c.lr[0] = with_state(Model::V2, c.lr[0], 2);
    g.sync(0, &mut c);
    assert_eq!(g.dist_read(0, SPENDSGIR + 3, 1), 0b100);
    assert!(dget(&g, 0, ISACTIVER, 3));
    // vCPU 1 sends it again while it is active: pending+active, source 1.
    g.dist_write(1, SGIR, 4, 1 << 16 | 3);
    g.flush(0, &mut c, 1);
    assert_eq!(c.used_lrs, 1);
    assert_eq!(c.hcr, HCR_EN | HCR_UIE);
    assert_eq!(state(Model::V2, c.lr[0]), 3);
    assert_eq!((c.lr[0] >> 10) & 7, 1);
    c.lr[0] = with_state(Model::V2, c.lr[0], 0);
    g.sync(0, &mut c);
    // Deactivated and taken again (the guest finished it): only vCPU 2's left.
    assert!(!dget(&g, 0, ISACTIVER, 3));
    assert_eq!(g.dist_read(0, SPENDSGIR + 3, 1), 0b100);
    // CPENDSGIR while it sits in a list register wins.
    g.flush(0, &mut c, 4);
    g.dist_write(0, CPENDSGIR, 4, 0b100 << 24);
    assert_eq!(g.dist_read(0, SPENDSGIR, 4), 0);
    g.sync(0, &mut c);
    assert!(!dget(&g, 0, ISPENDR, 3));

    // A level SPI in group 1 with EOI maintenance; a hardware one.
    let (off, bit) = bank(IGROUPR, SPI);
    g.dist_write(0, off, 4, bit);
    g.dist_write(0, ITARGETSR + u64::from(SPI), 1, 1);
    g.dist_write(0, IPRIORITYR + u64::from(SPI), 1, 0xff);
    dset(&g, ISENABLER, SPI);
    g.set_line(0, SPI, true);
    g.set_hw(0, SPI + 1, Some(1000));
    g.dist_write(0, ITARGETSR + u64::from(SPI + 1), 1, 1);
    dset(&g, ISENABLER, SPI + 1);
    g.set_line(0, SPI + 1, true);
    g.flush(0, &mut c, 4);
    // Priority 0 before 0xf8.
    assert_eq!(c.lr[0], u64::from(SPI + 1) | lr2::HW | 1000 << 10 | 1 << 28);
    assert_eq!(c.lr[1], u64::from(SPI) | lr2::EOI | 0x1f << 23 | 1 << 28 | lr2::GROUP1);
}

#[test]
fn v2_sgi_sources_active_at_once() {
    let g = v2(3);
    enable_groups(&g);
    g.dist_write(1, SGIR, 4, 1 << 16 | 2);
    g.dist_write(2, SGIR, 4, 1 << 16 | 2);
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    c.lr[0] = with_state(Model::V2, c.lr[0], 2);
    c.lr[1] = with_state(Model::V2, c.lr[1], 2);
    g.sync(0, &mut c);
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 2);
    assert_eq!(lrs(&c).iter().map(|&l| (state(Model::V2, l), (l >> 10) & 7)).collect::<Vec<_>>(), [(2, 1), (2, 2)]);
    // The guest writes ISACTIVER for an SGI of its own: the source is the writer.
    g.sync(0, &mut c);
    g.dist_write(0, ICACTIVER, 4, 1 << 2);
    assert!(!dget(&g, 0, ISACTIVER, 2));
    g.dist_write(0, ISACTIVER, 4, 1 << 2);
    g.flush(0, &mut c, 4);
    assert_eq!(lrs(&c).iter().map(|&l| (state(Model::V2, l), (l >> 10) & 7)).collect::<Vec<_>>(), [(2, 0)]);
}

#[test]
fn set_line_edges_and_unknown_lines() {
    let g = v3(1);
    enable_groups(&g);
    setup_spi(&g, SPI, 0, 0);
    assert_eq!(g.set_line(0, SPI, true), Kicks(1));
    // Holding the line high is not another edge.
    assert_eq!(g.set_line(0, SPI, true), Kicks(0));
    dset(&g, ICPENDR, SPI);
    assert!(!dget(&g, 0, ISPENDR, SPI));
    // Unknown INTIDs, SGIs and vCPUs.
    assert_eq!(g.set_line(0, 32 + 64, true), Kicks(0));
    assert_eq!(g.set_line(0, 1023, true), Kicks(0));
    assert_eq!(g.set_line(0, 5, true), Kicks(0));
    assert_eq!(g.set_line(9, 27, true), Kicks(0));
    assert!(!g.is_pending_or_active(0, 5));
    assert!(!g.is_pending_or_active(9, 27));
    // A level line: pending while high, whatever ICPENDR says.
    rset(&g, 0, ISENABLER, 23);
    g.set_line(0, 23, true);
    rset(&g, 0, ICPENDR, 23);
    assert!(rget(&g, 0, ISPENDR, 23));
    g.set_line(0, 23, false);
    assert!(!rget(&g, 0, ISPENDR, 23));
}

#[test]
fn reset_restores_reset_values() {
    let g = v3(2);
    enable_groups(&g);
    setup_spi(&g, SPI, 1, 0x40);
    dset(&g, ISPENDR, SPI);
    g.set_hw(0, 27, Some(27));
    g.redist_write(1, rd(1) + GICR_WAKER, 4, 0);
    rset(&g, 0, ISENABLER, 27);
    let mut c = VgicCpuState::default();
    g.flush(1, &mut c, 4);
    g.reset();
    assert_eq!(g.dist_read(0, CTLR, 4), 0x50);
    assert!(!dget(&g, 0, ISPENDR, SPI));
    assert!(!dget(&g, 0, ISENABLER, SPI));
    assert_eq!(g.dist_read(0, IPRIORITYR + u64::from(SPI), 1), 0);
    assert_eq!(g.dist_read(0, IROUTER + 8 * u64::from(SPI), 8), 0);
    assert_eq!(g.redist_read(1, rd(1) + GICR_WAKER, 4), 0b110);
    assert!(!rget(&g, 0, ISENABLER, 27));
    g.sync(1, &mut c);
    assert!(!dget(&g, 0, ISPENDR, SPI), "a stale list register does not come back");
    g.flush(1, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
    // The hardware link stays.
    enable_groups(&g);
    rset(&g, 0, ISENABLER, 27);
    g.set_line(0, 27, true);
    g.flush(0, &mut c, 4);
    assert_ne!(c.lr[0] & lr3::HW, 0);
}

#[test]
fn kicks_helpers() {
    let mut k = Kicks::default();
    assert!(k.is_empty());
    k.add(3);
    k.add(63);
    k.add(64);
    assert!(k.contains(3) && k.contains(63) && !k.contains(64) && !k.contains(2));
    assert_eq!(k.iter().collect::<Vec<_>>(), [3, 63]);
    assert_eq!(Kicks(1) | Kicks(4), Kicks(5));
}

mod random {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        DistRead {
            vcpu: usize,
            off: u64,
            size: u8,
        },
        DistWrite {
            vcpu: usize,
            off: u64,
            size: u8,
            value: u64,
        },
        RedistRead {
            vcpu: usize,
            off: u64,
            size: u8,
        },
        RedistWrite {
            vcpu: usize,
            off: u64,
            size: u8,
            value: u64,
        },
        Sgi {
            vcpu: usize,
            value: u64,
            group: u8,
        },
        Line {
            vcpu: usize,
            intid: u32,
            level: bool,
        },
        Hw {
            vcpu: usize,
            intid: u32,
            pintid: Option<u32>,
        },
        Run {
            vcpu: usize,
            nr_lrs: usize,
            states: [u8; 16],
            vmcr: u64,
        },
        /// A register write aimed at one interrupt's field (dense in the
        /// states that matter: enabled, pending, routed, retargeted).
        Field {
            vcpu: usize,
            kind: u8,
            intid: u32,
            value: u64,
        },
        Reset,
    }

    /// Mostly the registers that exist (so that random sequences enable,
    /// route and raise interrupts), sometimes anything.
    fn offset() -> impl Strategy<Value = u64> {
        let bitreg = (1u64..8, 0u64..4).prop_map(|(r, w)| 0x80 * r + 4 * w);
        let dist = prop_oneof![
            Just(0u64),
            bitreg.clone(),
            (0x400u64..0x480),
            (0x800u64..0x880),
            (0xc00u64..0xc20),
            Just(0xf00),
            (0xf10u64..0xf30),
            (32u64..100).prop_map(|n| 0x6000 + 8 * n),
        ];
        let sgi_frame = prop_oneof![bitreg, 0x400u64..0x420, Just(0xc00), Just(0xc04)];
        let redist = prop_oneof![
            (0u64..5).prop_map(|v| v * 0x2_0000 + 0x14),
            (0u64..5, sgi_frame).prop_map(|(v, o)| v * 0x2_0000 + 0x1_0000 + o),
        ];
        prop_oneof![4 => dist, 4 => redist, 1 => 0u64..0x1_0000, 1 => 0u64..0xa_0000, 1 => any::<u64>()]
    }

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), 0u64..8, Just(1 << 31), Just(u64::MAX)]
    }

    fn size() -> impl Strategy<Value = u8> {
        prop_oneof![4 => Just(4u8), 1 => Just(1), 1 => Just(8), 1 => 0u8..10]
    }

    fn op() -> impl Strategy<Value = Op> {
        // Mostly vCPUs that may exist, sometimes any index at all.
        let vcpu = prop_oneof![8 => 0usize..5, 1 => any::<usize>()];
        let intid = prop_oneof![4 => 16u32..100, 1 => 0u32..1100];
        let sgi = prop_oneof![
            (0u64..16, any::<u16>(), any::<bool>())
                .prop_map(|(i, list, irm)| i << 24 | u64::from(list) | u64::from(irm) << 40),
            any::<u64>(),
        ];
        prop_oneof![
            2 => (vcpu.clone(), offset(), size()).prop_map(|(vcpu, off, size)| Op::DistRead { vcpu, off, size }),
            4 => (vcpu.clone(), offset(), size(), value())
                .prop_map(|(vcpu, off, size, value)| Op::DistWrite { vcpu, off, size, value }),
            2 => (vcpu.clone(), offset(), size()).prop_map(|(vcpu, off, size)| Op::RedistRead { vcpu, off, size }),
            4 => (vcpu.clone(), offset(), size(), value())
                .prop_map(|(vcpu, off, size, value)| Op::RedistWrite { vcpu, off, size, value }),
            2 => (vcpu.clone(), sgi, 0u8..3).prop_map(|(vcpu, value, group)| Op::Sgi { vcpu, value, group }),
            2 => (vcpu.clone(), intid.clone(), any::<bool>()).prop_map(|(vcpu, intid, level)| Op::Line { vcpu, intid, level }),
            1 => (vcpu.clone(), intid, proptest::option::of(0u32..2000))
                .prop_map(|(vcpu, intid, pintid)| Op::Hw { vcpu, intid, pintid }),
            3 => (vcpu, 0usize..20, any::<[u8; 16]>(), any::<u64>())
                .prop_map(|(vcpu, nr_lrs, states, vmcr)| Op::Run { vcpu, nr_lrs, states, vmcr }),
            8 => (0usize..5, 0u8..13, few_intids(), value())
                .prop_map(|(vcpu, kind, intid, value)| Op::Field { vcpu, kind, intid, value }),
            1 => Just(Op::Reset),
        ]
    }

    fn apply(g: &Vgic, cpus: &mut [VgicCpuState], op: &Op) {
        let n = g.nr_vcpus();
        match *op {
            Op::DistRead { vcpu, off, size } => {
                let _ = g.dist_read(vcpu, off, size);
            }
            Op::DistWrite { vcpu, off, size, value } => {
                assert_eq!(g.dist_write(vcpu, off, size, value).0 >> n, 0, "kicks name vCPUs that exist");
            }
            Op::RedistRead { vcpu, off, size } => {
                let _ = g.redist_read(vcpu, off, size);
            }
            Op::RedistWrite { vcpu, off, size, value } => {
                assert_eq!(g.redist_write(vcpu, off, size, value).0 >> n, 0);
            }
            Op::Sgi { vcpu, value, group } => {
                assert_eq!(g.sgi_write(vcpu, value, group).0 >> n, 0);
            }
            Op::Line { vcpu, intid, level } => {
                assert_eq!(g.set_line(vcpu, intid, level).0 >> n, 0);
                let _ = g.is_pending_or_active(vcpu, intid);
            }
            Op::Hw { vcpu, intid, pintid } => g.set_hw(vcpu, intid, pintid),
            Op::Run { vcpu, nr_lrs, states, vmcr } => {
                let mut scratch = VgicCpuState::default();
                let c = cpus.get_mut(vcpu).unwrap_or(&mut scratch);
                c.vmcr = vmcr;
                g.flush(vcpu, c, nr_lrs);
                assert!(c.used_lrs as usize <= nr_lrs.min(MAX_LIST_REGS));
                assert_eq!(c.hcr & HCR_EN, HCR_EN);
                // The guest moves each list register to any state (as if it
                // had taken, finished or left it).
                for (lr, &s) in c.lr.iter_mut().zip(states.iter()) {
                    *lr = with_state(g.model(), *lr, u64::from(s & 3));
                }
                let _ = g.has_pending(vcpu, c);
                g.sync(vcpu, c);
                assert_eq!(c.used_lrs, 0);
                let _ = g.has_pending(vcpu, c);
                assert_eq!(g.take_kicks().0 >> n, 0);
            }
            Op::Field { vcpu, kind, intid, value } => {
                let k = field_write(g, vcpu, kind, intid, value);
                assert_eq!(k.0 >> n, 0);
            }
            Op::Reset => g.reset(),
        }
    }

    /// A handful of interrupts of each kind, so that one sequence often
    /// hits the same interrupt several times.
    fn few_intids() -> impl Strategy<Value = u32> {
        prop_oneof![4 => prop::sample::select(&[1u32, 2, 27, 30, 32, 33, 34][..]), 1 => 0u32..40]
    }

    /// Writes field `kind` of `intid` (through `vcpu`'s redistributor for a
    /// private interrupt on GICv3).
    fn field_write(g: &Vgic, vcpu: usize, kind: u8, intid: u32, value: u64) -> Kicks {
        let v3 = g.model() == Model::V3;
        let private_v3 = v3 && intid < 32;
        let write = |off: u64, size: u8, val: u64| {
            if private_v3 {
                g.redist_write(vcpu, sgi(vcpu) + off, size, val)
            } else {
                g.dist_write(vcpu, off, size, val)
            }
        };
        match kind {
            0..=6 => write(0x80 * (u64::from(kind) + 1) + 4 * u64::from(intid / 32), 4, 1 << (intid % 32)),
            7 => write(IPRIORITYR + u64::from(intid), 1, value & 0xff),
            8 if v3 => g.dist_write(vcpu, IROUTER + 8 * u64::from(intid), 8, value & (7 | 1 << 31)),
            8 => g.dist_write(vcpu, ITARGETSR + u64::from(intid), 1, value & 0xff),
            9 => g.dist_write(vcpu, CTLR, 4, value & 3),
            10 if v3 => g.redist_write(vcpu, rd(vcpu) + GICR_WAKER, 4, value & 2),
            11 => {
                let off = ICFGR + 4 * u64::from(intid / 16);
                write(off, 4, value & 0xaaaa_aaaa)
            }
            _ => g.set_line(vcpu, intid, value & 1 != 0),
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(1024))]

        #[test]
        fn random_accesses_never_panic(
            v3_model: bool,
            n in 1usize..5,
            enabled: bool,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let model = if v3_model { Model::V3 } else { Model::V2 };
            let mpidrs = (0..n).map(|i| (i as u64 & 3) | (i as u64 >> 2) << 8).collect();
            let g = Vgic::new(VgicConfig { model, vcpu_mpidrs: mpidrs, nr_spis: 64, lpis: false, share: crate::gic::vgic::budget::Share::unlimited() }).unwrap();
            let mut cpus = alloc::vec![VgicCpuState::default(); n];
            if enabled {
                enable_groups(&g);
            }
            for op in &ops {
                apply(&g, &mut cpus, op);
                g.check_invariants();
            }
            // Whatever happened, every vCPU can still run.
            for (v, c) in cpus.iter_mut().enumerate() {
                g.flush(v, c, 4);
                g.sync(v, c);
            }
        }
    }
}

/// The lock-free fast path of `flush`/`sync` for a vCPU with nothing listed
/// never hides an interrupt made pending later, by another vCPU or a device.
#[test]
fn idle_fast_path_never_hides_a_new_interrupt() {
    for g in [v3(2), v2(2)] {
        enable_groups(&g);
        let model = g.model();
        let mut c = VgicCpuState { vmcr: vmcr_open(), ..Default::default() };
        // Nothing pending: flush and sync leave the list registers empty.
        g.flush(1, &mut c, 4);
        assert_eq!(c.used_lrs, 0);
        g.sync(1, &mut c);
        g.flush(1, &mut c, 4);
        assert_eq!((c.used_lrs, c.hcr & HCR_EN), (0, HCR_EN), "{model:?}");
        // A device raises an SPI routed to vCPU 1: the next flush has it.
        setup_spi(&g, 40, 1, 0x80);
        assert!(g.set_line(0, 40, true).contains(1));
        g.flush(1, &mut c, 4);
        assert_eq!(lrs(&c).iter().map(|&lr| vintid(model, lr)).collect::<Vec<_>>(), [40], "{model:?}");
        // The guest takes and finishes it; the line drops.
        g.set_line(0, 40, false);
        c.lr[0] = with_state(model, c.lr[0], 0);
        g.sync(1, &mut c);
        g.flush(1, &mut c, 4);
        assert_eq!(c.used_lrs, 0, "{model:?}: nothing left");
        // Idle again; then an SGI from vCPU 0.
        match model {
            Model::V3 => {
                g.sgi_write(0, (3 << 24) | (1 << 1), 1);
            }
            Model::V2 => {
                g.dist_write(0, 0xf00, 4, (0b10 << 16) | 3);
            }
        }
        g.flush(1, &mut c, 4);
        assert_eq!(lrs(&c).iter().map(|&lr| vintid(model, lr)).collect::<Vec<_>>(), [3], "{model:?}: the SGI");
    }
}
