//! Register conformance: the reset value, the writable bits and the
//! RAZ/WI ranges of every guest-visible register the vGIC and the ITS
//! emulate, as tables checked against a freshly built vGIC or ITS.
//!
//! Sections: IHI 0069G (GICv3/v4) §12.9 distributor, §12.11 redistributor,
//! §12.19 ITS register descriptions (cited with the register's name); IHI
//! 0048B (GICv2) §4.3 distributor register descriptions.
//! Where the architecture leaves a choice, the row says whose we follow.

use super::its::tests::{mapc, mapd, Ram};
use super::its::GuestMemory;
use super::its::{
    DropReason, Its, GITS_BASER0, GITS_BASER1, GITS_CBASER, GITS_CREADR, GITS_CTLR, GITS_CWRITER, GITS_IIDR,
    GITS_PIDR2, GITS_TRANSLATER, GITS_TYPER,
};
use super::*;

/// One register, or one access width of it.
struct Reg {
    name: &'static str,
    offset: u64,
    /// Access size in bytes.
    size: u8,
    reset: u64,
    /// The bits that hold what is written; 0 for read-only and RAZ/WI.
    /// Writing all ones then all zeros must read `reset & !rw | rw`, then
    /// `reset & !rw`.
    rw: u64,
}

const fn reg(name: &'static str, offset: u64, size: u8, reset: u64, rw: u64) -> Reg {
    Reg { name, offset, size, reset, rw }
}

/// RAZ/WI: reserved, or not implemented in this configuration.
const fn raz(name: &'static str, offset: u64, size: u8) -> Reg {
    Reg { name, offset, size, reset: 0, rw: 0 }
}

fn ones(size: u8) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

/// Checks each row through `read` and `write` (offset, size[, value]).
fn check(rows: &[Reg], read: &dyn Fn(u64, u8) -> u64, write: &dyn Fn(u64, u8, u64)) {
    for r in rows {
        assert_eq!(read(r.offset, r.size), r.reset, "{} ({:#x}/{}) reset", r.name, r.offset, r.size);
        write(r.offset, r.size, ones(r.size));
        let set = (r.reset & !r.rw) | r.rw;
        assert_eq!(read(r.offset, r.size), set, "{} ({:#x}/{}) after writing ones", r.name, r.offset, r.size);
        write(r.offset, r.size, 0);
        let clear = r.reset & !r.rw;
        assert_eq!(read(r.offset, r.size), clear, "{} ({:#x}/{}) after writing zeros", r.name, r.offset, r.size);
    }
}

fn mpidr(i: usize) -> u64 {
    (1 << 31) | i as u64
}

fn vgic(model: Model, n: usize, lpis: bool) -> Vgic {
    Vgic::new(VgicConfig {
        model,
        vcpu_mpidrs: (0..n).map(mpidr).collect(),
        nr_spis: 64,
        lpis,
        share: crate::gic::vgic::budget::Share::unlimited(),
    })
    .unwrap()
}

const PRIO: u64 = 0xf8f8_f8f8;
const CFG_EDGE: u64 = 0xaaaa_aaaa;
const IIDR: u64 = GIC_IIDR as u64;
/// `GICD_IROUTER`: Aff3 [39:32], Interrupt_Routing_Mode [31], Aff2..Aff0 [23:0].
const IROUTER_RW: u64 = 0xff_80ff_ffff;

