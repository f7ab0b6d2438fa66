//! Loom models of the SGI mailbox protocol el2 and the host share
//! (`ferrovisor_shared::sgi`, docs/interrupts.md §5): the very functions
//! el2 runs, on loom's atomics.

use crate::rcu::sync::{fence, thread, AtomicBool, AtomicU64, Ordering};
use ferrovisor_shared::sgi::{enter_with, leave_with, post_with, take, Word};
use loom::sync::Arc;

struct LoomWord(AtomicU64);

impl Word for LoomWord {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
    fn fetch_or(&self, value: u64, order: Ordering) -> u64 {
        self.0.fetch_or(value, order)
    }
    fn swap(&self, value: u64, order: Ordering) -> u64 {
        self.0.swap(value, order)
    }
    fn fence() {
        fence(Ordering::SeqCst);
    }
}

struct Mailbox {
    pending: LoomWord,
    resident: LoomWord,
}

const ROUTE: u64 = 1 << 3;
const SGI: u64 = 1 << 5;

fn mailbox(resident: u64) -> Arc<Mailbox> {
    Arc::new(Mailbox { pending: LoomWord(AtomicU64::new(0)), resident: LoomWord(AtomicU64::new(resident)) })
}

/// Model 1: a sender posts while the target leaves guest mode, and the
/// target's host, having taken nothing, decides to wait in `WFI` (its
/// check: nothing posted). A target that waits must have been kicked: the
/// sender saw it outside. Otherwise the physical SGI went to a CPU the
/// target had left and nobody wakes it: the SGI is lost.
fn post_vs_leave(full: bool) {
    loom::model(move || {
        let mb = mailbox(ROUTE);
        let kicked = Arc::new(AtomicBool::new(false));
        let sender = {
            let (mb, kicked) = (mb.clone(), kicked.clone());
            thread::spawn(move || {
                if post_with(&mb.pending, &mb.resident, SGI, full).is_none() {
                    kicked.store(true, Ordering::Relaxed);
                }
            })
        };
        leave_with(&mb.resident, full);
        let taken = take(&mb.pending);
        let waits = taken == 0 && mb.pending.load(Ordering::Acquire) == 0;
        sender.join().unwrap();
        if waits {
            assert!(kicked.load(Ordering::Relaxed), "the SGI is lost: the target waits and nobody kicks it");
        }
        // Taken once: by the host now, or on the target's next entry.
        let later = take(&mb.pending);
        assert_eq!(taken | later, SGI);
        assert_eq!(taken & later, 0, "taken twice");
    });
}

#[test]
fn loom_sgi_post_vs_leave_no_lost_sgi() {
    post_vs_leave(true);
}

/// Model 2: the same without the fences. Loom finds the target's take and
/// the sender's read of `resident` both stale.
#[test]
#[should_panic(expected = "the SGI is lost")]
fn loom_sgi_post_vs_leave_without_the_fences_loses_an_sgi() {
    post_vs_leave(false);
}

/// Model 3: a sender posts while the target enters guest mode. The SGI is
/// delivered exactly once: taken at the entry, or by the target's el2 on
/// the physical SGI (sent because the sender saw it resident), or, if the
/// sender saw it outside, after the kick at the target's next look.
#[test]
fn loom_sgi_post_vs_enter_delivers_once() {
    loom::model(|| {
        let mb = mailbox(0);
        let sender = {
            let mb = mb.clone();
            thread::spawn(move || post_with(&mb.pending, &mb.resident, SGI, true))
        };
        let at_entry = enter_with(&mb.pending, &mb.resident, ROUTE, true);
        let route = sender.join().unwrap();
        let on_sgi = if route.is_some() { take(&mb.pending) } else { 0 };
        if route.is_none() {
            // The sender saw the target outside, so the target's entry
            // (after its fence) must have found the SGI.
            assert_eq!(at_entry, SGI, "outside for the sender, yet nothing at entry");
        }
        let later = take(&mb.pending);
        assert_eq!(at_entry | on_sgi | later, SGI);
        assert_eq!(at_entry.count_ones() + on_sgi.count_ones() + later.count_ones(), 1, "delivered twice");
    });
}
