//! LPIs in the vGIC: the redistributor's LPI registers, and LPIs the
//! emulated ITS raises reaching the list registers.

use super::its::tests::{self as its_cmd, clear, int, inv, invall, mapti, movi, Ram};
use super::its::{Effect, GuestMemory, Its, GITS_BASER0, GITS_BASER1, GITS_CBASER, GITS_CTLR, GITS_CWRITER};
use super::lr::{v3 as lr3, HCR_EN};
use super::*;
use ferrovisor_shared::vcpu::MAX_LIST_REGS;

const GICD_TYPER: u64 = 0x4;
const GICR_CTLR: u64 = 0x0;
const GICR_TYPER: u64 = 0x8;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;
const GICD_TYPER_LPIS: u64 = 1 << 17;

const RAM: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 0x4_0000;
const QUEUE: u64 = RAM;
const PROP: u64 = RAM + 0x1_0000;
const PEND: u64 = RAM + 0x3_0000;
/// `GICR_PROPBASER.IDbits` for 16 INTID bits.
const IDBITS_16: u64 = 15;

impl Ram {
    /// Sets LPI `intid`'s property table entry.
    fn prop(&self, intid: u32, priority: u8, enabled: bool) {
        self.write(PROP + u64::from(intid - 8192), &[priority & 0xfc | u8::from(enabled)]).unwrap();
    }
}

fn new_ram() -> Ram {
    Ram::at(RAM, RAM_SIZE)
}

fn mapd(dev: u32, size: u8) -> [u64; 4] {
    its_cmd::mapd(dev, size, 0, true)
}
fn mapc(icid: u16, vcpu: u64) -> [u64; 4] {
    its_cmd::mapc(icid, vcpu, true)
}

fn mpidr(i: usize) -> u64 {
    (1 << 31) | i as u64
}

fn cfg(model: Model, n: usize, lpis: bool) -> VgicConfig {
    VgicConfig {
        model,
        vcpu_mpidrs: (0..n).map(mpidr).collect(),
        nr_spis: 64,
        lpis,
        share: crate::gic::vgic::budget::Share::unlimited(),
    }
}

fn rd(vcpu: usize) -> u64 {
    vcpu as u64 * REDIST_STRIDE
}

/// A VM with a vGIC (LPIs on), its ITS and its RAM.
struct Vm {
    g: Vgic,
    its: Its,
    ram: Ram,
    cwriter: u64,
}

impl Vm {
    /// `n` vCPUs, groups enabled, each redistributor's property table at
    /// PROP with LPIs enabled; the ITS enabled with a queue at QUEUE.
    fn new(n: usize) -> Vm {
        let g = Vgic::new(cfg(Model::V3, n, true)).unwrap();
        g.dist_write(0, 0, 4, 0b11);
        let mut vm = Vm { g, its: Its::new(n, LPI_ID_BITS).unwrap(), ram: new_ram(), cwriter: 0 };
        for v in 0..n {
            vm.g.redist_write(v, rd(v) + GICR_PROPBASER, 8, PROP | IDBITS_16);
            vm.g.redist_write(v, rd(v) + GICR_PENDBASER, 8, PEND);
            vm.g.redist_write(v, rd(v) + GICR_CTLR, 4, 1);
        }
        vm.its_write(GITS_CBASER as u64, 1 << 63 | QUEUE);
        vm.its_write(GITS_BASER0 as u64, 1 << 63 | (RAM + 0x2_0000));
        vm.its_write(GITS_BASER1 as u64, 1 << 63 | (RAM + 0x2_1000));
        vm.its_write(GITS_CTLR as u64, 1);
        vm
    }

    fn its_write(&mut self, off: u64, value: u64) -> Kicks {
        let size = if off == GITS_CTLR as u64 { 4 } else { 8 };
        let effects = self.its.mmio_write(&self.ram, off, size, value);
        self.g.apply_its(&self.ram, &effects)
    }