/// GICv3 distributor, 4 vCPUs, 64 SPIs (INTIDs 32-95), no LPIs.
#[rustfmt::skip]
const V3_DIST: &[Reg] = &[
    // §12.9 GICD_CTLR: DS == 1 (one Security state) and ARE are RAO/WI; EnableGrp0/1 RW; RWP 0.
    reg("GICD_CTLR", 0x0000, 4, 0x50, 0b11),
    // §12.9 GICD_TYPER: ITLinesNumber 2 (64 SPIs), IDbits 9, A3V, RSS; SecurityExtn RAZ with DS; CPUNumber
    // 0 (no ARE == 0 support, as KVM); No1N 0 (1 of N supported), MBIS/LPIS/ESPI 0.
    reg("GICD_TYPER", 0x0004, 4, 2 | 9 << 19 | 1 << 24 | 1 << 26, 0),
    // §12.9 GICD_IIDR: our own implementer code, read-only.
    reg("GICD_IIDR", 0x0008, 4, IIDR, 0),
    // §12.9 GICD_TYPER2: no vSGIs without nASSGIcap, as QEMU.
    reg("GICD_TYPER2", 0x000c, 4, 0, 0),
    raz("GICD_STATUSR", 0x0010, 4),
    // MBIS == 0: the message-based SPI registers are reserved.
    raz("GICD_SETSPI_NSR", 0x0040, 4),
    // §12.9 GICD_IGROUPR<n>: with ARE, n = 0 is RAZ/WI (the redistributor has the SGIs and PPIs).
    raz("GICD_IGROUPR0", 0x0080, 4),
    reg("GICD_IGROUPR1", 0x0084, 4, 0xffff_ffff, 0xffff_ffff),
    // INTIDs 96-127 do not exist.
    raz("GICD_IGROUPR3", 0x008c, 4),
    raz("GICD_ISENABLER0", 0x0100, 4),
    reg("GICD_ISENABLER1", 0x0104, 4, 0, 0xffff_ffff),
    raz("GICD_ISENABLER3", 0x010c, 4),
    // §12.9 GICD_IPRIORITYR<n>: byte-accessible; 5 priority bits, as KVM; RAZ/WI for n < 8 with ARE.
    raz("GICD_IPRIORITYR0", 0x0400, 4),
    reg("GICD_IPRIORITYR8", 0x0420, 4, 0, PRIO),
    reg("GICD_IPRIORITYR8 byte 1", 0x0421, 1, 0, 0xf8),
    raz("GICD_IPRIORITYR8 halfword", 0x0420, 2),
    raz("GICD_IPRIORITYR24", 0x0460, 4),
    // §12.9 GICD_ITARGETSR<n>: RES0 with ARE.
    raz("GICD_ITARGETSR8", 0x0820, 4),
    raz("GICD_ITARGETSR8 byte", 0x0821, 1),
    // §12.9 GICD_ICFGR<n>: SGIs/PPIs RAZ/WI with ARE; bit 2F+1 (edge) writable, bit 2F RES0.
    raz("GICD_ICFGR0", 0x0c00, 4),
    raz("GICD_ICFGR1", 0x0c04, 4),
    reg("GICD_ICFGR2", 0x0c08, 4, 0, CFG_EDGE),
    raz("GICD_ICFGR6", 0x0c18, 4),
    // §12.9 GICD_IGRPMODR<n> and §12.9 GICD_NSACR<n>: RAZ/WI with DS == 1.
    raz("GICD_IGRPMODR1", 0x0d04, 4),
    raz("GICD_NSACR0", 0x0e00, 4),
    // §12.9 GICD_SGIR: reserved with ARE (the CPU interface generates SGIs).
    raz("GICD_SGIR", 0x0f00, 4),
    raz("GICD_CPENDSGIR0", 0x0f10, 4),
    // §12.9 GICD_IROUTER<n>: 64-bit, or two 32-bit halves; n < 32 reserved.
    raz("GICD_IROUTER0", 0x6000, 8),
    reg("GICD_IROUTER32", 0x6100, 8, 0, IROUTER_RW),
    reg("GICD_IROUTER32 low", 0x6100, 4, 0, IROUTER_RW & 0xffff_ffff),
    reg("GICD_IROUTER32 high", 0x6104, 4, 0, IROUTER_RW >> 32),
    raz("GICD_IROUTER96", 0x6300, 8),
    // §12.9 GICD_PIDR2: ArchRev 3; the other ID registers are IMPLEMENTATION DEFINED (RAZ here).
    reg("GICD_PIDR2", 0xffe8, 4, 0x30, 0),
    raz("beyond the frame", 0x1_0000, 4),
];

/// `GICR_TYPER` of vCPU `i` of `n`: Affinity_Value [63:32] (Aff0 = i),
/// Processor_Number [23:8], Last [4], PLPIS [0].
fn gicr_typer(i: usize, n: usize, lpis: bool) -> u64 {
    (i as u64) << 32 | (i as u64) << 8 | u64::from(i + 1 == n) << 4 | u64::from(lpis)
}

