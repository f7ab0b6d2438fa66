//! What a VM's emulated ITS does to its LPIs, turned into commands for the
//! physical ITS (GICv4.0 direct injection), as plain logic.
//!
//! Each VM owns one physical DeviceID. Guest LPI `intid` is physical event
//! `intid - 8192` of that device, mapped with `VMAPTI` to the vPE of the vCPU
//! the guest's collection names and to vINTID `intid`, with that vPE's
//! doorbell. A guest `INT` (or `GITS_TRANSLATER` write) becomes a physical
//! `INT` of that event, and the GIC makes the vLPI pending in the vPE's
//! virtual pending table: delivered at once if the vPE is resident, else
//! through its doorbell. Events are mapped lazily, at the first time the guest
//! makes the LPI pending, so the guest's own `MAPTI`s cost nothing here.
//!
//! The vLPI property table (priority and enable of each vINTID) is the
//! host's: a guest's table lives in guest memory, which the GIC must never be
//! pointed at. An entry is copied from the guest's table when its event is
//! mapped and on `INV`/`INVALL`, which is when the architecture lets a GIC
//! cache it.

use alloc::vec::Vec;

use crate::gic::its::{Command, LpiTables};
use crate::gic::vgic::its::{Effect, LPI_BASE};
use crate::gic::vgic::Kicks;

/// One vCPU's vPE: its ID in the physical ITS and its doorbell LPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpeIds {
    pub vpeid: u16,
    pub doorbell: u32,
}

/// A VM's vLPI mappings in the physical ITS.
#[derive(Debug)]
pub struct VlpiMap {
    device: u32,
    vpes: Vec<VpeIds>,
    /// Per event: 0 when unmapped, else 1 + the vCPU its vLPI is mapped to
    /// (a fixed table: a guest cannot make it grow).
    mapped: Vec<u8>,
}

impl VlpiMap {
    /// `events`: how many vINTIDs from 8192 the VM may use (the size of its
    /// device's ITT and of the vLPI property table).
    pub fn new(device: u32, vpes: Vec<VpeIds>, events: u32) -> Self {
        Self { device, vpes, mapped: alloc::vec![0; events as usize] }
    }

    pub fn device(&self) -> u32 {
        self.device
    }

    pub fn vpe(&self, vcpu: usize) -> Option<VpeIds> {
        self.vpes.get(vcpu).copied()
    }

    #[cfg(test)]
    pub fn mapped(&self, intid: u32) -> Option<usize> {
        self.event(intid).and_then(|e| self.owner(e))
    }

    /// Forgets every mapping (the caller unmaps the device: `MAPD` with V=0).
    pub fn clear(&mut self) {
        self.mapped.fill(0);
    }

    fn event(&self, intid: u32) -> Option<u32> {
        intid.checked_sub(LPI_BASE).filter(|&e| (e as usize) < self.mapped.len())
    }

    /// The vCPU event `event` (in range) is mapped to.
    fn owner(&self, event: u32) -> Option<usize> {
        self.mapped.get(event as usize).and_then(|&m| usize::from(m).checked_sub(1))
    }

    fn set_owner(&mut self, event: u32, vcpu: usize) {
        if let (Some(slot), Ok(tag)) = (self.mapped.get_mut(event as usize), u8::try_from(vcpu + 1)) {
            *slot = tag;
        }
    }