    /// Queues `cmds`, lets the ITS run them and applies the effects.
    fn run(&mut self, cmds: &[[u64; 4]]) -> Kicks {
        for cmd in cmds {
            for (i, word) in cmd.iter().enumerate() {
                self.ram.write(QUEUE + self.cwriter + 8 * i as u64, &word.to_le_bytes()).unwrap();
            }
            self.cwriter = (self.cwriter + 32) % 4096;
        }
        self.its_write(GITS_CWRITER as u64, self.cwriter)
    }

    /// Flushes `vcpu` and returns its list registers.
    fn flush(&self, vcpu: usize, c: &mut VgicCpuState) -> Vec<u64> {
        c.vmcr = 0xff << 24 | 0b11;
        self.g.flush(vcpu, c, 4);
        self.g.check_invariants();
        c.lr[..c.used_lrs as usize].to_vec()
    }

    /// The guest leaves each list register in state `s`; sync.
    fn sync(&self, vcpu: usize, c: &mut VgicCpuState, s: u64) {
        for lr in &mut c.lr[..c.used_lrs as usize] {
            *lr = (*lr & !(3 << 62)) | s << 62;
        }
        self.g.sync(vcpu, c);
        self.g.check_invariants();
    }
}

fn intids(lrs: &[u64]) -> Vec<u32> {
    lrs.iter().map(|&lr| lr as u32).collect()
}

#[test]
fn lpis_on_gicv2_are_refused() {
    assert_eq!(Vgic::new(cfg(Model::V2, 1, true)).err(), Some(VgicError::LpisNeedV3));
    assert!(Vgic::new(cfg(Model::V3, 1, true)).is_ok());
}

#[test]
fn lpis_off_reads_as_before() {
    let g = Vgic::new(cfg(Model::V3, 2, false)).unwrap();
    assert_eq!(g.dist_read(0, GICD_TYPER, 4), 2 | 9 << 19 | 1 << 24 | 1 << 26);
    for v in 0..2 {
        g.redist_write(v, rd(v) + GICR_PROPBASER, 8, PROP | IDBITS_16);
        g.redist_write(v, rd(v) + GICR_PENDBASER, 8, PEND);
        g.redist_write(v, rd(v) + GICR_CTLR, 4, 1);
        assert_eq!(g.redist_read(v, rd(v) + GICR_TYPER, 8) & 1, 0, "PLPIS");
        for off in [GICR_CTLR, GICR_PROPBASER, GICR_PROPBASER + 4, GICR_PENDBASER, GICR_PENDBASER + 4] {
            assert_eq!(g.redist_read(v, rd(v) + off, 4), 0, "{off:#x}");
        }
        assert_eq!(g.redist_read(v, rd(v) + GICR_PROPBASER, 8), 0);
    }
    // Effects from an ITS change nothing.
    let ram = new_ram();
    ram.prop(8192, 0x40, true);
    assert!(g.apply_its(&ram, &[Effect::SetPending { vcpu: 0, intid: 8192 }]).is_empty());
    assert!(!g.is_pending_or_active(0, 8192));
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
}

