//! A guest's whole MMIO map under fire: the bus [`guest_bus`] builds for a
//! VM, with the real UART, virtio transports, vGIC frames and ITS, driven by
//! random stage-2 data aborts through `vcpu::mmio::dispatch`, the path every
//! guest access to a device takes.

use super::*;
use crate::gic::vgic::its::{Effect, GuestMemory};
use crate::gic::vgic::{Kicks, Model, VgicConfig, LPI_ID_BITS};
use crate::vcpu::mmio::{self, Dispatch};
use crate::vm::stats::VmStats;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ferrovisor_shared::esr::Esr;
use ferrovisor_shared::vcpu::{ConstRegs, ExitInfo, VcpuContext, VgicCpuState};
use proptest::prelude::*;

const RAM_SIZE: u64 = 0x4_0000;

/// A VM as its devices see it: a vGIC, 256 KiB of RAM at `map::RAM` for the
/// ITS's queue and the LPI tables, and its console lines.
struct FakeVm {
    vgic: Vgic,
    ram: RefCell<Vec<u8>>,
    lines: RefCell<Vec<String>>,
}

impl DeviceHost for FakeVm {
    fn vgic(&self) -> &Vgic {
        &self.vgic
    }

    fn console_line(&self, text: &str) {
        self.lines.borrow_mut().push(text.into());
    }
}

impl FakeVm {
    fn range(&self, ipa: u64, len: usize) -> Result<core::ops::Range<usize>, ()> {
        let start = ipa.checked_sub(map::RAM).ok_or(())?;
        let end = start.checked_add(len as u64).filter(|&e| e <= RAM_SIZE).ok_or(())?;
        Ok(start as usize..end as usize)
    }
}

impl GuestMemory for FakeVm {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let r = self.range(ipa, buf.len())?;
        buf.copy_from_slice(&self.ram.borrow()[r]);
        Ok(())
    }

    fn write(&self, ipa: u64, buf: &[u8]) -> Result<(), ()> {
        let r = self.range(ipa, buf.len())?;
        self.ram.borrow_mut()[r].copy_from_slice(buf);
        Ok(())
    }
}

impl LpiHost for FakeVm {
    type Memory = FakeVm;

    fn guest_memory(&self) -> &FakeVm {
        self
    }

    fn apply_lpi_effects(&self, effects: &[Effect]) -> Kicks {
        self.vgic.apply_its(self, effects)
    }

    fn share_spent(&self, _refused: u64, _entries: usize) {}
}

/// The ranges of QEMU virt's map (docs/guests.md §1) a VM with `vcpus`
/// vCPUs, this GIC and (GICv3) an ITS has on its bus.
fn ranges(vcpus: u32, gicv3: bool) -> Vec<(u64, u64)> {
    let mut r = alloc::vec![
        (map::UART, map::UART_SIZE),
        (map::VIRTIO, map::VIRTIO_STRIDE * map::VIRTIO_COUNT),
        (map::GIC_DIST, map::GIC_DIST_SIZE),
    ];
    if gicv3 {
        r.push((map::GIC_REDIST, map::GIC_REDIST_STRIDE * u64::from(vcpus)));
        r.push((map::GIC_ITS, map::GIC_ITS_SIZE));
    }
    r
}

#[derive(Clone, Debug)]
struct Access {
    /// The faulting IPA's page (`HPFAR_EL2`, FIPA in bits [43:4]) and
    /// `FAR_EL2` (its low 12 bits are the IPA's).
    hpfar: u64,
    far: u64,
    /// ESR_EL2.ISS of a data abort from a lower EL.
    iss: u64,
    vcpu: usize,
    x: [u64; 31],
}

