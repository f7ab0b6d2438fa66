//! The life of the VMs as a whole: start-up publishes them while holding
//! the tally, each ends by being taken off the list and freed after a grace
//! period, and the board's status comes out exactly once, when the last VM
//! has ended and start-up is over. Generic over the VM so that the rules
//! are tested on the development host; `vm::registry` is the board's.

use super::list::{Listed, VmList};
use super::outcome::{Tally, Verdict};
use crate::rcu::Rcu;
use alloc::sync::Arc;

pub struct Registry<T> {
    list: VmList<T>,
    tally: Tally,
}

impl<T: Listed + Send + Sync> Registry<T> {
    pub fn new() -> Self {
        Self { list: VmList::new(), tally: Tally::new() }
    }

    /// The list, for readers holding an RCU read guard.
    pub fn list(&self) -> &VmList<T> {
        &self.list
    }

    /// Runs `create_all`, which publishes VMs and returns how many started,
    /// with start-up counted as one VM still to end: a VM that ends before
    /// the next is published is then not the last. The board's status when
    /// every VM ended before start-up was over; `None` also when none
    /// started (the caller decides what an empty board does).
    pub fn start(&self, create_all: impl FnOnce() -> usize) -> Option<u32> {
        self.tally.hold();
        let started = create_all();
        if started > 0 {
            self.tally.release()
        } else {
            None
        }
    }

    /// A VM the configuration asked for could not be created.
    pub fn refused(&self) {
        self.tally.refused();
    }

    /// Lists `vm` (CPU `me` calling; `relax` while it spins).
    pub fn publish(&self, rcu: &Rcu, me: usize, relax: impl FnMut(), vm: Arc<T>) {
        self.tally.hold();
        self.list.publish(rcu, me, relax, vm);
    }

    /// `vm` ended with `verdict`: off the list, and once no CPU can still
    /// read it, dropped (freed, if this was the last reference). The
    /// board's status if it was the last VM to end.
    pub fn finish(&self, rcu: &Rcu, me: usize, relax: impl FnMut(), vm: Arc<T>, verdict: Verdict) -> Option<u32> {
        self.list.remove(rcu, me, relax, vm.id());
        drop(vm);
        self.tally.ended(verdict)
    }
}

