//! SGIs el2 delivers between resident vCPUs (docs/interrupts.md §5).
//!
//! A guest's `ICC_SGI1R_EL1` write traps to el2. When every target runs in
//! guest mode on some CPU right now and can take the SGI, el2 posts it in
//! each target's [`SgiMailbox`] and sends that CPU the physical SGI
//! [`SGI_EL2_POST`]; the target CPU's el2 moves what was posted into free
//! list registers and returns to its guest. The host stays the owner of the
//! vGIC state: whatever is still posted when the target leaves guest mode,
//! the host takes at the exit ([`take`]) and raises in the vGIC.
//!
//! # The protocol
//!
//! Sender: [`post`] (`pending |= bits`, release; fence; read `resident`).
//! Target: [`enter`] (`resident = route`; fence; take `pending`) and
//! [`leave`] (`resident = 0`; fence; the host then [`take`]s `pending`). The
//! two fences make a store-buffering pair: either the sender sees the target
//! resident (and its physical SGI brings the target's el2 to look), or the
//! target's next look (at entry or, after leaving, the host's) sees the
//! bits. When the sender sees the target outside, the bits wait for the
//! host's next look, and the sender asks its host to kick the target (a
//! vCPU blocked in `WFI` looks only when woken). Each posted bit is taken
//! by one swap, so it is delivered once. The loom models in the host
//! (`gic::vgic::sgi_models`) check this, and that without the fences an SGI
//! is lost.

use crate::gic::{lr_v2, lr_v3};
use core::sync::atomic::{fence, AtomicU64, Ordering};

/// The physical SGI el2 sends a target's CPU when it posted an SGI for a
/// vCPU resident there. The host enables it and ignores it when it comes
/// after the target left guest mode.
pub const SGI_EL2_POST: u32 = 2;

/// The vCPUs a [`SgiTable`] covers: those with Aff1 = 0 (`vcpu_mpidr`).
pub const SGI_TABLE_VCPUS: usize = 16;

/// One vCPU's mailbox. Written by el2 on any CPU and by the host.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct SgiMailbox {
    /// Bit n: SGI n posted by el2, not yet in a list register or the vGIC.
    pub pending: AtomicU64,
    /// While the vCPU runs in guest mode: the `ICC_SGI1R_EL1` routing bits
    /// (Aff3.Aff2.Aff1, RS, TargetList) of the CPU it runs on; 0 outside.
    pub resident: AtomicU64,
    /// The host's view of what the guest can take, published under the
    /// vGIC's lock at every configuration change: bit n, SGI n is enabled
    /// and its group enabled in the distributor; bit 16 + n, it is group 1.
    pub takeable: AtomicU64,
    /// SGI n's priority in byte n % 8 of word n / 8.
    pub priority: [AtomicU64; 2],
}

/// A VM's mailboxes, indexed by vCPU (the TargetList bit).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct SgiTable {
    /// vCPUs `0..nr_vcpus` (at most [`SGI_TABLE_VCPUS`]) have a mailbox.
    pub nr_vcpus: u64,
    /// GICv2: the IPA of the VM's `GICD_SGIR`, whose writes el2 delivers;
    /// 0 on GICv3 (`ICC_SGI1R_EL1`). On GICv2 a mailbox's `pending` bit
    /// `8 * n + source` is SGI n (0-7) from vCPU `source`: each source is
    /// its own interrupt there (IHI 0048 §3.2.3).
    pub sgir_ipa: AtomicU64,
    pub vcpu: [SgiMailbox; SGI_TABLE_VCPUS],
}

/// GICv2 SGIs el2 delivers: 0-7 (one byte of sources each in `pending`).
pub const V2_SGIS: u32 = 8;

