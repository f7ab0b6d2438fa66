//! The power state of every CPU as el2 tracks it, and the PSCI `CPU_ON`,
//! `CPU_OFF` and `AFFINITY_INFO` rules on top of it.
//!
//! el2 brings every CPU up at boot and parks it; the host then starts it with
//! PSCI `CPU_ON`. Two racing `CPU_ON` calls for one CPU get exactly one
//! `SUCCESS`: the winner moves the CPU from `Parked`/`Off` to `Claimed` with a
//! compare-and-swap before it writes the entry point, and publishes the entry
//! with a release store of `OnPending` that the parked CPU reads with acquire.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use ferrovisor_shared::boot::MAX_CPUS;
use smccc::psci::error as psci;

/// One CPU's state.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// No CPU in this slot.
    Absent = 0,
    /// el2 is starting it.
    Booting = 1,
    /// Runs el2's park loop, waiting for `CPU_ON`; the host sees it off.
    Parked = 2,
    /// A `CPU_ON` won the race and is writing the entry point.
    Claimed = 3,
    /// The entry point is published; the CPU has not entered the host yet.
    OnPending = 4,
    /// Runs the host.
    On = 5,
    /// Powered off through firmware (PSCI `CPU_OFF`).
    Off = 6,
    /// el2 could not start it.
    Failed = 7,
}

impl PowerState {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Booting,
            2 => Self::Parked,
            3 => Self::Claimed,
            4 => Self::OnPending,
            5 => Self::On,
            6 => Self::Off,
            7 => Self::Failed,
            _ => Self::Absent,
        }
    }
}

/// What the caller of [`CpuTable::claim`] must do to finish a `CPU_ON`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The CPU waits in el2's park loop: send an event.
    Parked,
    /// The CPU is off in firmware: start it there at el2's secondary entry.
    Firmware,
}

/// The state of all CPUs, shared by every CPU running el2. `mpidr` comes
/// first: the secondary entry code scans it with the MMU off.
#[repr(C)]
pub struct CpuTable {
    mpidr: [AtomicU64; MAX_CPUS],
    state: [AtomicU32; MAX_CPUS],
    entry: [AtomicU64; MAX_CPUS],
    context: [AtomicU64; MAX_CPUS],
}

/// The affinity bits of an MPIDR (Aff3, Aff2, Aff1, Aff0).
pub use ferrovisor_shared::gic::MPIDR_AFFINITY_MASK;

/// A slot no MPIDR matches.
const NO_MPIDR: u64 = u64::MAX;

#[allow(clippy::declare_interior_mutable_const)]
const NO_CPU: AtomicU64 = AtomicU64::new(NO_MPIDR);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ABSENT: AtomicU32 = AtomicU32::new(PowerState::Absent as u32);

impl CpuTable {
    pub const fn new() -> Self {
        Self {
            mpidr: [NO_CPU; MAX_CPUS],
            state: [ABSENT; MAX_CPUS],
            entry: [ZERO64; MAX_CPUS],
            context: [ZERO64; MAX_CPUS],
        }
    }

    /// Records a CPU the device tree lists. Called by the boot CPU before any
    /// other CPU runs.
    pub fn add(&self, index: usize, mpidr: u64) {
        self.mpidr[index].store(mpidr & MPIDR_AFFINITY_MASK, Ordering::Relaxed);
        self.set(index, PowerState::Booting);
    }

    /// The slot of the CPU with this MPIDR.
    pub fn index_of(&self, mpidr: u64) -> Option<usize> {
        let mpidr = mpidr & MPIDR_AFFINITY_MASK;
        self.mpidr.iter().position(|m| m.load(Ordering::Relaxed) == mpidr)
    }

    pub fn mpidr(&self, index: usize) -> u64 {
        self.mpidr[index].load(Ordering::Relaxed)
    }

    pub fn state(&self, index: usize) -> PowerState {
        PowerState::from_u32(self.state[index].load(Ordering::Acquire))
    }

    pub fn set(&self, index: usize, state: PowerState) {
        self.state[index].store(state as u32, Ordering::Release);
    }

    /// The first half of PSCI `CPU_ON`: wins the CPU for this call or says why not.
    ///
    /// # Errors
    /// The PSCI error the caller returns: `INVALID_PARAMETERS` for an unknown
    /// MPIDR, `ALREADY_ON`, `ON_PENDING`, or `INTERNAL_FAILURE` for a CPU el2
    /// could not start.
    pub fn claim(&self, target_mpidr: u64, entry: u64, context: u64) -> Result<(usize, Wake), i32> {
        if target_mpidr & !MPIDR_AFFINITY_MASK != 0 {
            return Err(psci::INVALID_PARAMETERS);
        }
        let index = self.index_of(target_mpidr).ok_or(psci::INVALID_PARAMETERS)?;
        let slot = &self.state[index];
        loop {
            let current = PowerState::from_u32(slot.load(Ordering::Acquire));
            let wake = match current {
                PowerState::Parked => Wake::Parked,
                PowerState::Off => Wake::Firmware,
                PowerState::On => return Err(psci::ALREADY_ON),
                PowerState::Claimed | PowerState::OnPending | PowerState::Booting => return Err(psci::ON_PENDING),
                PowerState::Failed | PowerState::Absent => return Err(psci::INTERNAL_FAILURE),
            };
            if slot
                .compare_exchange(current as u32, PowerState::Claimed as u32, Ordering::Acquire, Ordering::Acquire)
                .is_ok()
            {
                self.entry[index].store(entry, Ordering::Relaxed);
                self.context[index].store(context, Ordering::Relaxed);
                self.set(index, PowerState::OnPending);
                return Ok((index, wake));
            }
        }
    }