impl<T: Listed + Send + Sync> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::vec::Vec;

    struct FakeVm {
        id: usize,
        freed: Arc<AtomicUsize>,
    }

    impl Listed for FakeVm {
        fn id(&self) -> usize {
            self.id
        }
    }

    impl Drop for FakeVm {
        fn drop(&mut self) {
            self.freed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn vm(id: usize, freed: &Arc<AtomicUsize>) -> Arc<FakeVm> {
        Arc::new(FakeVm { id, freed: freed.clone() })
    }

    fn one_cpu() -> Rcu {
        let rcu = Rcu::new();
        rcu.online(0);
        rcu
    }

    #[test]
    fn the_status_comes_after_the_last_vm_and_not_before() {
        let (rcu, freed) = (one_cpu(), Arc::new(AtomicUsize::new(0)));
        let reg = Registry::new();
        let (a, b) = (vm(0, &freed), vm(1, &freed));
        let status = reg.start(|| {
            reg.publish(&rcu, 0, || {}, a.clone());
            reg.publish(&rcu, 0, || {}, b.clone());
            2
        });
        assert_eq!(status, None, "both still run");
        assert_eq!(reg.finish(&rcu, 0, || {}, a, Verdict::Pass), None, "b still runs");
        assert_eq!(reg.finish(&rcu, 0, || {}, b, Verdict::Skip), Some(0), "a pass and a skip pass");
        assert_eq!(freed.load(Ordering::SeqCst), 2);
    }

    /// The first VM can end before the second is even created: it is not
    /// the last, because start-up holds the tally.
    #[test]
    fn a_vm_that_ends_during_start_up_is_not_the_last() {
        let (rcu, freed) = (one_cpu(), Arc::new(AtomicUsize::new(0)));
        let reg = Registry::new();
        let b = vm(1, &freed);
        let status = reg.start(|| {
            let a = vm(0, &freed);
            reg.publish(&rcu, 0, || {}, a.clone());
            assert_eq!(reg.finish(&rcu, 0, || {}, a, Verdict::Pass), None, "start-up is not over");
            reg.publish(&rcu, 0, || {}, b.clone());
            2
        });
        assert_eq!(status, None);
        assert_eq!(reg.finish(&rcu, 0, || {}, b, Verdict::Fail(3)), Some(3), "the failure's code");
    }

    #[test]
    fn every_vm_ended_before_start_up_was_over() {
        let (rcu, freed) = (one_cpu(), Arc::new(AtomicUsize::new(0)));
        let reg = Registry::new();
        let status = reg.start(|| {
            let a = vm(0, &freed);
            reg.publish(&rcu, 0, || {}, a.clone());
            assert_eq!(reg.finish(&rcu, 0, || {}, a, Verdict::Pass), None);
            1
        });
        assert_eq!(status, Some(0), "start-up itself gives the status");
    }

    #[test]
    fn a_refused_vm_fails_the_board() {
        let (rcu, freed) = (one_cpu(), Arc::new(AtomicUsize::new(0)));
        let reg = Registry::new();
        let a = vm(0, &freed);
        assert_eq!(
            reg.start(|| {
                reg.refused();
                reg.publish(&rcu, 0, || {}, a.clone());
                1
            }),
            None
        );
        assert_eq!(reg.finish(&rcu, 0, || {}, a, Verdict::Pass), Some(1));
    }

    #[test]
    fn finish_unlists_then_frees_the_last_reference() {
        let (rcu, freed) = (one_cpu(), Arc::new(AtomicUsize::new(0)));
        let reg = Registry::new();
        let a = vm(7, &freed);
        reg.start(|| {
            reg.publish(&rcu, 0, || {}, a.clone());
            1
        });
        {
            let g = rcu.read_lock(0);
            assert!(reg.list().find(&g, 7).is_some());
        }
        let held = a.clone();
        assert_eq!(reg.finish(&rcu, 0, || {}, a, Verdict::Pass), Some(0));
        let g = rcu.read_lock(0);
        assert!(reg.list().find(&g, 7).is_none(), "unlisted");
        assert_eq!(freed.load(Ordering::SeqCst), 0, "a reference held elsewhere keeps it");
        drop(g);
        drop(held);
        assert_eq!(freed.load(Ordering::SeqCst), 1);
    }

    /// VMs ending on several CPUs at once: exactly one of them sees the
    /// board's status, after every VM was freed.
    #[test]
    fn concurrent_ends_give_the_status_once() {
        const CPUS: usize = 3;
        const PER_CPU: usize = 8;
        let rcu = Arc::new(Rcu::new());
        for c in 0..CPUS {
            rcu.online(c);
        }
        let freed = Arc::new(AtomicUsize::new(0));
        let reg = Arc::new(Registry::new());
        let vms: Vec<_> = (0..CPUS * PER_CPU).map(|id| vm(id, &freed)).collect();
        let quiet = |rcu: &Rcu| (0..CPUS).for_each(|c| rcu.note_quiescent(c));
        assert_eq!(
            reg.start(|| {
                for v in &vms {
                    reg.publish(&rcu, 0, || quiet(&rcu), v.clone());
                }
                vms.len()
            }),
            None
        );
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let mut vms = vms.into_iter();
        let threads: Vec<_> = (0..CPUS)
            .map(|cpu| {
                let mine: Vec<_> = vms.by_ref().take(PER_CPU).collect();
                let (rcu, reg, statuses, done) = (rcu.clone(), reg.clone(), statuses.clone(), done.clone());
                std::thread::spawn(move || {
                    for v in mine {
                        if let Some(s) = reg.finish(&rcu, cpu, std::thread::yield_now, v, Verdict::Pass) {
                            statuses.lock().unwrap().push(s);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    // Back in its run loop, the CPU goes on reporting.
                    while done.load(Ordering::SeqCst) < CPUS {
                        rcu.note_quiescent(cpu);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*statuses.lock().unwrap(), [0]);
        assert_eq!(freed.load(Ordering::SeqCst), CPUS * PER_CPU);
    }
}