/// The vCPUs a GICv2 `GICD_SGIR` write from vCPU `me` names (IHI 0048
/// §4.3.15: TargetListFilter [25:24], CPUTargetList [23:16], SGIINTID
/// [3:0]) and its SGI, if el2 may deliver it: SGI 0-7, filter 0-2, and
/// targets among the table's `nr_vcpus`.
pub const fn sgir_targets(value: u32, me: u32, nr_vcpus: u64) -> Option<(u16, u32)> {
    let nr = if nr_vcpus > 8 { 8 } else { nr_vcpus };
    let all = (1u32 << nr) - 1;
    let list = (value >> 16) & 0xff;
    let targets = match (value >> 24) & 3 {
        0 => list,
        1 => all & !(1 << me),
        2 => 1 << me,
        _ => return None,
    };
    let intid = value & 0xf;
    if intid >= V2_SGIS || targets == 0 || targets & !all != 0 || me >= nr as u32 {
        return None;
    }
    Some((targets as u16, intid))
}

/// The atomic word operations the protocol uses, so that the host's loom
/// models run the very functions el2 does.
pub trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fetch_or(&self, value: u64, order: Ordering) -> u64;
    fn swap(&self, value: u64, order: Ordering) -> u64;
    /// A `SeqCst` fence of the same memory model.
    fn fence();
}

impl Word for AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
    #[inline(always)]
    fn fetch_or(&self, value: u64, order: Ordering) -> u64 {
        AtomicU64::fetch_or(self, value, order)
    }
    #[inline(always)]
    fn swap(&self, value: u64, order: Ordering) -> u64 {
        AtomicU64::swap(self, value, order)
    }
    #[inline(always)]
    fn fence() {
        fence(Ordering::SeqCst);
    }
}

/// The fence both sides use; `full` false is the broken protocol the
/// models show losing an SGI.
#[inline(always)]
fn pair_fence<W: Word>(full: bool) {
    if full {
        W::fence();
    }
}

/// Sender: posts `bits` for a target and returns where it runs (its
/// `resident` routing bits), or `None` if it is outside guest mode: then
/// the bits wait for its host's next look and the target must be kicked.
#[inline(always)]
pub fn post<W: Word>(pending: &W, resident: &W, bits: u64) -> Option<u64> {
    post_with(pending, resident, bits, true)
}

#[doc(hidden)]
#[inline(always)]
pub fn post_with<W: Word>(pending: &W, resident: &W, bits: u64, full: bool) -> Option<u64> {
    pending.fetch_or(bits, Ordering::Release);
    pair_fence::<W>(full);
    Some(resident.load(Ordering::Relaxed)).filter(|&r| r != 0)
}

/// Target, entering guest mode on the CPU `route` names: publishes it and
/// takes what was posted meanwhile (for its list registers).
#[inline(always)]
pub fn enter<W: Word>(pending: &W, resident: &W, route: u64) -> u64 {
    enter_with(pending, resident, route, true)
}

#[doc(hidden)]
#[inline(always)]
pub fn enter_with<W: Word>(pending: &W, resident: &W, route: u64, full: bool) -> u64 {
    resident.store(route, Ordering::Relaxed);
    pair_fence::<W>(full);
    take(pending)
}

/// Target, leaving guest mode: from here on senders see it outside. The
/// host [`take`]s what is posted after this.
#[inline(always)]
pub fn leave<W: Word>(resident: &W) {
    leave_with(resident, true)
}

#[doc(hidden)]
#[inline(always)]
pub fn leave_with<W: Word>(resident: &W, full: bool) {
    resident.store(0, Ordering::Relaxed);
    pair_fence::<W>(full);
}

/// Takes what is posted (a load first: nothing, the common case, costs no
/// read-modify-write).
#[inline(always)]
pub fn take<W: Word>(pending: &W) -> u64 {
    if pending.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    pending.swap(0, Ordering::Acquire)
}

/// The `ICC_SGI1R_EL1` routing bits (IHI 0069 §12.2.21: Aff3 [55:48],
/// Aff2 [39:32], Aff1 [23:16], RS [47:44], TargetList [15:0]) that reach
/// exactly the CPU with affinity `mpidr`. Never 0.
pub const fn route_of(mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    aff3 << 48 | (aff0 >> 4) << 44 | aff2 << 32 | aff1 << 16 | 1 << (aff0 & 0xf)
}