    /// On a CPU that has just reached el2: `Booting` becomes `Parked` (any
    /// other state, such as a pending `CPU_ON`, stays).
    pub fn mark_booted(&self, index: usize) {
        let _ = self.state[index].compare_exchange(
            PowerState::Booting as u32,
            PowerState::Parked as u32,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Undoes a claim whose firmware `CPU_ON` failed.
    pub fn unclaim(&self, index: usize) {
        self.set(index, PowerState::Off);
    }

    /// On the target CPU: takes the entry point and context a `CPU_ON`
    /// published, marking the CPU on. `None` while nothing is published.
    pub fn take_entry(&self, index: usize) -> Option<(u64, u64)> {
        let slot = &self.state[index];
        if slot
            .compare_exchange(PowerState::OnPending as u32, PowerState::On as u32, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some((self.entry[index].load(Ordering::Relaxed), self.context[index].load(Ordering::Relaxed)))
        } else {
            None
        }
    }

    /// PSCI `AFFINITY_INFO` at level 0.
    ///
    /// # Errors
    /// `INVALID_PARAMETERS` for an unknown MPIDR or a level other than 0.
    pub fn affinity_info(&self, target_mpidr: u64, lowest_level: u64) -> Result<i32, i32> {
        if lowest_level != 0 || target_mpidr & !MPIDR_AFFINITY_MASK != 0 {
            return Err(psci::INVALID_PARAMETERS);
        }
        let index = self.index_of(target_mpidr).ok_or(psci::INVALID_PARAMETERS)?;
        Ok(match self.state(index) {
            PowerState::On => 0,
            PowerState::Claimed | PowerState::OnPending => 2,
            _ => 1,
        })
    }
}

impl Default for CpuTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn table() -> CpuTable {
        let t = CpuTable::new();
        for i in 0..4 {
            t.add(i, i as u64);
        }
        t.set(0, PowerState::On);
        t.set(1, PowerState::Parked);
        t.set(2, PowerState::Off);
        t.set(3, PowerState::Failed);
        t
    }

    #[test]
    fn cpu_on_follows_psci() {
        let t = table();
        assert_eq!(t.claim(0, 0x1000, 7), Err(psci::ALREADY_ON));
        assert_eq!(t.claim(1, 0x1000, 7), Ok((1, Wake::Parked)));
        assert_eq!(t.claim(1, 0x1000, 7), Err(psci::ON_PENDING));
        assert_eq!(t.affinity_info(1, 0), Ok(2));
        assert_eq!(t.take_entry(1), Some((0x1000, 7)));
        assert_eq!(t.take_entry(1), None);
        assert_eq!(t.affinity_info(1, 0), Ok(0));
        assert_eq!(t.claim(2, 0x2000, 0), Ok((2, Wake::Firmware)));
        t.unclaim(2);
        assert_eq!(t.affinity_info(2, 0), Ok(1));
        assert_eq!(t.claim(3, 0, 0), Err(psci::INTERNAL_FAILURE));
        assert_eq!(t.claim(9, 0, 0), Err(psci::INVALID_PARAMETERS));
        assert_eq!(t.claim(1 << 40 | 1, 0, 0), Err(psci::INVALID_PARAMETERS));
        assert_eq!(t.affinity_info(0, 1), Err(psci::INVALID_PARAMETERS));
    }

    #[test]
    fn mpidr_lookup_ignores_non_affinity_bits() {
        let t = CpuTable::new();
        t.add(0, 0x8000_0100);
        assert_eq!(t.index_of(0x100), Some(0));
        assert_eq!(t.index_of(0x8000_0100), Some(0));
        assert_eq!(t.index_of(0x200), None);
    }

    #[test]
    fn racing_cpu_on_calls_give_one_success() {
        for _ in 0..200 {
            let t = Arc::new(table());
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let t = Arc::clone(&t);
                    std::thread::spawn(move || t.claim(1, 0x1000 + i, i))
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
            assert!(results.iter().all(|r| r.is_ok() || *r == Err(psci::ON_PENDING)));
            let (entry, ctx) = t.take_entry(1).unwrap();
            assert_eq!(entry - 0x1000, ctx, "entry and context come from the same call");
        }
    }
}