#[test]
fn lpi_registers() {
    let g = Vgic::new(cfg(Model::V3, 2, true)).unwrap();
    assert_eq!(g.dist_read(0, GICD_TYPER, 4), 2 | 15 << 19 | GICD_TYPER_LPIS | 1 << 24 | 1 << 26);
    assert_eq!(g.redist_read(0, rd(0) + GICR_TYPER, 8) & 1, 1, "PLPIS");
    assert_eq!(g.redist_read(1, rd(1) + GICR_TYPER, 4) & 1, 1, "PLPIS");
    // 64-bit registers, masked to their fields, also written by halves.
    g.redist_write(0, rd(0) + GICR_PROPBASER, 8, u64::MAX);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PROPBASER, 8), 0x070f_ffff_ffff_ff9f);
    g.redist_write(0, rd(0) + GICR_PENDBASER, 8, u64::MAX);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PENDBASER, 8), 0x070f_ffff_ffff_0f80, "PTZ reads 0");
    g.redist_write(0, rd(0) + GICR_PROPBASER, 4, PROP | IDBITS_16);
    g.redist_write(0, rd(0) + GICR_PROPBASER + 4, 4, 0);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PROPBASER, 8), PROP | IDBITS_16);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PROPBASER + 4, 4), 0);
    // Another redistributor's registers are its own.
    assert_eq!(g.redist_read(0, rd(1) + GICR_PROPBASER, 8), 0);
    // EnableLPIs: set once, then it and the table registers stick.
    assert_eq!(g.redist_read(0, rd(0) + GICR_CTLR, 4), 0);
    g.redist_write(0, rd(0) + GICR_CTLR, 4, 1);
    assert_eq!(g.redist_read(0, rd(0) + GICR_CTLR, 4), 1);
    g.redist_write(0, rd(0) + GICR_CTLR, 4, 0);
    assert_eq!(g.redist_read(0, rd(0) + GICR_CTLR, 4), 1);
    g.redist_write(0, rd(0) + GICR_PROPBASER, 8, 0);
    g.redist_write(0, rd(0) + GICR_PENDBASER + 4, 4, 0);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PROPBASER, 8), PROP | IDBITS_16);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PENDBASER, 8), 0x070f_ffff_ffff_0f80);
    assert_eq!(g.redist_read(1, rd(1) + GICR_CTLR, 4), 0);
    // Reset clears them.
    g.reset();
    assert_eq!(g.redist_read(0, rd(0) + GICR_CTLR, 4), 0);
    assert_eq!(g.redist_read(0, rd(0) + GICR_PROPBASER, 8), 0);
}

#[test]
fn its_int_reaches_the_target_list_register() {
    let mut vm = Vm::new(2);
    vm.ram.prop(8197, 0xa4, true);
    assert!(vm.run(&[mapd(1, 3), mapc(0, 1), mapti(1, 2, 8197, 0)]).is_empty());
    let k = vm.run(&[int(1, 2)]);
    assert_eq!(k, Kicks(0b10));
    assert!(vm.g.is_pending_or_active(1, 8197));
    let mut c0 = VgicCpuState::default();
    assert!(vm.flush(0, &mut c0).is_empty());
    let mut c = VgicCpuState::default();
    assert!(vm.g.has_pending(1, &VgicCpuState { vmcr: 0xff << 24 | 0b10, ..Default::default() }));
    let lrs = vm.flush(1, &mut c);
    // Pending, group 1, priority from the table (masked to 5 bits), no EOI
    // maintenance, no HW.
    assert_eq!(lrs, [1 << 62 | lr3::GROUP | 0xa0 << lr3::PRIORITY_SHIFT | 8197]);
    assert_eq!(c.hcr, HCR_EN);
    // Not taken: still pending, listed again.
    vm.sync(1, &mut c, 1);
    assert_eq!(intids(&vm.flush(1, &mut c)), [8197]);
    // Taken (the list register comes back active): no longer pending.
    vm.sync(1, &mut c, 2);
    assert!(!vm.g.is_pending_or_active(1, 8197));
    assert!(vm.flush(1, &mut c).is_empty());
    // Raised again and taken (invalid): gone as well.
    vm.run(&[int(1, 2)]);
    assert_eq!(intids(&vm.flush(1, &mut c)), [8197]);
    vm.sync(1, &mut c, 0);
    assert!(vm.flush(1, &mut c).is_empty());
    // CLEAR drops a pending LPI before the guest sees it.
    vm.run(&[int(1, 2), clear(1, 2)]);
    assert!(vm.flush(1, &mut c).is_empty());
    // A CLEAR while it sits in a list register wins at sync.
    vm.run(&[int(1, 2)]);
    assert_eq!(intids(&vm.flush(1, &mut c)), [8197]);
    vm.run(&[clear(1, 2)]);
    vm.sync(1, &mut c, 1);
    assert!(vm.flush(1, &mut c).is_empty());
}