/// GICv3 redistributor `i` of `n` (RD frame at `i * 0x2_0000`, SGI frame 64 KiB later).
fn v3_redist(i: usize, n: usize, lpis: bool) -> alloc::vec::Vec<Reg> {
    let rd = i as u64 * REDIST_STRIDE;
    let sgi = rd + 0x1_0000;
    let typer = gicr_typer(i, n, lpis);
    let (prop_rw, pend_rw) = if lpis { (state::PROPBASER_MASK, state::PENDBASER_MASK) } else { (0, 0) };
    alloc::vec![
        // §12.11 GICR_IIDR.
        reg("GICR_IIDR", rd + 0x4, 4, IIDR, 0),
        // §12.11 GICR_TYPER: read-only; Last on the last redistributor; VLPIS, DirectLPI 0.
        reg("GICR_TYPER", rd + 0x8, 8, typer, 0),
        reg("GICR_TYPER low", rd + 0x8, 4, typer & 0xffff_ffff, 0),
        reg("GICR_TYPER high", rd + 0xc, 4, typer >> 32, 0),
        raz("GICR_STATUSR", rd + 0x10, 4),
        // §12.11 GICR_WAKER: ProcessorSleep resets to 1 (as QEMU) and ChildrenAsleep follows it.
        reg("GICR_WAKER", rd + 0x14, 4, 0b110, 0b110),
        // §12.11 GICR_PROPBASER, §12.11 GICR_PENDBASER (PTZ is write-only): RAZ/WI without LPIs.
        reg("GICR_PROPBASER", rd + 0x70, 8, 0, prop_rw),
        reg("GICR_PENDBASER", rd + 0x78, 8, 0, pend_rw),
        // DirectLPI == 0: GICR_SETLPIR/CLRLPIR/INVLPIR/INVALLR/SYNCR are reserved.
        raz("GICR_SETLPIR", rd + 0x40, 8),
        raz("GICR_INVALLR", rd + 0xb0, 8),
        reg("GICR_PIDR2", rd + 0xffe8, 4, 0x30, 0),
        // SGI frame: §12.11 GICR_IGROUPR0 (group 1 at reset: a Non-secure guest, as KVM).
        reg("GICR_IGROUPR0", sgi + 0x80, 4, 0xffff_ffff, 0xffff_ffff),
        // §12.11 GICR_ISENABLER0: SGIs reset enabled (as KVM).
        reg("GICR_ISENABLER0", sgi + 0x100, 4, 0xffff, 0),
        raz("GICR_ISENABLER1", sgi + 0x104, 4),
        reg("GICR_IPRIORITYR0", sgi + 0x400, 4, 0, PRIO),
        reg("GICR_IPRIORITYR7 byte 3", sgi + 0x41f, 1, 0, 0xf8),
        raz("GICR_IPRIORITYR8", sgi + 0x420, 4),
        // §12.11 GICR_ICFGR0: SGIs, always edge, read-only. GICR_ICFGR1: PPIs, configurable.
        reg("GICR_ICFGR0", sgi + 0xc00, 4, CFG_EDGE, 0),
        reg("GICR_ICFGR1", sgi + 0xc04, 4, 0, CFG_EDGE),
        raz("GICR_IGRPMODR0", sgi + 0xd00, 4),
        raz("GICR_NSACR", sgi + 0xe00, 4),
    ]
}

#[test]
fn gicv3_distributor_registers() {
    let g = vgic(Model::V3, 4, false);
    check(V3_DIST, &|o, s| g.dist_read(0, o, s), &|o, s, v| {
        // GICD_ISENABLER1 is set/clear: its "zeros" go through GICD_ICENABLER1.
        if o == 0x104 && v == 0 {
            g.dist_write(0, 0x184, 4, 0xffff_ffff);
        }
        g.dist_write(0, o, s, v);
    });
    // With LPIs: IDbits 15 (16 INTID bits) and LPIS.
    let g = vgic(Model::V3, 4, true);
    assert_eq!(g.dist_read(0, 0x4, 4), 2 | 15 << 19 | 1 << 17 | 1 << 24 | 1 << 26);
}

#[test]
fn gicv3_redistributor_registers() {
    for lpis in [false, true] {
        let g = vgic(Model::V3, 3, lpis);
        for i in 0..3 {
            let rd = i as u64 * REDIST_STRIDE;
            // §12.11 GICR_CTLR: 0 at reset; EnableLPIs (LPIs only) is one-way (lpi_tests.rs), RAZ/WI without.
            assert_eq!(g.redist_read(0, rd, 4), 0, "GICR_CTLR reset");
            // Set/clear registers keep their own semantics (tests.rs): only their reset is checked here.
            let rows = v3_redist(i, 3, lpis);
            let (reset_only, rows): (alloc::vec::Vec<Reg>, alloc::vec::Vec<Reg>) =
                rows.into_iter().partition(|r| r.name == "GICR_ISENABLER0");
            check(&rows, &|o, s| g.redist_read(0, o, s), &|o, s, v| {
                g.redist_write(0, o, s, v);
            });
            for r in reset_only {
                assert_eq!(g.redist_read(0, r.offset, r.size), r.reset, "{} reset", r.name);
            }
            if !lpis {
                g.redist_write(0, rd, 4, 1);
                assert_eq!(g.redist_read(0, rd, 4), 0, "GICR_CTLR.EnableLPIs RAZ/WI without LPIs");
            }
        }
        // Past the last redistributor: RAZ/WI.
        let past = 3 * REDIST_STRIDE;
        g.redist_write(0, past + 0x1_0080, 4, 0xffff_ffff);
        assert_eq!(g.redist_read(0, past + 0x8, 8), 0);
        assert_eq!(g.redist_read(0, past + 0x1_0080, 4), 0);
    }
}