/// Near every frame of the map (and RAM and the GICv2 CPU interface, which
/// no device takes), or anywhere.
fn ipa() -> impl Strategy<Value = u64> {
    let frame = prop::sample::select(
        &[
            map::UART,
            map::VIRTIO,
            map::GIC_DIST,
            map::GIC_CPU,
            map::GIC_ITS,
            map::GIC_ITS + 0x1_0000,
            map::GIC_REDIST,
            map::GIC_REDIST + 0x1_0000,
            map::GIC_REDIST + map::GIC_REDIST_STRIDE + 0x1_0000,
            map::GIC_REDIST + 4 * map::GIC_REDIST_STRIDE,
            map::RAM,
        ][..],
    );
    prop_oneof![
        10 => (frame.clone(), 0u64..0x200).prop_map(|(base, off)| base + (off & !3)),
        2 => (frame, 0u64..0x1_0000).prop_map(|(base, off)| base + off),
        1 => 0x0800_0000u64..0x0b00_0000,
        1 => any::<u64>(),
    ]
}

/// ISS: mostly ISV = 1 with any SAS/SSE/SRT/SF/WnR; sometimes anything.
fn iss() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u64..4, any::<bool>(), 0u64..32, any::<bool>(), any::<bool>()).prop_map(|(sas, sse, srt, sf, wnr)| {
            1 << 24 | sas << 22 | u64::from(sse) << 21 | srt << 16 | u64::from(sf) << 15 | u64::from(wnr) << 6
        }),
        1 => 0u64..1 << 25,
    ]
}

/// Register values: small ones, which enable and route things, command
/// queue and table addresses in RAM, and anything.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0u64..4,
        1 => Just(u64::MAX),
        1 => (0u64..RAM_SIZE / 0x1000).prop_map(|p| 1 << 63 | (map::RAM + p * 0x1000)),
        1 => (0u64..0x1000).prop_map(|w| w << 5),
        3 => any::<u64>(),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    (
        prop_oneof![8 => ipa().prop_map(|ipa| ((ipa >> 12) << 4, ipa)), 1 => (any::<u64>(), any::<u64>())],
        iss(),
        prop_oneof![4 => 0usize..4, 1 => any::<usize>()],
        value(),
        any::<[u64; 31]>(),
    )
        .prop_map(|((hpfar, far), iss, vcpu, v, mut x)| {
            // The register the access names holds an interesting value.
            x[((iss >> 16) & 0x1f).min(30) as usize] = v;
            Access { hpfar, far, iss, vcpu, x }
        })
}

const PC: u64 = 0x4008_0000;
const VBAR: u64 = 0x4009_0000;
/// EL1h, DAIF masked.
const PSTATE: u64 = 0x3c5;