#[test]
fn priorities_order_lpis_with_other_interrupts() {
    let mut vm = Vm::new(1);
    vm.ram.prop(8192, 0x80, true);
    vm.ram.prop(8193, 0x20, true);
    vm.run(&[mapd(0, 3), mapc(0, 0), mapti(0, 0, 8192, 0), mapti(0, 1, 8193, 0), int(0, 0), int(0, 1)]);
    let mut c = VgicCpuState::default();
    assert_eq!(intids(&vm.flush(0, &mut c)), [8193, 8192]);
}

#[test]
fn property_table_enable_is_cached_until_inv() {
    let mut vm = Vm::new(1);
    vm.ram.prop(8300, 0x40, false);
    vm.run(&[mapd(0, 3), mapc(0, 0), mapti(0, 5, 8300, 0), int(0, 5)]);
    let mut c = VgicCpuState::default();
    assert!(vm.flush(0, &mut c).is_empty(), "disabled in the table");
    assert!(vm.g.is_pending_or_active(0, 8300), "but pending");
    assert!(!vm.g.has_pending(0, &VgicCpuState { vmcr: 0xff << 24 | 0b11, ..Default::default() }));
    // Enabled in memory only: the cached configuration still says disabled.
    vm.ram.prop(8300, 0x40, true);
    vm.run(&[int(0, 5)]);
    assert!(vm.flush(0, &mut c).is_empty());
    // INV re-reads it.
    assert_eq!(vm.run(&[inv(0, 5)]), Kicks(1));
    assert_eq!(intids(&vm.flush(0, &mut c)), [8300]);
    vm.sync(0, &mut c, 1);
    // Disabled again with INVALL: stays pending, not listed.
    vm.ram.prop(8300, 0x40, false);
    vm.run(&[invall(0)]);
    assert!(vm.flush(0, &mut c).is_empty());
    assert!(vm.g.is_pending_or_active(0, 8300));
    // Enabled with a new priority, INVALL: listed with it.
    vm.ram.prop(8300, 0x18, true);
    vm.run(&[invall(0)]);
    assert_eq!(vm.flush(0, &mut c), [1 << 62 | lr3::GROUP | 0x18 << lr3::PRIORITY_SHIFT | 8300]);
}

#[test]
fn out_of_range_or_unreadable_property_reads_disabled() {
    let ram = new_ram();
    ram.prop(8192, 0x40, true);
    // A property table outside guest RAM: the LPI is pending but disabled.
    let g = Vgic::new(cfg(Model::V3, 1, true)).unwrap();
    g.dist_write(0, 0, 4, 0b11);
    g.redist_write(0, GICR_PROPBASER, 8, 0x1000 | IDBITS_16);
    g.redist_write(0, GICR_CTLR, 4, 1);
    g.apply_its(&ram, &[Effect::SetPending { vcpu: 0, intid: 8192 }]);
    assert!(g.is_pending_or_active(0, 8192));
    let mut c = VgicCpuState::default();
    g.flush(0, &mut c, 4);
    assert_eq!(c.used_lrs, 0);
    // IDbits too small for the INTID: disabled.
    let g2 = Vgic::new(cfg(Model::V3, 1, true)).unwrap();
    g2.dist_write(0, 0, 4, 0b11);
    g2.redist_write(0, GICR_PROPBASER, 8, PROP | 13);
    g2.redist_write(0, GICR_CTLR, 4, 1);
    ram.prop(16384, 0x40, true);
    g2.apply_its(&ram, &[Effect::SetPending { vcpu: 0, intid: 16384 }, Effect::SetPending { vcpu: 0, intid: 8192 }]);
    g2.flush(0, &mut c, 4);
    assert_eq!(intids(&c.lr[..c.used_lrs as usize]), [8192], "16384 is beyond 14 ID bits");
    // INTIDs that are not LPIs of this vGIC are ignored.
    g2.apply_its(
        &ram,
        &[
            Effect::SetPending { vcpu: 0, intid: 65536 },
            Effect::SetPending { vcpu: 0, intid: 40 },
            Effect::SetPending { vcpu: 5, intid: 8195 },
        ],
    );
    assert!(!g2.is_pending_or_active(0, 40));
    assert!(!g2.is_pending_or_active(0, 65536));
    assert!(!g2.is_pending_or_active(0, 8195));
}