/// GICv2 distributor, 3 vCPUs, 64 SPIs; reads by vCPU 0.
#[rustfmt::skip]
const V2_DIST: &[Reg] = &[
    // §4.3.1 GICD_CTLR (no Security Extensions): EnableGrp0 [0], EnableGrp1 [1].
    reg("GICD_CTLR", 0x000, 4, 0, 0b11),
    // §4.3.2 GICD_TYPER: ITLinesNumber 2, CPUNumber 2 (3 CPU interfaces), SecurityExtn 0, LSPI 0.
    reg("GICD_TYPER", 0x004, 4, 2 | 2 << 5, 0),
    // §4.3.3 GICD_IIDR.
    reg("GICD_IIDR", 0x008, 4, IIDR, 0),
    // §4.3.4 GICD_IGROUPR<n>: group 0 at reset without Security Extensions; bank 0 per CPU.
    reg("GICD_IGROUPR0", 0x080, 4, 0, 0xffff_ffff),
    reg("GICD_IGROUPR1", 0x084, 4, 0, 0xffff_ffff),
    raz("GICD_IGROUPR3", 0x08c, 4),
    // §4.3.11 GICD_IPRIORITYR<n>: byte-accessible, SGIs and PPIs banked.
    reg("GICD_IPRIORITYR0", 0x400, 4, 0, PRIO),
    reg("GICD_IPRIORITYR8 byte 3", 0x423, 1, 0, 0xf8),
    raz("GICD_IPRIORITYR halfword", 0x420, 2),
    // §4.3.12 GICD_ITARGETSR<n>: 0-7 read-only, the reader's own bit; SPI bytes hold existing CPUs' bits.
    reg("GICD_ITARGETSR0", 0x800, 4, 0x0101_0101, 0),
    reg("GICD_ITARGETSR8", 0x820, 4, 0, 0x0707_0707),
    reg("GICD_ITARGETSR8 byte 1", 0x821, 1, 0, 0x07),
    raz("GICD_ITARGETSR24", 0x860, 4),
    // §4.3.13 GICD_ICFGR<n>: SGIs read-only edge; PPIs and SPIs: the edge bit of each field.
    reg("GICD_ICFGR0", 0xc00, 4, CFG_EDGE, 0),
    reg("GICD_ICFGR1", 0xc04, 4, 0, CFG_EDGE),
    reg("GICD_ICFGR2", 0xc08, 4, 0, CFG_EDGE),
    // §4.3.14 GICD_NSACR<n>: RAZ/WI without Security Extensions.
    raz("GICD_NSACR0", 0xe00, 4),
    // §4.3.15 GICD_SGIR: write-only (ones: TargetListFilter 0b11 is reserved, raises nothing).
    raz("GICD_SGIR", 0xf00, 4),
    // §4.3.16/17 GICD_CPENDSGIR/SPENDSGIR: byte-accessible (source bits checked in tests.rs).
    raz("GICD_CPENDSGIR halfword", 0xf10, 2),
    // §4.3 Identification registers: ICPIDR2.ArchRev 2.
    reg("GICD_ICPIDR2", 0xfe8, 4, 0x20, 0),
    // A 4 KiB frame.
    raz("GICv3's GICD_PIDR2 offset", 0xffe8, 4),
    raz("GICD_IROUTER32 (GICv3 only)", 0x6100, 8),
];

#[test]
fn gicv2_distributor_registers() {
    let g = vgic(Model::V2, 3, false);
    check(V2_DIST, &|o, s| g.dist_read(0, o, s), &|o, s, v| {
        g.dist_write(0, o, s, v);
    });
    assert_eq!(g.dist_read(2, 0x800, 4), 0x0404_0404, "ITARGETSR0-7 read as each CPU's own bit");
    assert!(g.dist_write(0, 0xf00, 4, u64::from(u32::MAX)).is_empty(), "reserved SGIR filter raises nothing");
}

/// IHI 0048B §4.3.12: in a uniprocessor implementation every interrupt
/// targets the one processor and GICD_ITARGETSR<n> are RAZ/WI (QEMU too).
#[test]
fn gicv2_uniprocessor_targets_are_raz_wi() {
    let g = vgic(Model::V2, 1, false);
    check(
        &[raz("GICD_ITARGETSR0", 0x800, 4), raz("GICD_ITARGETSR8", 0x820, 4), raz("GICD_ITARGETSR8 byte", 0x822, 1)],
        &|o, s| g.dist_read(0, o, s),
        &|o, s, v| {
            g.dist_write(0, o, s, v);
        },
    );
    assert_eq!(g.dist_read(0, 0x4, 4), 2, "CPUNumber 0");
    // The SPI still reaches the one vCPU.
    g.dist_write(0, 0x0, 4, 0b11);
    g.dist_write(0, 0x104, 4, 1 << 8);
    assert_eq!(g.dist_write(0, 0x204, 4, 1 << 8), Kicks(1));
}

