//! The paged KV cache: `[num_blocks, block_size, num_kv_heads, head_dim]` for K and for V.

use crate::dtype::Element;
use crate::error::{AttnError, Result};

/// Geometry of a paged cache, and its strides in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheLayout {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheLayout {
    pub fn new(num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> Result<Self> {
        let l = KvCacheLayout { num_blocks, block_size, num_kv_heads, head_dim };
        l.validate()?;
        Ok(l)
    }

    /// What every consumer relies on (the fields are public, so the builder and the backends
    /// check again): positive sizes, a power-of-two block size, block ids that fit the
    /// kernels' i32 block table, and a size whose element count does not overflow.
    pub fn validate(&self) -> Result<()> {
        let (num_blocks, block_size, num_kv_heads, head_dim) = (self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim);
        let bad = |m: String| Err(AttnError::InvalidConfig(m));
        if num_blocks == 0 || num_kv_heads == 0 || head_dim == 0 {
            return bad(format!("cache of {num_blocks} blocks, {num_kv_heads} kv heads, head dim {head_dim}: all must be positive"));
        }
        if !block_size.is_power_of_two() {
            return bad(format!("block size {block_size} is not a power of two"));
        }
        if num_blocks > i32::MAX as usize {
            return bad(format!("{num_blocks} blocks: block ids must fit in i32"));
        }
        let elements = num_blocks
            .checked_mul(block_size)
            .and_then(|x| x.checked_mul(num_kv_heads))
            .and_then(|x| x.checked_mul(head_dim))
            .filter(|&e| e <= isize::MAX as usize / 8);
        if elements.is_none() {
            return bad(format!("cache of {num_blocks} blocks x {block_size} tokens x {num_kv_heads} heads x {head_dim} dims is too large"));
        }
        Ok(())
    }
    pub fn capacity_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
    pub fn head_stride(&self) -> usize {
        self.head_dim
    }
    pub fn token_stride(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    pub fn block_stride(&self) -> usize {
        self.block_size * self.token_stride()
    }
    /// Elements in the K (or V) cache.
    pub fn elements(&self) -> usize {
        self.num_blocks * self.block_stride()
    }
    /// Offset of (slot, head, 0).
    pub fn offset(&self, slot: usize, head: usize) -> usize {
        slot * self.token_stride() + head * self.head_dim
    }
}

/// A paged cache in host memory (the CPU backend's, and the tests' reference copy).
#[derive(Clone, Debug)]
pub struct HostKvCache<T> {
    pub layout: KvCacheLayout,
    pub key: Vec<T>,
    pub value: Vec<T>,
}

impl<T: Element> HostKvCache<T> {
    pub fn zeros(layout: KvCacheLayout) -> Self {
        HostKvCache { layout, key: vec![T::default(); layout.elements()], value: vec![T::default(); layout.elements()] }
    }

    /// `reshape_and_cache` on the host: token `t`'s rows of `k` and `v`
    /// (`[num_tokens, num_kv_heads, head_dim]`) to slot `slot_mapping[t]`; a negative slot is
    /// padding and is skipped. The slots were validated with the metadata (inside capacity).
    pub fn write_slots(&mut self, k: &[T], v: &[T], slot_mapping: &[i64]) {
        let row = self.layout.token_stride();
        for (t, &slot) in slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let dst = self.layout.offset(slot as usize, 0);
            self.key[dst..dst + row].copy_from_slice(&k[t * row..(t + 1) * row]);
            self.value[dst..dst + row].copy_from_slice(&v[t * row..(t + 1) * row]);
        }
    }

    /// K row of (slot, head).
    pub fn key_row(&self, slot: usize, head: usize) -> &[T] {
        let o = self.layout.offset(slot, head);
        &self.key[o..o + self.layout.head_dim]
    }
    pub fn value_row(&self, slot: usize, head: usize) -> &[T] {
        let o = self.layout.offset(slot, head);
        &self.value[o..o + self.layout.head_dim]
    }
}