/// `ICC_SGI1R_EL1` fields (IHI 0069 §12.2.21).
pub const SGI1R_TARGET_LIST: u64 = 0xffff;
pub const SGI1R_INTID_SHIFT: u32 = 24;
pub const SGI1R_IRM: u64 = 1 << 40;
/// Aff1, Aff2, RS, Aff3: a write naming any but 0 is not for a table.
pub const SGI1R_HIGH_AFFINITY: u64 = 0xff << 16 | 0xff << 32 | 0xf << 44 | 0xff << 48;

/// The vCPUs of a [`SgiTable`] an `ICC_SGI1R_EL1` write names, and its
/// SGI, if the write is one el2 may deliver itself: not broadcast
/// (IRM 0), Aff3.Aff2.Aff1 and RS 0, and every target below `nr_vcpus`.
pub const fn table_targets(value: u64, nr_vcpus: u64) -> Option<(u16, u32)> {
    if value & (SGI1R_IRM | SGI1R_HIGH_AFFINITY) != 0 {
        return None;
    }
    let list = value & SGI1R_TARGET_LIST;
    let nr = if nr_vcpus > SGI_TABLE_VCPUS as u64 { SGI_TABLE_VCPUS as u64 } else { nr_vcpus };
    if list == 0 || list >> nr != 0 {
        return None;
    }
    Some((list as u16, ((value >> SGI1R_INTID_SHIFT) & 0xf) as u32))
}

impl SgiMailbox {
    /// Whether SGI `intid` can be taken by the guest (see `takeable`).
    #[inline(always)]
    pub fn can_take(&self, intid: u32) -> bool {
        self.takeable.load(Ordering::Acquire) & (1 << (intid & 0xf)) != 0
    }

    /// The GICv3 list register for SGI `intid`, pending (IHI 0069 §12.4.8:
    /// vINTID [31:0], Priority [55:48], Group [60], State [63:62]).
    pub fn lr_v3(&self, intid: u32, takeable: u64) -> u64 {
        let n = intid & 0xf;
        let prio = (self.priority[(n / 8) as usize].load(Ordering::Relaxed) >> (8 * (n % 8))) & 0xff;
        let group = (takeable >> (16 + n)) & 1;
        u64::from(n) | prio << lr_v3::PRIORITY_SHIFT | (group * lr_v3::GROUP) | 1 << lr_v3::STATE_SHIFT
    }

    /// The GICv2 list register for SGI `intid` from `source`, pending (IHI
    /// 0048 §5.3.9 GICH_LRn: VirtualID [9:0], CPUID [12:10], Priority
    /// [27:23], State [29:28], Grp1 [30]).
    pub fn lr_v2(&self, intid: u32, source: u32, takeable: u64) -> u64 {
        let n = intid & 0xf;
        let prio = (self.priority[(n / 8) as usize].load(Ordering::Relaxed) >> (8 * (n % 8))) & 0xff;
        let group = (takeable >> (16 + n)) & 1;
        u64::from(n)
            | (u64::from(source) & lr_v2::CPUID_MASK) << lr_v2::CPUID_SHIFT
            | (prio >> 3) << lr_v2::PRIORITY_SHIFT
            | 1 << lr_v2::STATE_SHIFT
            | (group * lr_v2::GROUP1)
    }