// ---- ITS ----

const RAM: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 0x2_0000;
const QUEUE: u64 = RAM;
const LEVEL1: u64 = RAM + 0x1_0000;
const VALID: u64 = 1 << 63;
const INDIRECT: u64 = 1 << 62;
/// `GITS_BASER as u64<n>.Page_Size` encodings (IHI 0069 §12.19 GITS_BASER as u64<n>): 4, 16, 64 KiB, reserved.
const PAGE_4K: u64 = 0 << 8;
const PAGE_16K: u64 = 1 << 8;
const PAGE_64K: u64 = 2 << 8;
const PAGE_RESERVED: u64 = 3 << 8;
const BASER_DEVICES_RO: u64 = 1 << 56 | 7 << 48;
const BASER_COLLECTIONS_RO: u64 = 4 << 56 | 7 << 48;
/// Valid, InnerCache, OuterCache, Physical_Address [47:12], Shareability, Size.
const BASER_RW: u64 = VALID | 7 << 59 | 7 << 53 | 0xffff_ffff_f000 | 3 << 10 | 0xff;

/// The ITS of a 4-vCPU VM with 16 LPI INTID bits, and its guest RAM.
fn its() -> (Its, Ram) {
    (Its::new(4, 16).unwrap(), Ram::at(RAM, RAM_SIZE))
}

/// GITS_TYPER as u64: Physical, ITT_entry_size 8 bytes, IDbits 16, Devbits 16,
/// CIDbits 8 with CIL; PTA 0 (vCPU numbers, as KVM and QEMU), HCC 0, no
/// GICv4, SEIS 0, CCT 0.
const GITS_TYPER_VALUE: u64 = 1 | 7 << 4 | 15 << 8 | 15 << 13 | 7 << 32 | 1 << 36;

#[rustfmt::skip]
const ITS_REGS: &[Reg] = &[
    // §12.19 GITS_IIDR as u64.
    reg("GITS_IIDR", GITS_IIDR as u64, 4, IIDR, 0),
    // §12.19 GITS_TYPER as u64: read-only, 64-bit or halves.
    reg("GITS_TYPER", GITS_TYPER as u64, 8, GITS_TYPER_VALUE, 0),
    reg("GITS_TYPER high", GITS_TYPER as u64 + 4, 4, GITS_TYPER_VALUE >> 32, 0),
    // §12.19 GITS_CBASER as u64: reset 0 as QEMU (UNKNOWN in the architecture); Valid, caches, PA [51:12],
    // Shareability, Size writable while disabled.
    reg("GITS_CBASER", GITS_CBASER as u64, 8, 0, VALID | 7 << 59 | 7 << 53 | 0xf_ffff_ffff_f000 | 3 << 10 | 0xff),
    // §12.19 GITS_CWRITER as u64: Offset [19:5]; Retry [0] is write-only.
    reg("GITS_CWRITER", GITS_CWRITER as u64, 8, 0, 0xf_ffe0),
    // §12.19 GITS_CREADR as u64: read-only.
    reg("GITS_CREADR", GITS_CREADR as u64, 8, 0, 0),
    // §12.19 GITS_BASER as u64<n>: only 0 (devices) and 1 (collections) are implemented (Type 0 elsewhere).
    raz("GITS_BASER2", GITS_BASER0 as u64 + 16, 8),
    raz("GITS_BASER7", GITS_BASER0 as u64 + 56, 8),
    // GITS_MPAMIDR as u64, GITS_PARTIDR as u64, GITS_MPIDR as u64, GITS_STATUSR as u64, GITS_UMSIR as u64: not implemented.
    raz("GITS_MPAMIDR", 0x0010, 4),
    raz("GITS_STATUSR", 0x0040, 4),
    // The translation frame holds GITS_TRANSLATER as u64 only.
    raz("translation frame", 0x1_0000, 4),
    reg("GITS_PIDR2", GITS_PIDR2 as u64, 4, 0x30, 0),
    // §12.19 GITS_TRANSLATER as u64: write-only; reads are RAZ.
    raz("GITS_TRANSLATER", GITS_TRANSLATER as u64, 4),
    raz("GITS_TRANSLATER halfword", GITS_TRANSLATER as u64, 2),
];

