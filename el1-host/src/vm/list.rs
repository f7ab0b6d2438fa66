//! The list of running VMs as every CPU reads it: an RCU-protected vector,
//! copied and replaced by its writers (publish and remove), who serialise on
//! one lock. Generic over what it lists so the protocol is tested on the
//! development host with threads as CPUs.
//!
//! The rule the writers keep: never wait for a grace period while holding
//! the writers' lock, and report quiescent states while waiting for it. A
//! writer that waits for a grace period under the lock, while another CPU
//! spins for the lock without reporting, waits for that CPU while it waits
//! for the writer (the end-of-run hang once seen with two VMs ending at
//! once; docs/run-loop.md).

use crate::rcu::{Rcu, RcuCell, ReadGuard};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// What the list is keyed by.
pub trait Listed {
    fn id(&self) -> usize;
}

pub struct VmList<T> {
    cell: RcuCell<Vec<Arc<T>>>,
    writers: spin::Mutex<()>,
}

impl<T: Listed + Send + Sync> VmList<T> {
    pub fn new() -> Self {
        Self { cell: RcuCell::new(Box::new(Vec::new())), writers: spin::Mutex::new(()) }
    }

    /// The list as it is now, for as long as `guard` is held.
    pub fn read<'a>(&'a self, guard: &'a ReadGuard<'_>) -> &'a [Arc<T>] {
        self.cell.read(guard)
    }

    /// The entry with `id`, if listed.
    pub fn find<'a>(&'a self, guard: &'a ReadGuard<'_>, id: usize) -> Option<&'a Arc<T>> {
        self.read(guard).iter().find(|v| v.id() == id)
    }

    /// The writers' lock; a CPU waiting for it holds no RCU-protected
    /// reference, so it reports quiescent states meanwhile.
    fn lock_writers(&self, rcu: &Rcu, me: usize, relax: &mut impl FnMut()) -> spin::MutexGuard<'_, ()> {
        loop {
            if let Some(guard) = self.writers.try_lock() {
                return guard;
            }
            rcu.note_quiescent(me);
            relax();
        }
    }

    /// Replaces the list with `edit(current)`, then frees the old copy after
    /// a grace period, waited for outside the writers' lock.
    fn update(&self, rcu: &Rcu, me: usize, mut relax: impl FnMut(), edit: impl FnOnce(&[Arc<T>]) -> Vec<Arc<T>>) {
        let w = self.lock_writers(rcu, me, &mut relax);
        let guard = rcu.read_lock(me);
        let next = edit(self.cell.read(&guard));
        drop(guard);
        let old = self.cell.replace(Box::new(next));
        drop(w);
        old.free_after(rcu, me, relax);
    }

    /// Adds `item` (the CPU `me` calling; `relax` while it spins).
    pub fn publish(&self, rcu: &Rcu, me: usize, relax: impl FnMut(), item: Arc<T>) {
        self.update(rcu, me, relax, |now| {
            let mut next = now.to_vec();
            next.push(item);
            next
        });
    }

    /// Takes the entry with `id` off the list; when this returns no CPU
    /// still reads it through the list.
    pub fn remove(&self, rcu: &Rcu, me: usize, relax: impl FnMut(), id: usize) {
        self.update(rcu, me, relax, |now| now.iter().filter(|v| v.id() != id).cloned().collect());
    }
}

impl<T: Listed + Send + Sync> Default for VmList<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Item {
        id: usize,
        dropped: Arc<AtomicUsize>,
    }

    impl Listed for Item {
        fn id(&self) -> usize {
            self.id
        }
    }

    impl Drop for Item {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn publish_find_and_remove() {
        let rcu = Rcu::new();
        rcu.online(0);
        let dropped = Arc::new(AtomicUsize::new(0));
        let list = VmList::new();
        for id in [3, 5] {
            list.publish(&rcu, 0, || {}, Arc::new(Item { id, dropped: dropped.clone() }));
        }
        {
            let g = rcu.read_lock(0);
            assert_eq!(list.read(&g).iter().map(|v| v.id).collect::<Vec<_>>(), [3, 5]);
            assert!(list.find(&g, 5).is_some() && list.find(&g, 4).is_none());
        }
        list.remove(&rcu, 0, || {}, 3);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "off the list and out of every copy: freed");
        let g = rcu.read_lock(0);
        assert_eq!(list.read(&g).len(), 1);
    }

    /// Two CPUs removing VMs at once, each waiting for a grace period that
    /// needs the other's quiescent state: neither may wait under the lock.
    #[test]
    fn two_writers_at_once_do_not_deadlock() {
        let rcu = Arc::new(Rcu::new());
        let list = Arc::new(VmList::new());
        let dropped = Arc::new(AtomicUsize::new(0));
        rcu.online(0);
        rcu.online(1);
        for id in 0..40 {
            list.publish(&rcu, 0, || rcu.note_quiescent(1), Arc::new(Item { id, dropped: dropped.clone() }));
        }
        // Each CPU goes on reporting quiescent states until both are done,
        // as a CPU of the host does (it goes back to its run loop).
        let done = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
        let other = {
            let (rcu, list, done) = (rcu.clone(), list.clone(), done.clone());
            std::thread::spawn(move || {
                for id in (1..40).step_by(2) {
                    list.remove(&rcu, 1, std::thread::yield_now, id);
                }
                done[1].store(true, Ordering::SeqCst);
                while !done[0].load(Ordering::SeqCst) {
                    rcu.note_quiescent(1);
                    std::thread::yield_now();
                }
            })
        };
        for id in (0..40).step_by(2) {
            list.remove(&rcu, 0, std::thread::yield_now, id);
        }
        done[0].store(true, Ordering::SeqCst);
        while !done[1].load(Ordering::SeqCst) {
            rcu.note_quiescent(0);
            std::thread::yield_now();
        }
        other.join().unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 40);
    }
}
