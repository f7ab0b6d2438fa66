//! A host-wide bound on the interrupt state guests can make the host keep on
//! its heap: the ITS's devices and interrupt translation entries and the
//! vGIC's LPIs. Each VM has its own bounds too (`its::MAX_DEVICES`,
//! `its::MAX_ITES`, `MAX_LPIS`), but many VMs together could still exhaust
//! the heap, and an allocation failure there would stop the host.
//!
//! So each VM gets a [`Share`] of the host's budget, reserved whole when the
//! VM is created: what one VM maps comes out of its own share only, and a
//! VM that maps all it may leaves every other VM's share as it was. Past its
//! share, a mapping is refused the way one for a full table is (the command
//! is dropped and counted), and the host goes on.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Entries of interrupt state, shared by every VM.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Budget {
    /// Unlimited until [`Budget::set_limit`].
    pub const fn new() -> Self {
        Self { limit: AtomicUsize::new(usize::MAX), used: AtomicUsize::new(0) }
    }

    pub fn set_limit(&self, entries: usize) {
        self.limit.store(entries, Ordering::Relaxed);
    }

    /// Takes `n` entries; `false` (and nothing taken) if that would pass the limit.
    pub fn take(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(n).filter(|&u| u <= limit))
            .is_ok()
    }

    /// Gives back `n` entries taken before.
    pub fn give(&self, n: usize) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(n)));
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

/// The budget every VM's share is reserved from.
pub static INTERRUPT_STATE: Budget = Budget::new();

/// How many VMs the default share lets fit in the host's budget.
pub const DEFAULT_SHARES: usize = 8;

/// One VM's share: reserved from the host's budget when the VM is created,
/// drawn on by that VM's ITS and vGIC alone, given back when dropped. A
/// quarter of it is kept for the LPIs' own state, so that a VM that maps
/// translations until its share is spent still gets the LPIs it mapped.
#[derive(Debug)]
pub struct Share {
    translations: Budget,
    lpis: Budget,
    reserved: usize,
    host: Option<&'static Budget>,
}

impl Share {
    /// Reserves `entries` of `host` for one VM; `None` if fewer are left.
    pub fn reserve(host: &'static Budget, entries: usize) -> Option<Arc<Self>> {
        if !host.take(entries) {
            return None;
        }
        let (translations, lpis) = (Budget::new(), Budget::new());
        lpis.set_limit(entries / 4);
        translations.set_limit(entries - entries / 4);
        Some(Arc::new(Self { translations, lpis, reserved: entries, host: Some(host) }))
    }

    /// A share with no limit, reserved from nothing (tests, and VMs without
    /// LPIs, which keep no interrupt state on the heap).
    pub fn unlimited() -> Arc<Self> {
        Arc::new(Self { translations: Budget::new(), lpis: Budget::new(), reserved: 0, host: None })
    }

    /// Takes `n` entries for ITS devices or translations; `false` (and
    /// nothing taken) if that would pass their part of the share.
    pub fn take(&self, n: usize) -> bool {
        self.translations.take(n)
    }

    /// Gives back `n` entries taken by [`Share::take`].
    pub fn give(&self, n: usize) {
        self.translations.give(n);
    }

    /// Takes `n` entries for LPIs' state; `false` if past their part.
    pub fn take_lpis(&self, n: usize) -> bool {
        self.lpis.take(n)
    }

    /// Gives back `n` entries taken by [`Share::take_lpis`].
    pub fn give_lpis(&self, n: usize) {
        self.lpis.give(n);
    }

    /// Entries in use for devices and translations, and for LPIs.
    pub fn used(&self) -> (usize, usize) {
        (self.translations.used(), self.lpis.used())
    }

    /// Entries reserved for it (0 for an unlimited share).
    pub fn entries(&self) -> usize {
        self.reserved
    }

    /// The part devices and translations may use.
    pub fn translation_entries(&self) -> usize {
        self.translations.limit()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(host) = self.host {
            host.give(self.reserved);
        }
    }
}

/// The share a VM gets unless its node names one: the host's budget split
/// [`DEFAULT_SHARES`] ways, and never more than one VM can use.
pub fn default_share(host_limit: usize, per_vm_max: usize) -> usize {
    (host_limit / DEFAULT_SHARES).min(per_vm_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back() {
        let b = Budget::new();
        assert!(b.take(1_000_000), "unlimited until set");
        b.give(1_000_000);
        b.set_limit(10);
        assert!(b.take(6) && b.take(4));
        assert!(!b.take(1));
        assert_eq!(b.used(), 10);
        b.give(3);
        assert!(b.take(3) && !b.take(1));
        b.give(100);
        assert_eq!(b.used(), 0, "never below zero");
        assert!(!b.take(usize::MAX));
    }

    /// A VM that maps all its share leaves the others' as it was: what
    /// the first VM of the issue did (70,000 translations within its own
    /// limits) took every later VM's.
    #[test]
    fn a_vm_past_its_share_leaves_the_others_theirs() {
        static HOST: Budget = Budget::new();
        HOST.set_limit(65_536);
        let share = default_share(65_536, 65_536 + 4096 + 8192);
        assert_eq!(share, 8192);
        let flooder = Share::reserve(&HOST, share).unwrap();
        let victim = Share::reserve(&HOST, share).unwrap();
        let taken = (0..70_000).filter(|_| flooder.take(1)).count();
        assert_eq!(taken, share - share / 4, "three quarters for devices and translations");
        assert!((0..share / 4).all(|_| flooder.take_lpis(1)), "the rest still there for its LPIs");
        assert!(!flooder.take_lpis(1));
        assert_eq!(flooder.used(), (6144, 2048));
        assert_eq!(HOST.used(), 2 * share, "the host counts reservations, not use");
        assert!((0..6144).all(|_| victim.take(1)), "the victim gets all of its share");
        assert!((0..2048).all(|_| victim.take_lpis(1)));
        assert!(!victim.take(1));
        // Eight fit; a ninth share does not, and is refused whole.
        let more: std::vec::Vec<_> = (0..6).map(|_| Share::reserve(&HOST, share).unwrap()).collect();
        assert!(Share::reserve(&HOST, share).is_none());
        drop(more);
        drop(flooder);
        assert_eq!(HOST.used(), share, "a dropped share goes back to the host");
        assert!(Share::reserve(&HOST, share).is_some());
        assert!(Share::unlimited().take(usize::MAX));
    }
}