proptest! {
    #![proptest_config(crate::fuzz::config(256))]

    /// Any data abort, on a GICv2 or a GICv3 VM with an ITS: never a panic;
    /// an access with a syndrome to a registered range is done by its
    /// device and the guest steps past it, the loaded register holding no
    /// more than the access's width (Arm ARM C6.2, LDR*: zero- or
    /// sign-extended from SAS to SF's width); any other access is a
    /// synchronous external abort at the guest's vector (D1.3), its
    /// registers untouched; exactly one exit is counted; kicks name vCPUs
    /// that exist; and every vCPU can still run afterwards.
    #[test]
    fn any_data_abort_is_emulated_or_an_external_abort(
        gicv3: bool,
        vcpus in 1u32..5,
        ram_seed: u64,
        accesses in prop::collection::vec(access(), 1..64),
    ) {
        let mpidrs = (0..u64::from(vcpus)).map(|i| 1 << 31 | i).collect();
        let model = if gicv3 { Model::V3 } else { Model::V2 };
        let vgic = Vgic::new(VgicConfig {
            model,
            vcpu_mpidrs: mpidrs,
            nr_spis: 128,
            lpis: gicv3,
            share: crate::gic::vgic::budget::Share::unlimited(),
        })
        .unwrap();
        // Random RAM: whatever the ITS reads as commands or tables.
        let mut seed = ram_seed | 1;
        let ram = (0..RAM_SIZE)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let vm = FakeVm { vgic, ram: RefCell::new(ram), lines: RefCell::default() };
        let uart = Arc::new(Uart::new());
        let its = gicv3.then(|| Arc::new(ItsFrame::new(vcpus as usize, LPI_ID_BITS, crate::gic::vgic::budget::Share::unlimited()).unwrap()));
        let bus: MmioBus<FakeVm> = guest_bus(vcpus, gicv3, &uart, its.as_ref()).unwrap();
        let ranges = ranges(vcpus, gicv3);
        let stats = VmStats::default();
        for (n, a) in accesses.into_iter().enumerate() {
            let esr = 0x24 << 26 | 1 << 25 | a.iss;
            let exit = ExitInfo { reason: 1, esr, far: a.far, hpfar: a.hpfar, acked: 0, kick: 0 };
            let mut ctx = VcpuContext { exit, ..Default::default() };
            ctx.regs.x = a.x;
            ctx.regs.pc = PC;
            ctx.regs.pstate = PSTATE;
            ctx.el1.vbar = VBAR;
            let ipa = mmio::fault_ipa(&ctx.exit);
            let syndrome = Esr(esr).data_abort();
            let on_bus = ranges.iter().any(|&(base, size)| (base..base + size).contains(&ipa));
            let d = mmio::dispatch(&bus, &vm, a.vcpu, &mut ctx, &stats);
            let counted: u64 = [ExitKind::Mmio, ExitKind::Gic, ExitKind::Abort].map(|k| stats.exits(k)).iter().sum();
            prop_assert_eq!(counted, n as u64 + 1);
            match (d, syndrome) {
                (Dispatch::Done { kicks }, Some(iss)) => {
                    prop_assert!(on_bus, "{:#x} is no device's", ipa);
                    prop_assert_eq!(kicks.0 >> vcpus, 0, "kicks for vCPUs that do not exist");
                    prop_assert_eq!(ctx.regs.pc, PC + 4);
                    let rt = usize::from(iss.register);
                    for (i, (&now, &was)) in ctx.regs.x.iter().zip(a.x.iter()).enumerate() {
                        if i != rt || iss.write {
                            prop_assert_eq!(now, was, "x{} changed", i);
                        }
                    }
                    if !iss.write && rt < 31 {
                        let v = ctx.regs.x[rt];
                        let bits = 8 * u32::from(iss.access_size);
                        let width = if iss.sixty_four { 64 } else { 32 };
                        if !iss.sign_extend && bits < 64 {
                            prop_assert_eq!(v >> bits, 0, "x{} = {:#x} after a {}-byte load", rt, v, iss.access_size);
                        }
                        if width == 32 {
                            prop_assert_eq!(v >> 32, 0, "W{} = {:#x}", rt, v);
                        }
                    }
                }
                (Dispatch::NoSyndrome { ipa: at, pc }, None) | (Dispatch::Unmapped { ipa: at, pc, .. }, Some(_)) => {
                    prop_assert!(syndrome.is_none() || !on_bus, "{:#x} is a device's", ipa);
                    prop_assert_eq!((at, pc), (ipa, PC));
                    prop_assert_eq!(ctx.regs.pc, VBAR + 0x200, "taken to the current EL's synchronous vector");
                    prop_assert_eq!((ctx.el1.elr_el1, ctx.el1.far_el1), (PC, a.far));
                    prop_assert_eq!(ctx.regs.x, a.x);
                }
                // ISS.CM without a syndrome: stepped past, nothing else changed.
                (Dispatch::CacheMaintenance { ipa: at }, None) => {
                    prop_assert!(Esr(esr).cache_maintenance());
                    prop_assert_eq!(at, ipa);
                    prop_assert_eq!(ctx.regs.pc, PC + 4);
                    prop_assert_eq!(ctx.regs.x, a.x);
                }
                (d, s) => prop_assert!(false, "{:?} for syndrome {:?}", d, s),
            }
        }
        // Whatever happened, every vCPU can still run, and the console lines are bounded.
        for v in 0..vcpus as usize {
            let mut c = VgicCpuState::default();
            vm.vgic.flush(v, &mut c, 4);
            vm.vgic.sync(v, &mut c);
        }
        prop_assert!(vm.lines.borrow().iter().all(|l| l.len() <= 3 * pl011::MAX_LINE));
    }
}