#[test]
fn enable_lpis_gates_delivery() {
    let g = Vgic::new(cfg(Model::V3, 2, true)).unwrap();
    g.dist_write(0, 0, 4, 0b11);
    let ram = new_ram();
    ram.prop(8200, 0x40, true);
    g.redist_write(1, rd(1) + GICR_PROPBASER, 8, PROP | IDBITS_16);
    g.apply_its(&ram, &[Effect::SetPending { vcpu: 1, intid: 8200 }]);
    let mut c = VgicCpuState::default();
    g.flush(1, &mut c, 4);
    assert_eq!(c.used_lrs, 0, "EnableLPIs is 0");
    assert_eq!(g.redist_write(1, rd(1) + GICR_CTLR, 4, 1), Kicks(0b10));
    g.flush(1, &mut c, 4);
    assert_eq!(intids(&c.lr[..c.used_lrs as usize]), [8200]);
    g.check_invariants();
}

#[test]
fn enable_lpis_reads_the_pending_table_unless_ptz() {
    let g = Vgic::new(cfg(Model::V3, 2, true)).unwrap();
    g.dist_write(0, 0, 4, 0b11);
    let ram = new_ram();
    ram.prop(8193, 0x40, true);
    ram.prop(8200, 0x60, true);
    // LPIs 8193 and 8200 pending in vCPU 1's table (INTID n is bit n).
    ram.write(PEND + 1024, &[0b10]).unwrap();
    ram.write(PEND + 1025, &[0b1]).unwrap();
    g.redist_write(1, rd(1) + GICR_PROPBASER, 8, PROP | IDBITS_16);
    g.redist_write(1, rd(1) + GICR_PENDBASER, 8, PEND);
    assert!(g.pending_table_effects(&ram).is_empty(), "EnableLPIs is still 0");
    g.redist_write(1, rd(1) + GICR_CTLR, 4, 1);
    let effects = g.pending_table_effects(&ram);
    assert_eq!(effects, [Effect::SetPending { vcpu: 1, intid: 8193 }, Effect::SetPending { vcpu: 1, intid: 8200 }]);
    assert!(g.pending_table_effects(&ram).is_empty(), "read once");
    g.apply_its(&ram, &effects);
    let mut c = VgicCpuState { vmcr: 0xff << 24 | 0b11, ..VgicCpuState::default() };
    g.flush(1, &mut c, 4);
    assert_eq!(intids(&c.lr[..c.used_lrs as usize]), [8193, 8200]);
    // With PTZ (32-bit writes, upper word last) the table is not read.
    g.redist_write(0, rd(0) + GICR_PROPBASER, 8, PROP | IDBITS_16);
    g.redist_write(0, rd(0) + GICR_PENDBASER, 4, PEND & 0xffff_ffff);
    g.redist_write(0, rd(0) + GICR_PENDBASER + 4, 4, (PEND >> 32) | 1 << 30);
    g.redist_write(0, rd(0) + GICR_CTLR, 4, 1);
    ram.write(PEND + 1024, &[0xff]).unwrap();
    assert!(g.pending_table_effects(&ram).is_empty());
    g.check_invariants();
}

#[test]
fn movall_moves_every_pending_lpi_of_a_redistributor() {
    let mut vm = Vm::new(3);
    vm.ram.prop(8192, 0x40, true);
    vm.ram.prop(8193, 0x40, true);
    vm.run(&[mapd(0, 3), mapc(0, 0), mapc(1, 1), mapti(0, 0, 8192, 1), mapti(0, 1, 8193, 1), int(0, 0), int(0, 1)]);
    let kicks = vm.run(&[[0x0e, 0, 1 << 16, 2 << 16]]);
    assert!(kicks.contains(2), "{kicks:?}");
    let (mut c1, mut c2) = (VgicCpuState::default(), VgicCpuState::default());
    assert!(vm.flush(1, &mut c1).is_empty());
    assert_eq!(intids(&vm.flush(2, &mut c2)), [8192, 8193]);
}

