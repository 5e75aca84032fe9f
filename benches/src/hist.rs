//! A log-linear latency histogram (HDR-style, about 0.8 % precision) that merges across
//! threads and worker processes.
//!
//! Values (microseconds in the load generator) below 256 are counted exactly; above, each
//! power of two is split into 128 linear buckets, so a reported percentile is at most 1/128
//! above the true value. [`AtomicHistogram`] is the lock-free recorder shared by the tasks of
//! one process; [`Histogram`] is its snapshot, serialized sparsely as `[[bucket, count], ...]`
//! so worker processes can send theirs to the parent, which [`Histogram::merge`]s them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Number of buckets: enough for any `u64`.
const BUCKETS: usize = ((64 - SUB_BITS as usize) * SUB as usize) + SUB as usize;

/// The bucket of `v`.
fn index(v: u64) -> usize {
    if v < 2 * SUB {
        v as usize
    } else {
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        ((u64::from(shift) + 1) * SUB + ((v >> shift) - SUB)) as usize
    }
}

/// The highest value that falls in bucket `i`.
fn highest(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        i
    } else {
        let shift = i / SUB - 1;
        let mant = u128::from(i % SUB + SUB);
        let top = ((mant + 1) << shift) - 1;
        u64::try_from(top).unwrap_or(u64::MAX)
    }
}

/// A histogram of `u64` values with percentiles. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SparseHistogram", into = "SparseHistogram")]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact), 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Add `other`'s counts to this one.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest bucket top such that at least
    /// `ceil(q * count)` values are at or below it, capped at the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The float product is exact enough for counts below 2^52.
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest(i).min(self.max);
            }
        }
        self.max
    }
}

/// The wire form of a [`Histogram`]: only the non-empty buckets.
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    max: u64,
    buckets: Vec<(u32, u64)>,
}

impl From<Histogram> for SparseHistogram {
    fn from(h: Histogram) -> Self {
        let buckets = h
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect();
        Self {
            max: h.max,
            buckets,
        }
    }
}

impl From<SparseHistogram> for Histogram {
    fn from(s: SparseHistogram) -> Self {
        let mut h = Self::new();
        for (i, c) in s.buckets {
            // A bucket index out of range (a corrupt line) is folded into the last bucket.
            let i = (i as usize).min(BUCKETS - 1);
            h.counts[i] += c;
            h.total += c;
        }
        h.max = s.max;
        h
    }
}

/// A histogram many tasks record into at once (relaxed atomics, no lock).
#[derive(Debug)]
pub struct AtomicHistogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one value.
    pub fn record(&self, v: u64) {
        self.counts[index(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total = counts.iter().sum();
        Histogram {
            counts,
            total,
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut last = 0;
        for v in (0..5000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let i = index(v);
            assert!(i >= last, "index({v}) = {i} went back from {last}");
            assert!(highest(i) >= v, "bucket {i} top {} below {v}", highest(i));
            if i > 0 {
                assert!(highest(i - 1) < v, "value {v} also fits bucket {}", i - 1);
            }
            last = i;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(highest(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn precision_is_within_one_percent() {
        for v in [300_u64, 1_000, 12_345, 1_000_000, 987_654_321] {
            let top = highest(index(v));
            assert!((top - v) as f64 <= v as f64 / 100.0, "{v} -> {top}");
        }
    }

    #[test]
    fn quantiles_of_one_to_a_thousand() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        // Exact below 256, within a bucket (<1 %) above.
        assert_eq!(h.quantile(0.1), 100);
        let p50 = h.quantile(0.5);
        assert!((500..=503).contains(&p50), "p50 {p50}");
        let p99 = h.quantile(0.99);
        assert!((990..=997).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.max(), 1000);
    }

    #[test]
    fn empty_and_single() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        let mut h = Histogram::new();
        h.record(123_456);
        assert_eq!(h.quantile(0.5), 123_456, "capped at the exact max");
    }

    #[test]
    fn merge_and_wire_round_trip() {
        let a = AtomicHistogram::new();
        let mut b = Histogram::new();
        for v in 0..100 {
            a.record(v * 10);
            b.record(v * 10 + 5_000);
        }
        let mut m = a.snapshot();
        m.merge(&b);
        assert_eq!(m.count(), 200);
        assert_eq!(m.max(), 5_990);
        assert!(
            (990..=993).contains(&m.quantile(0.5)),
            "{}",
            m.quantile(0.5)
        );
        assert!(m.quantile(0.51) >= 5_000);
        let text = serde_json::to_string(&m).unwrap();
        let back: Histogram = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }
}
