//! Micro-benchmark arithmetic: counter ticks to nanoseconds, and the
//! figures of a `BENCH:` line from timed batches (mean per operation), from
//! separately timed samples (median), or from separately timed operations
//! summed as they come ([`Mean`]: the mean, as kvm-unit-tests' micro-bench
//! reports).

use core::fmt;

/// One benchmark's figures, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub iterations: u64,
    pub ns_per_op: u64,
    pub min: u64,
    pub max: u64,
}

/// `BENCH: <op> iterations=<N> ns_per_op=<ns> min=<ns> max=<ns>`.
pub struct BenchLine<'a> {
    pub op: &'a str,
    pub stats: Stats,
}

impl fmt::Display for BenchLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        write!(
            f,
            "BENCH: {} iterations={} ns_per_op={} min={} max={}",
            self.op, s.iterations, s.ns_per_op, s.min, s.max
        )
    }
}

/// Nanoseconds in `ticks` of a counter at `freq` Hz (0 Hz gives 0).
pub fn ticks_to_ns(ticks: u64, freq: u64) -> u64 {
    if freq == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000_000 / u128::from(freq)).try_into().unwrap_or(u64::MAX)
}

/// From `batches` timed runs of `per_batch` operations each (ticks per
/// batch): the mean over every operation, and the means of the fastest and
/// the slowest batch as min and max. `None` with no batch or no operation.
pub fn from_batches(batches: &[u64], per_batch: u64, freq: u64) -> Option<Stats> {
    if batches.is_empty() || per_batch == 0 {
        return None;
    }
    let total: u64 = batches.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let ops = per_batch * batches.len() as u64;
    let per_op = |ticks: u64| ticks_to_ns(ticks, freq) / per_batch;
    Some(Stats {
        iterations: ops,
        ns_per_op: ticks_to_ns(total, freq) / ops,
        min: per_op(*batches.iter().min()?),
        max: per_op(*batches.iter().max()?),
    })
}

/// From separately timed operations (ticks each; sorted in place): the
/// median (the mean of the two middle samples for an even count), the
/// smallest and the largest. `None` with no sample.
pub fn from_samples(samples: &mut [u64], freq: u64) -> Option<Stats> {
    samples.sort_unstable();
    let n = samples.len();
    let median = match n {
        0 => return None,
        n if n % 2 == 1 => samples[n / 2],
        n => samples[n / 2 - 1] / 2 + samples[n / 2] / 2 + (samples[n / 2 - 1] % 2 + samples[n / 2] % 2) / 2,
    };
    Some(Stats {
        iterations: n as u64,
        ns_per_op: ticks_to_ns(median, freq),
        min: ticks_to_ns(samples[0], freq),
        max: ticks_to_ns(samples[n - 1], freq),
    })
}

/// Separately timed operations, summed as they come (no buffer, so any
/// number of them): the mean per operation as `ns_per_op` (total time over
/// the count), the fastest and the slowest as min and max.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mean {
    count: u64,
    total: u64,
    min: u64,
    max: u64,
}

impl Mean {
    pub const fn new() -> Self {
        Mean { count: 0, total: 0, min: u64::MAX, max: 0 }
    }

    /// One operation that took `ticks`.
    pub fn add(&mut self, ticks: u64) {
        self.count += 1;
        self.total = self.total.saturating_add(ticks);
        self.min = self.min.min(ticks);
        self.max = self.max.max(ticks);
    }

    /// The figures at `freq` Hz; `None` before the first [`Mean::add`].
    pub fn stats(&self, freq: u64) -> Option<Stats> {
        if self.count == 0 {
            return None;
        }
        Some(Stats {
            iterations: self.count,
            ns_per_op: ticks_to_ns(self.total, freq) / self.count,
            min: ticks_to_ns(self.min, freq),
            max: ticks_to_ns(self.max, freq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GHZ: u64 = 1_000_000_000;

    #[test]
    fn ns() {
        assert_eq!(ticks_to_ns(1, 62_500_000), 16);
        assert_eq!(ticks_to_ns(62_500_000, 62_500_000), GHZ);
        assert_eq!(ticks_to_ns(7, 0), 0);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn batches() {
        let s = from_batches(&[100, 120, 80, 100], 10, GHZ).unwrap();
        assert_eq!(s, Stats { iterations: 40, ns_per_op: 10, min: 8, max: 12 });
        let s = from_batches(&[7], 2, 62_500_000).unwrap();
        assert_eq!(s, Stats { iterations: 2, ns_per_op: 56, min: 56, max: 56 });
        assert_eq!(from_batches(&[], 10, GHZ), None);
        assert_eq!(from_batches(&[5], 0, GHZ), None);
    }

    #[test]
    fn samples() {
        let mut odd = [9, 1, 5];
        assert_eq!(from_samples(&mut odd, GHZ), Some(Stats { iterations: 3, ns_per_op: 5, min: 1, max: 9 }));
        let mut even = [4, 1, 3, 10];
        assert_eq!(from_samples(&mut even, GHZ), Some(Stats { iterations: 4, ns_per_op: 3, min: 1, max: 10 }));
        let mut big = [u64::MAX, u64::MAX];
        assert_eq!(from_samples(&mut big, GHZ).unwrap().ns_per_op, u64::MAX);
        let mut halves = [3, 5];
        assert_eq!(from_samples(&mut halves, GHZ).unwrap().ns_per_op, 4);
        assert_eq!(from_samples(&mut [], GHZ), None);
    }

    #[test]
    fn mean() {
        assert_eq!(Mean::new().stats(GHZ), None);
        let mut m = Mean::new();
        for t in [10, 4, 7, 100] {
            m.add(t);
        }
        assert_eq!(m.stats(GHZ), Some(Stats { iterations: 4, ns_per_op: 30, min: 4, max: 100 }));
        // At 62.5 MHz a tick is 16 ns: 3 ticks over 2 operations.
        let mut m = Mean::new();
        m.add(1);
        m.add(2);
        assert_eq!(m.stats(62_500_000), Some(Stats { iterations: 2, ns_per_op: 24, min: 16, max: 32 }));
        let mut m = Mean::new();
        m.add(u64::MAX);
        m.add(u64::MAX);
        assert_eq!(m.stats(GHZ).unwrap().ns_per_op, u64::MAX / 2, "the total saturates");
        let mut one = Mean::new();
        one.add(0);
        assert_eq!(one.stats(GHZ), Some(Stats { iterations: 1, ns_per_op: 0, min: 0, max: 0 }));
    }

    #[test]
    fn line() {
        let stats = Stats { iterations: 4096, ns_per_op: 1480, min: 1400, max: 2000 };
        assert_eq!(
            BenchLine { op: "hvc", stats }.to_string(),
            "BENCH: hvc iterations=4096 ns_per_op=1480 min=1400 max=2000"
        );
    }
}