    /// The host, under the vGIC's lock: what the guest can take now.
    pub fn publish(&self, takeable: u16, group1: u16, priority: &[u8; 16]) {
        let word = |half: &[u8]| half.iter().enumerate().fold(0u64, |w, (i, &p)| w | u64::from(p) << (8 * i));
        self.priority[0].store(word(&priority[..8]), Ordering::Relaxed);
        self.priority[1].store(word(&priority[8..]), Ordering::Relaxed);
        self.takeable.store(u64::from(takeable) | u64::from(group1) << 16, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_one_cpu() {
        assert_eq!(route_of(0), 1);
        assert_eq!(route_of(3), 1 << 3);
        assert_eq!(route_of(0x0102), 1 << 16 | 1 << 2);
        assert_eq!(route_of(0x12), 1 << 44 | 1 << 2, "Aff0 16..255: RS (IHI 0069 §12.2.21)");
        assert_eq!(route_of(0x0a_0003_0201), 0x0a << 48 | 3 << 32 | 2 << 16 | 1 << 1);
    }

    #[test]
    fn only_targeted_writes_within_the_table_are_el2s() {
        assert_eq!(table_targets(5 << 24 | 0b110, 4), Some((0b110, 5)));
        assert_eq!(table_targets(0b110, 2), None, "vCPU 2 does not exist");
        assert_eq!(table_targets(0, 4), None, "no target");
        assert_eq!(table_targets(SGI1R_IRM | 1, 4), None, "broadcast: the host's");
        assert_eq!(table_targets(1 << 16 | 1, 32), None, "Aff1 1: beyond the table");
        assert_eq!(table_targets(1 << 44 | 1, 32), None, "RS 1");
        assert_eq!(table_targets(0xffff, 40), Some((0xffff, 0)));
    }

    #[test]
    fn the_list_register_carries_the_published_priority_and_group() {
        let m = SgiMailbox::default();
        let mut prio = [0u8; 16];
        prio[3] = 0xa0;
        prio[12] = 0x40;
        m.publish(1 << 3 | 1 << 12, 1 << 12, &prio);
        let t = m.takeable.load(Ordering::Relaxed);
        assert!(m.can_take(3) && m.can_take(12) && !m.can_take(4));
        assert_eq!(m.lr_v3(3, t), 3 | 0xa0 << 48 | 1 << 62);
        assert_eq!(m.lr_v3(12, t), 12 | 0x40 << 48 | 1 << 60 | 1 << 62);
    }

    #[test]
    fn gicv2_sgir_writes_el2_delivers() {
        // IHI 0048 §4.3.15: filter 0 the list, 1 all but me, 2 me.
        assert_eq!(sgir_targets(0b0110 << 16 | 3, 0, 4), Some((0b0110, 3)));
        assert_eq!(sgir_targets(1 << 24 | 5, 1, 4), Some((0b1101, 5)));
        assert_eq!(sgir_targets(2 << 24 | 7, 2, 4), Some((0b0100, 7)));
        assert_eq!(sgir_targets(3 << 24 | 1, 0, 4), None, "reserved filter");
        assert_eq!(sgir_targets(0b1 << 16 | 8, 0, 4), None, "SGI 8-15: the host's");
        assert_eq!(sgir_targets(0b10000 << 16 | 1, 0, 4), None, "no vCPU 4");
        assert_eq!(sgir_targets(1, 0, 4), None, "no target");
        assert_eq!(sgir_targets(1 << 24 | 1, 0, 1), None, "all but me, alone");
    }

    #[test]
    fn the_gicv2_list_register_carries_the_source() {
        let m = SgiMailbox::default();
        let mut prio = [0u8; 16];
        prio[6] = 0xa8;
        m.publish(1 << 6, 1 << 6, &prio);
        let t = m.takeable.load(Ordering::Relaxed);
        assert_eq!(m.lr_v2(6, 3, t), 6 | 3 << 10 | 0x15 << 23 | 1 << 28 | 1 << 30);
    }

    #[test]
    fn posted_bits_are_taken_once() {
        let m = SgiMailbox::default();
        assert_eq!(post(&m.pending, &m.resident, 1 << 2), None, "outside guest mode");
        assert_eq!(enter(&m.pending, &m.resident, 0x10), 1 << 2, "taken at entry");
        assert_eq!(post(&m.pending, &m.resident, 1 << 5), Some(0x10));
        leave(&m.resident);
        assert_eq!(take(&m.pending), 1 << 5);
        assert_eq!(take(&m.pending), 0);
        assert_eq!(m.resident.load(Ordering::Relaxed), 0);
    }
}
