//! Reproducible workloads: a small PRNG, random tensors (never zeros), the ragged-length
//! generator of benches/WORKLOADS.md, and scheduler steps with shuffled block ids. Used by the
//! demo, the GPU tests and the benchmarks.

use crate::dtype::Element;
use crate::metadata::{RequestSchedule, SchedulerOutput};

/// SplitMix64: tiny, fast, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (the same sequence on every machine).
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)`. Cannot fail: `n = 0` (an empty range, which has no index) gives
    /// 0, as `n = 1` does, rather than dividing by zero.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in `lo..=hi`. Cannot fail: bounds in the wrong order are swapped, and
    /// `0..=usize::MAX` is drawn without overflow.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64() as usize,
        }
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// `n` values uniform in [-1, 1), never all zero, rounded to `T`.
pub fn random_values<T: Element>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.uniform())).collect()
}

/// benches/WORKLOADS.md's ragged lengths in `[lo, hi]`: request i gets
/// `lo + (x_{i+1} >> 33) % (hi - lo + 1)` with the LCG
/// `x_{k+1} = x_k * 6364136223846793005 + 1442695040888963407 (mod 2^64)`, `x_0 = 0`.
///
/// Example: D4 (128 requests in [128, 8192]) starts 6375, 4417, 5365, 5284, 6633.
pub fn ragged_lengths(lo: usize, hi: usize, n: usize) -> Vec<usize> {
    let mut x: u64 = 0;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + ((x >> 33) % (hi - lo + 1) as u64) as usize
        })
        .collect()
}

/// A step for requests of `(tokens already cached, new tokens)`, each given exactly the
/// blocks it needs, drawn from a shuffled pool of `num_blocks` (so block tables are
/// permuted). Returns `None` if the pool is too small.
pub fn schedule(rng: &mut Rng, shapes: &[(usize, usize)], block_size: usize, num_blocks: usize) -> Option<SchedulerOutput> {
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    rng.shuffle(&mut pool);
    let mut next = 0;
    let mut requests = Vec::with_capacity(shapes.len());
    for &(computed, new) in shapes {
        let needed = (computed + new).div_ceil(block_size);
        if next + needed > pool.len() {
            return None;
        }
        requests.push(RequestSchedule { num_computed_tokens: computed, num_new_tokens: new, block_ids: pool[next..next + needed].to_vec() });
        next += needed;
    }
    Some(SchedulerOutput { requests })
}

/// Blocks a set of request shapes needs.
pub fn blocks_needed(shapes: &[(usize, usize)], block_size: usize) -> usize {
    shapes.iter().map(|&(c, n)| (c + n).div_ceil(block_size)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d4_lengths_match_benchmarks_md() {
        let l = ragged_lengths(128, 8192, 128);
        assert_eq!(&l[..5], &[6375, 4417, 5365, 5284, 6633]);
        assert_eq!(l.iter().sum::<usize>(), 559_504);
        assert_eq!((*l.iter().min().unwrap(), *l.iter().max().unwrap()), (253, 8184));
    }

    #[test]
    fn rng_bounds_cannot_fail() {
        let mut r = Rng::new(3);
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
        for _ in 0..100 {
            assert!((4..=9).contains(&r.range(9, 4)));
            assert!(r.below(7) < 7);
        }
        let _ = r.range(0, usize::MAX);
    }
}