    /// Appends to `out` the commands that do `effect`; `vprop` is the VM's
    /// vLPI property table (entry `intid - 8192`), and `guest_property(vcpu,
    /// intid)` reads the guest's (priority, enable) for an LPI. Effects naming
    /// a vCPU without a vPE or an LPI beyond the VM's range do nothing.
    ///
    /// `kicks` gets the vCPUs that must make their vPE resident again to see
    /// the change: a GIC re-reads a non-resident vPE's pending table only
    /// then, and rings no doorbell for a vLPI that an `INV` enables or a
    /// `VMOVI` moves while it is already pending.
    pub fn apply(
        &mut self,
        effect: &Effect,
        vprop: &mut [u8],
        guest_property: &mut dyn FnMut(usize, u32) -> (u8, bool),
        out: &mut Vec<Command>,
        kicks: &mut Kicks,
    ) {
        let dev = self.device;
        match *effect {
            Effect::SetPending { vcpu, intid } => {
                let (Some(event), Some(vpe)) = (self.event(intid), self.vpe(vcpu)) else { return };
                match self.owner(event) {
                    Some(v) if v == vcpu => {}
                    Some(_) => out.push(Command::vmovi(dev, event, vpe.vpeid, Some(vpe.doorbell))),
                    None => {
                        copy_property(vprop, event, guest_property(vcpu, intid));
                        out.push(Command::vmapti(dev, event, vpe.vpeid, intid, vpe.doorbell));
                    }
                }
                self.set_owner(event, vcpu);
                out.push(Command::int(dev, event));
            }
            Effect::ClearPending { intid, .. } => {
                if let Some(event) = self.event(intid).filter(|&e| self.owner(e).is_some()) {
                    out.push(Command::clear(dev, event));
                }
            }
            Effect::Move { intid, to, .. } => {
                let (Some(event), Some(vpe)) = (self.event(intid), self.vpe(to)) else { return };
                if self.owner(event).is_some_and(|v| v != to) {
                    self.set_owner(event, to);
                    out.push(Command::vmovi(dev, event, vpe.vpeid, Some(vpe.doorbell)));
                    kicks.add(to);
                }
            }
            Effect::Invalidate { vcpu, intid } => {
                let Some(event) = self.event(intid) else { return };
                if let Some(owner) = self.owner(event) {
                    copy_property(vprop, event, guest_property(vcpu, intid));
                    out.push(Command::inv(dev, event));
                    kicks.add(owner);
                }
            }
            Effect::MoveAll { from, to } => {
                let Some(vpe) = self.vpe(to).filter(|_| from != to) else { return };
                let mut moved = false;
                for event in 0..self.mapped.len() as u32 {
                    if self.owner(event) == Some(from) {
                        self.set_owner(event, to);
                        out.push(Command::vmovi(dev, event, vpe.vpeid, Some(vpe.doorbell)));
                        moved = true;
                    }
                }
                if moved {
                    kicks.add(to);
                }
            }
            Effect::InvalidateAll { vcpu } => {
                let Some(vpe) = self.vpe(vcpu) else { return };
                for event in 0..self.mapped.len() as u32 {
                    if self.owner(event) == Some(vcpu) {
                        copy_property(vprop, event, guest_property(vcpu, event + LPI_BASE));
                    }
                }
                out.push(Command::vinvall(vpe.vpeid));
                kicks.add(vcpu);
            }
        }
    }
}