#[test]
fn its_registers() {
    let (its, ram) = its();
    // §12.19 GITS_CTLR as u64: disabled and Quiescent at reset. Writing Enabled would start it: checked below.
    assert_eq!(its.mmio_read(GITS_CTLR as u64, 4), 1 << 31);
    let its = core::cell::RefCell::new(its);
    check(ITS_REGS, &|o, s| its.borrow().mmio_read(o, s), &|o, s, v| {
        assert!(its.borrow_mut().mmio_write(&ram, o, s, v).is_empty(), "{o:#x}: nothing to do while disabled");
    });
    let mut its = its.into_inner();
    // GITS_CTLR as u64.Quiescent: clear while enabled (as QEMU), set again once disabled.
    its.mmio_write(&ram, GITS_CTLR as u64, 4, 1);
    assert_eq!(its.mmio_read(GITS_CTLR as u64, 4), 1);
    its.mmio_write(&ram, GITS_CTLR as u64, 4, 0);
    assert_eq!(its.mmio_read(GITS_CTLR as u64, 4), 1 << 31);
}

#[test]
fn its_baser_reset_and_writable_bits() {
    let (mut its, ram) = its();
    // Page_Size resets to 64 KiB, as QEMU's and KVM's ITS (IHI 0069 leaves it IMPLEMENTATION DEFINED).
    assert_eq!(its.mmio_read(GITS_BASER0 as u64, 8), BASER_DEVICES_RO | PAGE_64K);
    assert_eq!(its.mmio_read(GITS_BASER1 as u64, 8), BASER_COLLECTIONS_RO | PAGE_64K);
    // Type and Entry_Size are read-only; the device table may be Indirect, the collection table not (as KVM).
    its.mmio_write(&ram, GITS_BASER0 as u64, 8, !(BASER_DEVICES_RO | PAGE_RESERVED));
    assert_eq!(its.mmio_read(GITS_BASER0 as u64, 8), BASER_RW | INDIRECT | BASER_DEVICES_RO);
    its.mmio_write(&ram, GITS_BASER1 as u64, 8, u64::MAX);
    assert_eq!(its.mmio_read(GITS_BASER1 as u64, 8), BASER_RW | BASER_COLLECTIONS_RO | PAGE_64K);
    its.mmio_write(&ram, GITS_BASER1 as u64, 8, 0);
    assert_eq!(its.mmio_read(GITS_BASER1 as u64, 8), BASER_COLLECTIONS_RO);
    // Halves.
    its.mmio_write(&ram, GITS_BASER1 as u64 + 4, 4, 0x8000_0000);
    its.mmio_write(&ram, GITS_BASER1 as u64, 4, 0x1000 | PAGE_16K | 3);
    assert_eq!(its.mmio_read(GITS_BASER1 as u64, 8), VALID | BASER_COLLECTIONS_RO | 0x1000 | PAGE_16K | 3);
    assert_eq!(its.mmio_read(GITS_BASER1 as u64 + 4, 4), (VALID | BASER_COLLECTIONS_RO) >> 32);
    // Frozen while enabled (IMPLEMENTATION DEFINED; QEMU and KVM alike).
    its.mmio_write(&ram, GITS_CTLR as u64, 4, 1);
    its.mmio_write(&ram, GITS_BASER1 as u64, 8, 0);
    assert_eq!(its.mmio_read(GITS_BASER1 as u64, 8), VALID | BASER_COLLECTIONS_RO | 0x1000 | PAGE_16K | 3);
}

#[test]
fn its_baser_page_size_reads_back_what_was_written() {
    for (baser, ro) in [(GITS_BASER0 as u64, BASER_DEVICES_RO), (GITS_BASER1 as u64, BASER_COLLECTIONS_RO)] {
        let (mut its, ram) = its();
        for page in [PAGE_4K, PAGE_16K, PAGE_64K] {
            its.mmio_write(&ram, baser, 8, VALID | 0x5_0000 | page);
            assert_eq!(its.mmio_read(baser, 8), VALID | ro | 0x5_0000 | page, "{baser:#x} page {page:#x}");
        }
        // IHI 0069 GITS_BASER as u64<n>.Page_Size: 0b11 is reserved and treated as 0b10 (64 KiB); it reads back as
        // that (KVM: every write reads back 64 KiB; QEMU keeps 0b11 and uses 64 KiB).
        its.mmio_write(&ram, baser, 8, VALID | 0x5_0000 | PAGE_RESERVED);
        assert_eq!(its.mmio_read(baser, 8), VALID | ro | 0x5_0000 | PAGE_64K);
    }
}