/// A VM with `vcpus` vCPUs and this GIC (`its`: GICv3 with an ITS, as on a
/// GICv4 host too: the guest sees the same frames), its bus and its
/// vCPUs' constant-register tables.
fn const_vm(model: Model, its: bool, vcpus: u32) -> (FakeVm, MmioBus<FakeVm>, Vec<ConstRegs>) {
    let gicv3 = model == Model::V3;
    let vgic = Vgic::new(VgicConfig {
        model,
        vcpu_mpidrs: (0..u64::from(vcpus)).map(|i| 1 << 31 | (i & 3) | (i >> 2) << 8).collect(),
        nr_spis: 128,
        lpis: its,
        share: crate::gic::vgic::budget::Share::unlimited(),
    })
    .unwrap();
    let vm = FakeVm { vgic, ram: RefCell::new(alloc::vec![0; RAM_SIZE as usize]), lines: RefCell::default() };
    let frame = its.then(|| {
        Arc::new(ItsFrame::new(vcpus as usize, LPI_ID_BITS, crate::gic::vgic::budget::Share::unlimited()).unwrap())
    });
    let bus = guest_bus(vcpus, gicv3, &Arc::new(Uart::new()), frame.as_ref()).unwrap();
    let tables = (0..vcpus as usize).map(|v| gic::const_regs(&vm.vgic, frame.as_deref(), v)).collect();
    (vm, bus, tables)
}

/// A load of `size` bytes into x`rt` (SSE, SF as given) at `ipa`, as a
/// stage-2 data abort the host emulates.
fn load_through_bus(bus: &MmioBus<FakeVm>, vm: &FakeVm, vcpu: usize, ipa: u64, size: u8, rt: u8, sse: bool) -> u64 {
    let sas = u64::from(size.trailing_zeros());
    let sf = size == 8 || sse;
    let iss = 1 << 24 | sas << 22 | u64::from(sse) << 21 | u64::from(rt) << 16 | u64::from(sf) << 15 | 0b111;
    let esr = 0x24 << 26 | 1 << 25 | iss;
    let mut ctx = VcpuContext {
        exit: ExitInfo { reason: 1, esr, far: ipa, hpfar: (ipa >> 12) << 4, acked: 0, kick: 0 },
        ..Default::default()
    };
    ctx.regs.x = [0x5555_5555_5555_5555; 31];
    ctx.regs.pc = PC;
    ctx.regs.pstate = PSTATE;
    let d = mmio::dispatch(bus, vm, vcpu, &mut ctx, &VmStats::default());
    assert!(matches!(d, Dispatch::Done { .. }), "{ipa:#x}: {d:?}");
    assert_eq!(ctx.regs.pc, PC + 4);
    ctx.regs.x[usize::from(rt)]
}

/// Every register of every vCPU's table reads, through the host's
/// emulation from every vCPU, as the table says (the values el2 answers
/// with, extended the way the instruction asks: Arm ARM D24.2.40 ISS.SSE,
/// ISS.SF).
fn check_tables(vm: &FakeVm, bus: &MmioBus<FakeVm>, tables: &[ConstRegs]) -> Result<(), TestCaseError> {
    for (owner, t) in tables.iter().enumerate() {
        for (ipa, size, value) in t.each() {
            prop_assert_eq!(t.lookup(ipa, size), Some(value));
            prop_assert!(t.may_hold((ipa >> 12) << 4), "{:#x} outside the table's range", ipa);
            for reader in 0..tables.len() {
                for (rt, sse) in [(2u8, false), (9, true)] {
                    let got = load_through_bus(bus, vm, reader, ipa, size, rt, sse);
                    let iss = Esr(0x24 << 26
                        | 1 << 24
                        | u64::from(size.trailing_zeros()) << 22
                        | u64::from(sse) << 21
                        | u64::from(size == 8 || sse) << 15)
                    .data_abort()
                    .unwrap();
                    prop_assert_eq!(
                        got,
                        iss.load_value(value),
                        "vCPU {}'s table, {:#x} ({} bytes) read by vCPU {}",
                        owner,
                        ipa,
                        size,
                        reader
                    );
                }
            }
        }
    }
    Ok(())
}