fn copy_property(vprop: &mut [u8], event: u32, (priority, enabled): (u8, bool)) {
    if let Some(b) = vprop.get_mut(event as usize) {
        *b = LpiTables::lpi_config(priority, enabled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: u32 = 7;

    fn map() -> VlpiMap {
        let vpes = (0..4).map(|i| VpeIds { vpeid: 10 + i, doorbell: 8300 + u32::from(i) }).collect();
        VlpiMap::new(DEV, vpes, 1024)
    }

    fn run(m: &mut VlpiMap, vprop: &mut [u8], e: Effect) -> Vec<[u64; 4]> {
        run_kicks(m, vprop, e).0
    }

    fn run_kicks(m: &mut VlpiMap, vprop: &mut [u8], e: Effect) -> (Vec<[u64; 4]>, Vec<usize>) {
        let (mut out, mut kicks) = (Vec::new(), Kicks::default());
        let mut prop = |vcpu: usize, intid: u32| (0xa0 | vcpu as u8, intid.is_multiple_of(2));
        m.apply(&e, vprop, &mut prop, &mut out, &mut kicks);
        (out.into_iter().map(|c| c.0).collect(), kicks.iter().collect())
    }

    #[test]
    fn only_changes_a_non_resident_vpe_cannot_see_kick_its_vcpu() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        assert!(run_kicks(&mut m, &mut vprop, Effect::SetPending { vcpu: 1, intid: 8192 }).1.is_empty());
        assert_eq!(run_kicks(&mut m, &mut vprop, Effect::Invalidate { vcpu: 1, intid: 8192 }).1, [1]);
        assert_eq!(run_kicks(&mut m, &mut vprop, Effect::Move { intid: 8192, from: 1, to: 2 }).1, [2]);
        assert_eq!(run_kicks(&mut m, &mut vprop, Effect::InvalidateAll { vcpu: 3 }).1, [3]);
        assert!(run_kicks(&mut m, &mut vprop, Effect::ClearPending { vcpu: 2, intid: 8192 }).1.is_empty());
    }

    #[test]
    fn first_int_maps_the_event_with_the_guest_property_then_triggers_it() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        let cmds = run(&mut m, &mut vprop, Effect::SetPending { vcpu: 2, intid: 8192 + 5 });
        assert_eq!(cmds, [Command::vmapti(DEV, 5, 12, 8197, 8302).0, Command::int(DEV, 5).0]);
        assert_eq!(vprop[5], LpiTables::lpi_config(0xa2, false));
        assert_eq!(m.mapped(8197), Some(2));
        // Mapped now: only the INT.
        let cmds = run(&mut m, &mut vprop, Effect::SetPending { vcpu: 2, intid: 8197 });
        assert_eq!(cmds, [Command::int(DEV, 5).0]);
    }

    #[test]
    fn int_for_another_vcpu_moves_the_vlpi_first() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 0, intid: 8200 });
        let cmds = run(&mut m, &mut vprop, Effect::SetPending { vcpu: 3, intid: 8200 });
        assert_eq!(cmds, [Command::vmovi(DEV, 8, 13, Some(8303)).0, Command::int(DEV, 8).0]);
        assert_eq!(m.mapped(8200), Some(3));
    }

    #[test]
    fn move_clear_and_inv_touch_only_mapped_events() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        assert!(run(&mut m, &mut vprop, Effect::Move { intid: 8192, from: 0, to: 1 }).is_empty());
        assert!(run(&mut m, &mut vprop, Effect::ClearPending { vcpu: 0, intid: 8192 }).is_empty());
        assert!(run(&mut m, &mut vprop, Effect::Invalidate { vcpu: 0, intid: 8192 }).is_empty());
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 0, intid: 8192 });
        let moved = run(&mut m, &mut vprop, Effect::Move { intid: 8192, from: 0, to: 1 });
        assert_eq!(moved, [Command::vmovi(DEV, 0, 11, Some(8301)).0]);
        assert!(run(&mut m, &mut vprop, Effect::Move { intid: 8192, from: 1, to: 1 }).is_empty());
        assert_eq!(run(&mut m, &mut vprop, Effect::ClearPending { vcpu: 1, intid: 8192 }), [Command::clear(DEV, 0).0]);
        vprop[0] = 0;
        assert_eq!(run(&mut m, &mut vprop, Effect::Invalidate { vcpu: 1, intid: 8192 }), [Command::inv(DEV, 0).0]);
        assert_eq!(vprop[0], LpiTables::lpi_config(0xa1, true));
    }

    #[test]
    fn invall_refreshes_that_vcpus_entries_and_invalidates_its_vpe() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 1, intid: 8194 });
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 2, intid: 8196 });
        vprop[2] = 0;
        vprop[4] = 0;
        assert_eq!(run(&mut m, &mut vprop, Effect::InvalidateAll { vcpu: 1 }), [Command::vinvall(11).0]);
        assert_eq!(vprop[2], LpiTables::lpi_config(0xa1, true));
        assert_eq!(vprop[4], 0, "vCPU 2's entry is not vCPU 1's to refresh");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn effect() -> impl Strategy<Value = Effect> {
            let intid = prop_oneof![0u32..16, 8180u32..8192 + 1100, any::<u32>()];
            let vcpu = 0usize..6;
            prop_oneof![
                (vcpu.clone(), intid.clone()).prop_map(|(vcpu, intid)| Effect::SetPending { vcpu, intid }),
                (vcpu.clone(), intid.clone()).prop_map(|(vcpu, intid)| Effect::ClearPending { vcpu, intid }),
                (intid.clone(), vcpu.clone(), vcpu.clone()).prop_map(|(intid, from, to)| Effect::Move {
                    intid,
                    from,
                    to
                }),
                (vcpu.clone(), intid).prop_map(|(vcpu, intid)| Effect::Invalidate { vcpu, intid }),
                vcpu.clone().prop_map(|vcpu| Effect::InvalidateAll { vcpu }),
                (vcpu.clone(), vcpu).prop_map(|(from, to)| Effect::MoveAll { from, to }),
            ]
        }

        proptest! {
            /// Any effect sequence: no panic, every command names the VM's
            /// device (or one of its vPEs) and an event in range, and an INT
            /// only ever follows a mapping to the vCPU it was meant for.
            #[test]
            fn random_effects_stay_in_range(effects in proptest::collection::vec(effect(), 1..80)) {
                let (mut m, mut vprop) = (map(), [0u8; 1024]);
                for e in effects {
                    let cmds = run(&mut m, &mut vprop, e);
                    for c in &cmds {
                        let opcode = c[0] & 0xff;
                        if opcode == 0x2d {
                            // VINVALL names a vPE, not the device.
                            prop_assert!((10..14).contains(&((c[1] >> 32) & 0xffff)));
                            continue;
                        }
                        prop_assert_eq!(c[0] >> 32, u64::from(DEV));
                        prop_assert!((c[1] & 0xffff_ffff) < 1024);
                    }
                    if let Effect::SetPending { vcpu, intid } = e {
                        if vcpu < 4 && (8192..8192 + 1024).contains(&intid) {
                            prop_assert_eq!(m.mapped(intid), Some(vcpu));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn movall_moves_every_vlpi_of_one_vcpu() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 1, intid: 8192 });
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 2, intid: 8193 });
        run(&mut m, &mut vprop, Effect::SetPending { vcpu: 1, intid: 8194 });
        let (cmds, kicks) = run_kicks(&mut m, &mut vprop, Effect::MoveAll { from: 1, to: 3 });
        assert_eq!(cmds, [Command::vmovi(DEV, 0, 13, Some(8303)).0, Command::vmovi(DEV, 2, 13, Some(8303)).0]);
        assert_eq!(kicks, [3]);
        assert_eq!((m.mapped(8192), m.mapped(8193), m.mapped(8194)), (Some(3), Some(2), Some(3)));
        assert!(run(&mut m, &mut vprop, Effect::MoveAll { from: 1, to: 3 }).is_empty());
    }

    #[test]
    fn out_of_range_lpis_and_vcpus_do_nothing() {
        let (mut m, mut vprop) = (map(), [0u8; 1024]);
        assert!(run(&mut m, &mut vprop, Effect::SetPending { vcpu: 0, intid: 8192 + 1024 }).is_empty());
        assert!(run(&mut m, &mut vprop, Effect::SetPending { vcpu: 4, intid: 8192 }).is_empty());
        assert!(run(&mut m, &mut vprop, Effect::SetPending { vcpu: 0, intid: 31 }).is_empty());
        assert!(run(&mut m, &mut vprop, Effect::InvalidateAll { vcpu: 9 }).is_empty());
        assert_eq!(m.mapped(8192), None);
    }
}