/// Writes `cmds` to the queue at `QUEUE` from `GITS_CWRITER as u64` on and runs them.
fn run(its: &mut Its, ram: &Ram, cmds: &[[u64; 4]]) {
    let mut w = its.mmio_read(GITS_CWRITER as u64, 8);
    for cmd in cmds {
        for (i, word) in cmd.iter().enumerate() {
            ram.write(QUEUE + w + 8 * i as u64, &word.to_le_bytes()).unwrap();
        }
        w = (w + 32) % 0x1000;
    }
    its.mmio_write(ram, GITS_CWRITER as u64, 8, w);
}

/// An enabled ITS whose device table is `device_baser`, with a 4 KiB queue.
fn its_with_devices(device_baser: u64) -> (Its, Ram) {
    let (mut its, ram) = its();
    its.mmio_write(&ram, GITS_CBASER as u64, 8, VALID | QUEUE);
    its.mmio_write(&ram, GITS_BASER0 as u64, 8, device_baser);
    its.mmio_write(&ram, GITS_BASER1 as u64, 8, VALID | 0x7000_0000 | PAGE_64K);
    its.mmio_write(&ram, GITS_CTLR as u64, 4, 1);
    (its, ram)
}

/// A flat device table of Size + 1 pages of the chosen page size holds
/// (Size + 1) * page / 8 entries; the table memory itself (here past guest
/// RAM) is never touched.
#[test]
fn its_flat_table_is_sized_in_the_chosen_page_size() {
    for (page, bytes) in [(PAGE_4K, 0x1000u64), (PAGE_16K, 0x4000), (PAGE_64K, 0x1_0000)] {
        for pages in [1u64, 2] {
            let entries = pages * bytes / 8;
            let (mut its, ram) = its_with_devices(VALID | 0x8000_0000 | page | (pages - 1));
            run(&mut its, &ram, &[mapd(entries as u32 - 1, 3, 0, true), mapd(entries as u32, 3, 0, true)]);
            assert_eq!(its.drops(DropReason::DeviceOutOfRange), 1, "page {bytes:#x} x {pages}: {entries} entries");
            assert_eq!(its.drops(DropReason::TableFull), 0);
        }
    }
    // Past Devbits (16): a large table still holds only 65536 DeviceIDs.
    let (mut its, ram) = its_with_devices(VALID | 0x8000_0000 | PAGE_64K | 0xff);
    run(&mut its, &ram, &[mapd(0xffff, 3, 0, true), mapd(0x1_0000, 3, 0, true)]);
    assert_eq!(its.drops(DropReason::DeviceOutOfRange), 1);
    // Collections: 256 ICIDs (CIDbits) whatever the table.
    run(&mut its, &ram, &[mapc(255, 0, true), mapc(256, 0, true)]);
    assert_eq!(its.drops(DropReason::BadCollection), 1);
}

/// An indirect device table: (Size + 1) pages of level-1 entries, each
/// covering page / 8 DeviceIDs (IHI 0069 GITS_BASER as u64<n>.Indirect); a MAPD
/// needs its DeviceID's level-1 entry Valid (bit 63) in guest memory.
#[test]
fn its_indirect_device_table() {
    for (page, bytes) in [(PAGE_4K, 0x1000u64), (PAGE_16K, 0x4000), (PAGE_64K, 0x1_0000)] {
        let per_l2 = (bytes / 8) as u32;
        let (mut its, ram) = its_with_devices(VALID | INDIRECT | LEVEL1 | page);
        assert_eq!(its.mmio_read(GITS_BASER0 as u64, 8) & INDIRECT, INDIRECT);
        // Level-1 entry 1 valid (pointing at some page), entry 0 not.
        ram.write(LEVEL1 + 8, &(VALID | 0x9000_0000).to_le_bytes()).unwrap();
        run(&mut its, &ram, &[mapd(0, 3, 0, true), mapd(per_l2, 3, 0, true), mapd(2 * per_l2 - 1, 3, 0, true)]);
        assert_eq!(its.drops(DropReason::NoLevel2Table), 1, "page {bytes:#x}");
        // Unmapping needs no level-2 table.
        run(&mut its, &ram, &[mapd(0, 3, 0, false)]);
        assert_eq!(its.drops(DropReason::NoLevel2Table), 1);
        // Once the guest makes entry 0 valid, DeviceID 0 maps.
        ram.write(LEVEL1, &(VALID | 0x9001_0000).to_le_bytes()).unwrap();
        run(&mut its, &ram, &[mapd(0, 3, 0, true)]);
        assert_eq!(its.drops(DropReason::NoLevel2Table), 1);
        assert_eq!(its.drops(DropReason::DeviceOutOfRange), 0);
    }
    // 64 KiB pages: Physical_Address [15:12] are PA[51:48]; a level-1 table there is outside RAM.
    let (mut its, ram) = its_with_devices(VALID | INDIRECT | LEVEL1 | 0xf000 | PAGE_64K);
    run(&mut its, &ram, &[mapd(0, 3, 0, true)]);
    assert_eq!(its.drops(DropReason::NoLevel2Table), 1);
    // A level-1 table past guest RAM: every MAPD is dropped, nothing stalls, nothing panics.
    let (mut its, ram) = its_with_devices(VALID | INDIRECT | 0xffff_ffff_0000 | PAGE_64K | 0xff);
    run(&mut its, &ram, &[mapd(0xffff, 3, 0, true), mapd(0, 3, 0, true)]);
    assert_eq!(its.drops(DropReason::NoLevel2Table), 2);
    assert_eq!(its.mmio_read(GITS_CREADR as u64, 8), 64, "the queue went on");
}