/// The constant GIC registers each configuration publishes (IHI 0048B
/// §4.3, IHI 0069 §12.9 and §12.11 and §12.19): the ID, type and
/// peripheral ID registers, and on GICv3 each vCPU's own `GICR_TYPER`.
#[test]
fn const_tables_hold_the_id_and_type_registers() {
    use ferrovisor_shared::gic::{GICD_IIDR, GICD_TYPER, GICR_TYPER};
    for (model, its, vcpus, entries) in
        [(Model::V2, false, 1, 3), (Model::V2, false, 8, 3), (Model::V3, false, 4, 9), (Model::V3, true, 8, 14)]
    {
        let (vm, bus, tables) = const_vm(model, its, vcpus);
        for (v, t) in tables.iter().enumerate() {
            assert_eq!(t.count, entries, "{model:?} its {its}");
            // The benchmark's register, GICD_IIDR: the vGIC's IIDR.
            assert_eq!(t.lookup(map::GIC_DIST + GICD_IIDR as u64, 4), Some(crate::gic::vgic::GIC_IIDR.into()));
            assert!(t.lookup(map::GIC_DIST + GICD_TYPER as u64, 4).is_some());
            // GICD_CTLR holds the enables: never constant.
            assert_eq!(t.lookup(map::GIC_DIST, 4), None);
            if model == Model::V3 {
                let own = map::GIC_REDIST + v as u64 * map::GIC_REDIST_STRIDE + GICR_TYPER as u64;
                let typer = t.lookup(own, 8).expect("its own GICR_TYPER");
                assert_eq!(typer >> 8 & 0xffff, v as u64, "GICR_TYPER.Processor_Number");
                assert_eq!(typer & 1 << 4 != 0, v + 1 == vcpus as usize, "GICR_TYPER.Last");
                // GICR_WAKER holds ProcessorSleep: never constant.
                assert_eq!(t.lookup(own - GICR_TYPER as u64 + 0x14, 4), None);
            }
            assert!(!t.may_hold((map::VIRTIO >> 12) << 4), "virtio-mmio is the host's");
            assert!(!t.may_hold((map::UART >> 12) << 4), "the UART is the host's");
        }
        check_tables(&vm, &bus, &tables).unwrap();
    }
}

proptest! {
    #![proptest_config(crate::fuzz::config(64))]

    /// Whatever the guest writes to its GIC frames (enables, LPIs, the ITS,
    /// redistributor sleep), the published registers keep reading as
    /// published: they are constant, so el2 may answer them.
    #[test]
    fn const_tables_stay_true_whatever_the_guest_writes(
        kind in 0usize..3,
        vcpus in 1u32..5,
        accesses in prop::collection::vec(access(), 1..96),
    ) {
        let (model, its) = [(Model::V2, false), (Model::V3, false), (Model::V3, true)][kind];
        let (vm, bus, tables) = const_vm(model, its, vcpus);
        check_tables(&vm, &bus, &tables)?;
        let stats = VmStats::default();
        for a in accesses {
            let exit = ExitInfo { reason: 1, esr: 0x24 << 26 | 1 << 25 | a.iss | 1 << 6, far: a.far, hpfar: a.hpfar, acked: 0, kick: 0 };
            let mut ctx = VcpuContext { exit, ..Default::default() };
            ctx.regs.x = a.x;
            ctx.regs.pstate = PSTATE;
            let _ = mmio::dispatch(&bus, &vm, a.vcpu % vcpus as usize, &mut ctx, &stats);
        }
        // The enables and the ITS on, whatever the random writes left.
        for v in 0..vcpus as usize {
            let _ = vm.vgic.dist_write(v, 0, 4, 0x13);
            let rd = v as u64 * map::GIC_REDIST_STRIDE;
            let _ = vm.vgic.redist_write(v, rd + 0x14, 4, 0);
            let _ = vm.vgic.redist_write(v, rd, 4, 1);
        }
        check_tables(&vm, &bus, &tables)?;
    }
}
