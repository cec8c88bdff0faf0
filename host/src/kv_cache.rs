//! The paged KV cache: `[num_blocks, block_size, num_kv_heads, head_dim]` for K and for V.

use crate::dtype::{Element, KvCacheDType};
use crate::error::{AttnError, Result};

/// Geometry of a paged cache, and its strides in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheLayout {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The stored element: the model's dtype (`Auto`) or fp8 e4m3 with scales.
    pub kv_dtype: KvCacheDType,
}

impl KvCacheLayout {
    pub fn new(num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> Result<Self> {
        let l = KvCacheLayout { num_blocks, block_size, num_kv_heads, head_dim, kv_dtype: KvCacheDType::Auto };
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
    /// The same geometry with another stored element.
    pub fn with_kv_dtype(self, kv_dtype: KvCacheDType) -> Self {
        KvCacheLayout { kv_dtype, ..self }
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
    /// padding and is skipped. Checks everything first and writes nothing on an error: k and
    /// v hold one row per slot, and every slot lies inside the cache.
    pub fn write_slots(&mut self, k: &[T], v: &[T], slot_mapping: &[i64]) -> Result<()> {
        let row = self.layout.token_stride();
        let want = slot_mapping.len().checked_mul(row);
        for (what, got) in [("k", k.len()), ("v", v.len())] {
            if Some(got) != want {
                return Err(AttnError::LengthMismatch {
                    what,
                    detail: format!("{got} elements for {} slots of {} kv heads x head dim {}", slot_mapping.len(), self.layout.num_kv_heads, self.layout.head_dim),
                });
            }
        }
        let capacity = self.layout.capacity_slots();
        if let Some((token, &slot)) = slot_mapping.iter().enumerate().find(|&(_, &s)| s >= 0 && s as usize >= capacity) {
            return Err(AttnError::SlotOutOfRange { token, slot, capacity });
        }
        for (t, &slot) in slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let dst = self.layout.offset(slot as usize, 0);
            self.key[dst..dst + row].copy_from_slice(&k[t * row..(t + 1) * row]);
            self.value[dst..dst + row].copy_from_slice(&v[t * row..(t + 1) * row]);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_slots_checks_before_writing() {
        let layout = KvCacheLayout::new(2, 2, 1, 2).unwrap();
        let mut c = HostKvCache::<f32>::zeros(layout);
        let kv = [1.0f32, 2.0, 3.0, 4.0];
        // Slot 4 is past the 4-slot capacity: an error naming token and slot; nothing written.
        let e = c.write_slots(&kv, &kv, &[1, 4]).unwrap_err();
        assert!(matches!(e, AttnError::SlotOutOfRange { token: 1, slot: 4, capacity: 4 }), "{e}");
        let e = c.write_slots(&kv[..3], &kv, &[1, 2]).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "k", .. }), "{e}");
        assert!(c.key.iter().chain(&c.value).all(|&x| x == 0.0));
        // Padding (-1) is skipped; token 1 lands at slot 2 (block 1, offset 0).
        c.write_slots(&kv, &kv, &[-1, 2]).unwrap();
        assert_eq!(c.key, vec![0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0]);
    }
}