/// Rows whose bits are not independent of each other, or that set and
/// clear: their behaviour is checked by name above and in tests.rs.
fn value_independent(r: &Reg) -> bool {
    // GICR_WAKER.ChildrenAsleep follows ProcessorSleep; GICD_ISENABLER<n> is write-1-to-set.
    !matches!(r.name, "GICR_WAKER" | "GICD_ISENABLER1")
}

/// After a write of any value, each register reads back its read-only bits
/// as at reset and its writable bits as written: `reset & !rw | value & rw`.
fn check_value(rows: &[Reg], values: &[u64], read: &dyn Fn(u64, u8) -> u64, write: &dyn Fn(u64, u8, u64)) {
    for (i, r) in rows.iter().filter(|r| value_independent(r)).enumerate() {
        let v = values[i % values.len()] & ones(r.size);
        write(r.offset, r.size, v);
        let want = (r.reset & !r.rw) | (v & r.rw);
        assert_eq!(read(r.offset, r.size), want, "{} ({:#x}/{}) after writing {v:#x}", r.name, r.offset, r.size);
    }
}

mod random {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::fuzz::config(256))]

        /// The tables above with any values instead of all ones and all
        /// zeros: every writable bit holds what was written, independently
        /// of the others, and no read-only bit moves (the sections per row).
        #[test]
        fn registers_keep_their_writable_bits_for_any_value(values in prop::collection::vec(any::<u64>(), 16)) {
            let g = vgic(Model::V3, 4, false);
            check_value(V3_DIST, &values, &|o, s| g.dist_read(0, o, s), &|o, s, v| {
                g.dist_write(0, o, s, v);
            });
            for lpis in [false, true] {
                let g = vgic(Model::V3, 3, lpis);
                for i in 0..3 {
                    let rows: alloc::vec::Vec<Reg> =
                        v3_redist(i, 3, lpis).into_iter().filter(|r| r.name != "GICR_ISENABLER0").collect();
                    check_value(&rows, &values, &|o, s| g.redist_read(0, o, s), &|o, s, v| {
                        g.redist_write(0, o, s, v);
                    });
                }
            }
            let g = vgic(Model::V2, 3, false);
            check_value(V2_DIST, &values, &|o, s| g.dist_read(0, o, s), &|o, s, v| {
                g.dist_write(0, o, s, v);
            });
            let (its, ram) = its();
            let its = core::cell::RefCell::new(its);
            check_value(ITS_REGS, &values, &|o, s| its.borrow().mmio_read(o, s), &|o, s, v| {
                assert!(its.borrow_mut().mmio_write(&ram, o, s, v).is_empty(), "{o:#x}: nothing to do while disabled");
            });
        }

        /// §12.19 GITS_BASER<n>: Type and Entry_Size read-only, Indirect
        /// writable for the device table only, Page_Size 0b11 (reserved)
        /// read back as the 64 KiB it is treated as; whole or by halves.
        #[test]
        fn its_baser_keeps_its_writable_bits_for_any_value(v: u64, halves: bool) {
            for (baser, ro, rw) in [
                (GITS_BASER0 as u64, BASER_DEVICES_RO, BASER_RW | INDIRECT | PAGE_RESERVED),
                (GITS_BASER1 as u64, BASER_COLLECTIONS_RO, BASER_RW | PAGE_RESERVED),
            ] {
                let (mut its, ram) = its();
                if halves {
                    its.mmio_write(&ram, baser, 4, v & 0xffff_ffff);
                    its.mmio_write(&ram, baser + 4, 4, v >> 32);
                } else {
                    its.mmio_write(&ram, baser, 8, v);
                }
                let mut want = ro | (v & rw);
                if want & PAGE_RESERVED == PAGE_RESERVED {
                    want = (want & !PAGE_RESERVED) | PAGE_64K;
                }
                prop_assert_eq!(its.mmio_read(baser, 8), want, "{:#x} after {:#x}", baser, v);
            }
        }
    }
}