#[test]
fn movi_moves_a_pending_lpi() {
    let mut vm = Vm::new(2);
    vm.ram.prop(8192, 0x40, true);
    vm.run(&[mapd(0, 3), mapc(0, 0), mapc(1, 1), mapti(0, 0, 8192, 0), int(0, 0)]);
    let (mut c0, mut c1) = (VgicCpuState::default(), VgicCpuState::default());
    assert_eq!(vm.run(&[movi(0, 0, 1)]), Kicks(0b10));
    assert!(vm.flush(0, &mut c0).is_empty());
    assert_eq!(intids(&vm.flush(1, &mut c1)), [8192]);
    // Moved back while in vCPU 1's list register, not taken: at sync it goes
    // to vCPU 0, which is kicked.
    vm.run(&[movi(0, 0, 0)]);
    vm.sync(1, &mut c1, 1);
    assert!(vm.g.take_kicks().contains(0));
    assert!(vm.flush(1, &mut c1).is_empty());
    assert_eq!(intids(&vm.flush(0, &mut c0)), [8192]);
    // A later INT goes to the new target.
    vm.sync(0, &mut c0, 2);
    assert_eq!(vm.run(&[int(0, 0)]), Kicks(1));
}

#[test]
fn the_lpi_count_is_bounded() {
    let g = Vgic::new(cfg(Model::V3, 1, true)).unwrap();
    let ram = new_ram();
    g.redist_write(0, GICR_PROPBASER, 8, PROP | IDBITS_16);
    let effects: Vec<Effect> =
        (8192..8192 + MAX_LPIS as u32 + 10).map(|intid| Effect::SetPending { vcpu: 0, intid }).collect();
    g.apply_its(&ram, &effects);
    assert!(g.is_pending_or_active(0, 8192 + MAX_LPIS as u32 - 1));
    assert!(!g.is_pending_or_active(0, 8192 + MAX_LPIS as u32));
    g.check_invariants();
    g.reset();
    assert!(!g.is_pending_or_active(0, 8192));
}

mod random {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Cmd([u64; 4]),
        Effect(u8, usize, u32),
        Prop(u32, u8),
        Redist { vcpu: usize, off: u64, size: u8, value: u64 },
        Dist(u64),
        Run { vcpu: usize, nr_lrs: usize, states: [u8; 16] },
        Reset,
    }

    fn lpi() -> impl Strategy<Value = u32> {
        prop_oneof![8 => 8192u32..8200, 1 => 8192u32..70000, 1 => any::<u32>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        let vcpu = prop_oneof![8 => 0usize..3, 1 => any::<usize>()];
        let cmd = prop_oneof![
            (0u32..3, 0u8..4).prop_map(|(d, s)| mapd(d, s)),
            (0u16..3, 0u64..4).prop_map(|(i, v)| mapc(i, v)),
            (0u32..3, 0u32..4, lpi(), 0u16..3).prop_map(|(d, e, l, i)| mapti(d, e, l, i)),
            (0u32..3, 0u32..4, 0u16..3).prop_map(|(d, e, i)| movi(d, e, i)),
            (0u32..3, 0u32..4).prop_map(|(d, e)| int(d, e)),
            (0u32..3, 0u32..4).prop_map(|(d, e)| clear(d, e)),
            (0u32..3, 0u32..4).prop_map(|(d, e)| inv(d, e)),
            (0u16..3).prop_map(invall),
        ];
        let off = prop_oneof![Just(0u64), Just(0x8), Just(0x70), Just(0x74), Just(0x78), Just(0x7c), 0u64..0x100];
        let value = prop_oneof![Just(PROP | IDBITS_16), Just(1u64), any::<u64>(), Just(PROP | 13)];
        prop_oneof![
            6 => cmd.prop_map(Op::Cmd),
            3 => (0u8..5, vcpu.clone(), lpi()).prop_map(|(k, v, l)| Op::Effect(k, v, l)),
            2 => (8192u32..8200, any::<u8>()).prop_map(|(l, p)| Op::Prop(l, p)),
            3 => (vcpu.clone(), off, prop_oneof![Just(4u8), Just(8), 0u8..9], value)
                .prop_map(|(vcpu, off, size, value)| Op::Redist { vcpu, off, size, value }),
            1 => (0u64..4).prop_map(Op::Dist),
            4 => (vcpu, 0usize..6, any::<[u8; 16]>()).prop_map(|(vcpu, nr_lrs, states)| Op::Run { vcpu, nr_lrs, states }),
            1 => Just(Op::Reset),
        ]
    }

    fn apply(vm: &mut Vm, cpus: &mut [VgicCpuState], op: &Op) {
        let n = vm.g.nr_vcpus();
        match *op {
            Op::Cmd(cmd) => assert_eq!(vm.run(&[cmd]).0 >> n, 0),
            Op::Effect(kind, vcpu, intid) => {
                let e = match kind {
                    0 => Effect::SetPending { vcpu, intid },
                    1 => Effect::ClearPending { vcpu, intid },
                    2 => Effect::Move { intid, from: vcpu % 3, to: vcpu },
                    3 => Effect::Invalidate { vcpu, intid },
                    _ => Effect::InvalidateAll { vcpu },
                };
                assert_eq!(vm.g.apply_its(&vm.ram, &[e]).0 >> n, 0);
                let _ = vm.g.is_pending_or_active(vcpu, intid);
            }
            Op::Prop(intid, p) => vm.ram.prop(intid, p, p & 1 != 0),
            Op::Redist { vcpu, off, size, value } => {
                let base = rd(vcpu % 4);
                let _ = vm.g.redist_read(vcpu, base + off, size);
                assert_eq!(vm.g.redist_write(vcpu, base + off, size, value).0 >> n, 0);
            }
            Op::Dist(v) => {
                vm.g.dist_write(0, 0, 4, v);
            }
            Op::Run { vcpu, nr_lrs, states } => {
                let mut scratch = VgicCpuState::default();
                let c = cpus.get_mut(vcpu).unwrap_or(&mut scratch);
                c.vmcr = 0xff << 24 | 0b11;
                vm.g.flush(vcpu, c, nr_lrs);
                assert!(c.used_lrs as usize <= nr_lrs.min(MAX_LIST_REGS));
                for &lr in &c.lr[..c.used_lrs as usize] {
                    if lr as u32 >= 8192 {
                        assert_eq!(lr >> 62, 1, "an LPI's list register is pending only");
                        assert_eq!(lr & (lr3::EOI | lr3::HW), 0);
                    }
                }
                for (lr, &s) in c.lr.iter_mut().zip(states.iter()) {
                    *lr = (*lr & !(3 << 62)) | u64::from(s & 3) << 62;
                }
                let _ = vm.g.has_pending(vcpu, c);
                vm.g.sync(vcpu, c);
                assert_eq!(vm.g.take_kicks().0 >> n, 0);
            }
            Op::Reset => vm.g.reset(),
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(512))]

        #[test]
        fn random_its_effects_never_panic(n in 1usize..4, ops in proptest::collection::vec(op(), 1..60)) {
            let mut vm = Vm::new(n);
            let mut cpus = alloc::vec![VgicCpuState::default(); n];
            for op in &ops {
                apply(&mut vm, &mut cpus, op);
                vm.g.check_invariants();
            }
            for (v, c) in cpus.iter_mut().enumerate() {
                vm.g.flush(v, c, 4);
                vm.g.sync(v, c);
            }
            vm.g.check_invariants();
        }
    }
}
