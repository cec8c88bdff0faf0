//! The paged KV cache: `[num_blocks, block_size, num_kv_heads, head_dim]` for K and for V.
//!
//! A cache of the model's dtype holds the values ([`HostKvCache<T>`], `T: Element`); an fp8
//! cache ([`KvCacheDType::Fp8E4m3`]) holds the e4m3 bytes as stored ([`HostKvCache<u8>`]),
//! whose values are `byte * scale` with the [`KvScales`] of the element's kv head.

use crate::dtype::{Element, KvCacheDType};
use crate::error::{AttnError, Result};
use crate::fp8::{dequantize_e4m3, quantize_e4m3, quantize_latent_row, widen_latent_row, KvScales, LATENT_ROW_BYTES};

/// Geometry of a paged cache, its strides in elements, and its element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheLayout {
    /// Physical blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per block (a power of two).
    pub block_size: usize,
    /// KV heads a token holds (1 for MLA's latent cache).
    pub num_kv_heads: usize,
    /// Elements a head's row holds (MLA: the latent width).
    pub head_dim: usize,
    /// What the cache stores: the model's dtype (`Auto`, the default) or fp8 bytes. Part of
    /// the layout: metadata, steps and layers of one cache are built from the same layout.
    pub kv_dtype: KvCacheDType,
}

impl KvCacheLayout {
    /// A validated layout of the model's dtype (`kv_dtype = Auto`; see [`KvCacheLayout::with_kv_dtype`]).
    pub fn new(num_blocks: usize, block_size: usize, num_kv_heads: usize, head_dim: usize) -> Result<Self> {
        let l = KvCacheLayout { num_blocks, block_size, num_kv_heads, head_dim, kv_dtype: KvCacheDType::Auto };
        l.validate()?;
        Ok(l)
    }

    /// The same geometry storing `kv` elements.
    pub fn with_kv_dtype(self, kv: KvCacheDType) -> Self {
        KvCacheLayout { kv_dtype: kv, ..self }
    }

    /// Whether `other` has this layout's geometry (blocks, block size, heads, head dim),
    /// whatever either stores.
    pub fn same_geometry(&self, other: &KvCacheLayout) -> bool {
        self.with_kv_dtype(KvCacheDType::Auto) == other.with_kv_dtype(KvCacheDType::Auto)
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
    /// Slots (token rows) in the cache.
    pub fn capacity_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
    /// Elements between two heads of a slot.
    pub fn head_stride(&self) -> usize {
        self.head_dim
    }
    /// Elements between two slots.
    pub fn token_stride(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Elements between two blocks.
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

/// A paged cache in host memory (the CPU backend's, and the tests' reference copy):
/// `HostKvCache<T>` with `T: Element` holds values; `HostKvCache<u8>` an fp8 cache's bytes.
#[derive(Clone, Debug)]
pub struct HostKvCache<T> {
    /// The cache's geometry.
    pub layout: KvCacheLayout,
    /// `[num_blocks, block_size, num_kv_heads, head_dim]` keys (MLA: the latent rows).
    pub key: Vec<T>,
    /// Values, as `key` (MLA: empty or unused).
    pub value: Vec<T>,
}

impl<T> HostKvCache<T> {
    /// K row of (slot, head).
    pub fn key_row(&self, slot: usize, head: usize) -> &[T] {
        let o = self.layout.offset(slot, head);
        &self.key[o..o + self.layout.head_dim]
    }

    /// V row of (slot, head).
    pub fn value_row(&self, slot: usize, head: usize) -> &[T] {
        let o = self.layout.offset(slot, head);
        &self.value[o..o + self.layout.head_dim]
    }

    /// Key and value vectors of the layout's size; a [`AttnError::LengthMismatch`] otherwise.
    pub fn check_lengths(&self) -> Result<()> {
        let n = self.layout.elements();
        if self.key.len() == n && self.value.len() == n {
            return Ok(());
        }
        Err(AttnError::LengthMismatch { what: "kv cache", detail: format!("{} key and {} value elements for a layout of {n}", self.key.len(), self.value.len()) })
    }

    /// The checks of a cache write of `k_len`, `v_len` elements to `slot_mapping`: one row
    /// per slot in each, every slot inside the cache.
    fn check_write(&self, k_len: usize, v_len: usize, slot_mapping: &[i64]) -> Result<()> {
        let want = slot_mapping.len().checked_mul(self.layout.token_stride());
        for (what, got) in [("k", k_len), ("v", v_len)] {
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
        Ok(())
    }

    /// Token `t`'s rows of `k`, `v` to slot `slot_mapping[t]` (negative: skipped), element
    /// `(t, head, d)` converted by `conv_k(head, x)` / `conv_v(head, x)`. After [`Self::check_write`].
    fn write_rows<S: Copy>(&mut self, k: &[S], v: &[S], slot_mapping: &[i64], conv_k: impl Fn(usize, S) -> T, conv_v: impl Fn(usize, S) -> T) {
        let (row, d) = (self.layout.token_stride(), self.layout.head_dim);
        for (t, &slot) in slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let dst = self.layout.offset(slot as usize, 0);
            let src = t * row..(t + 1) * row;
            for (i, (dk, &x)) in self.key[dst..dst + row].iter_mut().zip(&k[src.clone()]).enumerate() {
                *dk = conv_k(i / d, x);
            }
            for (i, (dv, &x)) in self.value[dst..dst + row].iter_mut().zip(&v[src]).enumerate() {
                *dv = conv_v(i / d, x);
            }
        }
    }
}

impl<T: Element> HostKvCache<T> {
    /// A zeroed cache of `layout`.
    pub fn zeros(layout: KvCacheLayout) -> Self {
        HostKvCache { layout, key: vec![T::default(); layout.elements()], value: vec![T::default(); layout.elements()] }
    }

    /// `reshape_and_cache` on the host: token `t`'s rows of `k` and `v`
    /// (`[num_tokens, num_kv_heads, head_dim]`) to slot `slot_mapping[t]`; a negative slot is
    /// padding and is skipped. Checks everything first and writes nothing on an error: k and
    /// v hold one row per slot, and every slot lies inside the cache.
    pub fn write_slots(&mut self, k: &[T], v: &[T], slot_mapping: &[i64]) -> Result<()> {
        self.check_write(k.len(), v.len(), slot_mapping)?;
        self.write_rows(k, v, slot_mapping, |_, x| x, |_, x| x);
        Ok(())
    }
}

impl HostKvCache<u8> {
    /// A zeroed fp8 cache (every byte `0x00`, the value 0) of `layout`'s geometry; its
    /// layout's `kv_dtype` is `Fp8E4m3` whatever `layout` says.
    pub fn zeros_fp8(layout: KvCacheLayout) -> Self {
        let layout = layout.with_kv_dtype(KvCacheDType::Fp8E4m3);
        HostKvCache { layout, key: vec![0; layout.elements()], value: vec![0; layout.elements()] }
    }

    /// `reshape_and_cache` into an fp8 cache: as [`HostKvCache::write_slots`], element
    /// `(t, head, d)` stored as `quantize_e4m3(x.to_f32(), scales.k[head])` (and V with
    /// `scales.v[head]`). Checks everything first (the scales too: one per kv head, finite,
    /// positive) and writes nothing on an error.
    pub fn write_slots_fp8<T: Element>(&mut self, k: &[T], v: &[T], slot_mapping: &[i64], scales: &KvScales) -> Result<()> {
        scales.validate(self.layout.num_kv_heads)?;
        self.check_write(k.len(), v.len(), slot_mapping)?;
        self.write_rows(k, v, slot_mapping, |h, x| quantize_e4m3(x.to_f32(), scales.k[h]), |h, x| quantize_e4m3(x.to_f32(), scales.v[h]));
        Ok(())
    }

    /// The fp8 cache of `cache`'s values: every element quantized with its kv head's scale
    /// (`quantize_e4m3(x.to_f32(), scale)`), the layout's `kv_dtype` set to `Fp8E4m3`.
    pub fn quantize_from<T: Element>(cache: &HostKvCache<T>, scales: &KvScales) -> Result<HostKvCache<u8>> {
        cache.check_lengths()?;
        scales.validate(cache.layout.num_kv_heads)?;
        let (d, hkv) = (cache.layout.head_dim, cache.layout.num_kv_heads);
        let q = |xs: &[T], s: &[f32]| xs.iter().enumerate().map(|(i, x)| quantize_e4m3(x.to_f32(), s[(i / d) % hkv])).collect();
        Ok(HostKvCache { layout: cache.layout.with_kv_dtype(KvCacheDType::Fp8E4m3), key: q(&cache.key, &scales.k), value: q(&cache.value, &scales.v) })
    }

    /// The values of this fp8 cache as `T`: `T::from_f32(dequantize_e4m3(b) * scale)` with the
    /// element's kv head's scale (the product in f32, then rounded to `T`). The layout is
    /// kept (it still says `Fp8E4m3`: these are an fp8 cache's values).
    ///
    /// # Panics
    /// If `scales` holds fewer than `num_kv_heads` scales for K or V (check with
    /// [`KvScales::validate`] first).
    pub fn dequantize<T: Element>(&self, scales: &KvScales) -> HostKvCache<T> {
        let (d, hkv) = (self.layout.head_dim, self.layout.num_kv_heads);
        let dq = |bs: &[u8], s: &[f32]| bs.iter().enumerate().map(|(i, &b)| T::from_f32(dequantize_e4m3(b) * s[(i / d) % hkv])).collect();
        HostKvCache { layout: self.layout, key: dq(&self.key, &scales.k), value: dq(&self.value, &scales.v) }
    }

    /// The exact values of this fp8 cache in f64, (key, value) in the cache's order:
    /// `dequantize_e4m3(b) as f64 * scale as f64` (exact: 4 significant bits times 24).
    ///
    /// # Panics
    /// As [`HostKvCache::dequantize`], on too few scales.
    pub fn dequantize_f64(&self, scales: &KvScales) -> (Vec<f64>, Vec<f64>) {
        let (d, hkv) = (self.layout.head_dim, self.layout.num_kv_heads);
        let dq = |bs: &[u8], s: &[f32]| bs.iter().enumerate().map(|(i, &b)| dequantize_e4m3(b) as f64 * s[(i / d) % hkv] as f64).collect();
        (dq(&self.key, &scales.k), dq(&self.value, &scales.v))
    }
}

/// MLA's fp8 latent cache ([`crate::fp8::LATENT_ROW_BYTES`]-byte rows, FlashMLA's format) in
/// a `HostKvCache<u8>`: `key` holds `capacity_slots x 656` bytes, slot after slot; `value`
/// is empty; the layout is the latent one (one kv head of 576 dims) with `kv_dtype =
/// Fp8E4m3`.
impl HostKvCache<u8> {
    /// A zeroed fp8 latent cache of `layout`'s geometry (every value 0).
    pub fn zeros_latent_fp8(layout: KvCacheLayout) -> Self {
        let layout = layout.with_kv_dtype(KvCacheDType::Fp8E4m3);
        HostKvCache { layout, key: vec![0; layout.capacity_slots() * LATENT_ROW_BYTES], value: Vec::new() }
    }

    /// Whether this is an fp8 latent cache of its layout's size; an
    /// [`AttnError::LengthMismatch`] otherwise.
    pub fn check_latent_fp8(&self) -> Result<()> {
        let want = self.layout.capacity_slots().checked_mul(LATENT_ROW_BYTES);
        if self.layout.num_kv_heads != 1 || Some(self.key.len()) != want {
            return Err(AttnError::LengthMismatch {
                what: "fp8 latent cache",
                detail: format!("{} bytes, {} kv heads: want one kv head and {} slots x {LATENT_ROW_BYTES} bytes", self.key.len(), self.layout.num_kv_heads, self.layout.capacity_slots()),
            });
        }
        Ok(())
    }

    /// The fp8 latent row of `slot`.
    pub fn latent_row(&self, slot: usize) -> &[u8] {
        &self.key[slot * LATENT_ROW_BYTES..][..LATENT_ROW_BYTES]
    }

    /// MLA's cache write into an fp8 latent cache: token `t`'s row ([`quantize_latent_row`]
    /// of `kv_c[t]`, `k_pe[t]`) to slot `slot_mapping[t]` (negative: skipped). Checks
    /// everything first (lengths, slots, a 16-bit `T`) and writes nothing on an error.
    pub fn write_latent_fp8<T: Element>(&mut self, kv_c: &[T], k_pe: &[T], slot_mapping: &[i64]) -> Result<()> {
        self.check_latent_fp8()?;
        let (r, rope) = (crate::params::MLA_RANK as usize, crate::params::MLA_ROPE as usize);
        let n = slot_mapping.len();
        if kv_c.len() != n * r || k_pe.len() != n * rope {
            return Err(AttnError::LengthMismatch { what: "kv_c / k_pe", detail: format!("{} and {} elements for {n} tokens of {r} and {rope}", kv_c.len(), k_pe.len()) });
        }
        let capacity = self.layout.capacity_slots();
        if let Some((token, &slot)) = slot_mapping.iter().enumerate().find(|&(_, &s)| s >= 0 && s as usize >= capacity) {
            return Err(AttnError::SlotOutOfRange { token, slot, capacity });
        }
        let mut row = [0u8; LATENT_ROW_BYTES];
        for (t, &slot) in slot_mapping.iter().enumerate() {
            if slot >= 0 {
                quantize_latent_row(&kv_c[t * r..][..r], &k_pe[t * rope..][..rope], &mut row)?;
                self.key[slot as usize * LATENT_ROW_BYTES..][..LATENT_ROW_BYTES].copy_from_slice(&row);
            }
        }
        Ok(())
    }

    /// The fp8 latent cache of a latent cache of values (`cache.key`, 576 values a slot):
    /// every row quantized ([`quantize_latent_row`]).
    pub fn quantize_latent_from<T: Element>(cache: &HostKvCache<T>) -> Result<HostKvCache<u8>> {
        let (l, w, r) = (cache.layout, crate::params::MLA_LATENT_DIM as usize, crate::params::MLA_RANK as usize);
        if l.num_kv_heads != 1 || l.head_dim != w || cache.key.len() != l.elements() {
            return Err(AttnError::LengthMismatch { what: "latent cache", detail: format!("{} elements of {:?}: want one kv head of {w} dims", cache.key.len(), l) });
        }
        let mut out = HostKvCache::zeros_latent_fp8(l);
        for (src, dst) in cache.key.chunks_exact(w).zip(out.key.chunks_exact_mut(LATENT_ROW_BYTES)) {
            quantize_latent_row(&src[..r], &src[r..], dst)?;
        }
        Ok(out)
    }

    /// The values of an fp8 latent cache as `T` ([`widen_latent_row`], rounded to `T`: what the
    /// GPU's MMAs read), as a latent cache of values (`value` empty; the layout kept).
    pub fn dequantize_latent<T: Element>(&self) -> Result<HostKvCache<T>> {
        self.check_latent_fp8()?;
        let key = self.key.chunks_exact(LATENT_ROW_BYTES).flat_map(|row| widen_latent_row::<T>(row).into_iter().map(T::from_f32)).collect();
        Ok(HostKvCache { layout: self.layout, key, value: Vec::new() })
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

    #[test]
    fn layouts_carry_the_kv_dtype() {
        let l = KvCacheLayout::new(2, 4, 2, 8).unwrap();
        assert_eq!(l.kv_dtype, KvCacheDType::Auto);
        let f = l.with_kv_dtype(KvCacheDType::Fp8E4m3);
        assert_eq!((f.kv_dtype, f.elements()), (KvCacheDType::Fp8E4m3, l.elements()));
        assert!(f != l && f.same_geometry(&l) && !f.same_geometry(&KvCacheLayout::new(2, 4, 1, 8).unwrap()));
        assert_eq!(HostKvCache::zeros_fp8(l).layout, f);
    }

    #[test]
    fn write_slots_fp8_checks_before_writing() {
        let layout = KvCacheLayout::new(2, 2, 2, 2).unwrap().with_kv_dtype(KvCacheDType::Fp8E4m3);
        let mut c = HostKvCache::zeros_fp8(layout);
        let kv = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let scales = KvScales { k: vec![1.0, 2.0], v: vec![0.5, 4.0] };
        let e = c.write_slots_fp8(&kv, &kv, &[1, 4], &scales).unwrap_err();
        assert!(matches!(e, AttnError::SlotOutOfRange { token: 1, slot: 4, capacity: 4 }), "{e}");
        let e = c.write_slots_fp8(&kv[..7], &kv, &[1, 2], &scales).unwrap_err();
        assert!(matches!(e, AttnError::LengthMismatch { what: "k", .. }), "{e}");
        let e = c.write_slots_fp8(&kv, &kv, &[1, 2], &KvScales::ones(1)).unwrap_err();
        assert!(matches!(e, AttnError::InvalidConfig(_)), "{e}");
        let e = c.write_slots_fp8(&kv, &kv, &[1, 2], &KvScales { k: vec![1.0, f32::NAN], v: vec![1.0, 1.0] }).unwrap_err();
        assert!(e.to_string().contains("k scale of kv head 1"), "{e}");
        assert!(c.key.iter().chain(&c.value).all(|&b| b == 0));
        // Token 1 (values 5..8) to slot 2: head 0 (5, 6) with K scale 1, head 1 (7, 8) with 2.
        c.write_slots_fp8(&kv, &kv, &[-1, 2], &scales).unwrap();
        let o = layout.offset(2, 0);
        let want_k = [quantize_e4m3(5.0, 1.0), quantize_e4m3(6.0, 1.0), quantize_e4m3(7.0, 2.0), quantize_e4m3(8.0, 2.0)];
        assert_eq!(&c.key[o..o + 4], &want_k);
        let want_v = [quantize_e4m3(5.0, 0.5), quantize_e4m3(6.0, 0.5), quantize_e4m3(7.0, 4.0), quantize_e4m3(8.0, 4.0)];
        assert_eq!(&c.value[o..o + 4], &want_v);
        assert_eq!(c.key.iter().filter(|&&b| b != 0).count(), 4, "only slot 2 written");
        // Exact small values: 7 / 2 = 3.5 and 8 / 2 = 4 are e4m3 values, read back exactly.
        let (k, v) = c.dequantize_f64(&scales);
        assert_eq!(&k[o..o + 4], &[5.0, 6.0, 7.0, 8.0]);
        assert_eq!(&v[o..o + 4], &[5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn quantize_from_and_dequantize() {
        let layout = KvCacheLayout::new(3, 4, 2, 4).unwrap();
        let mut rng = crate::workload::Rng::new(11);
        let mut c = HostKvCache::<f32>::zeros(layout);
        for x in c.key.iter_mut().chain(c.value.iter_mut()) {
            *x = rng.uniform() * 3.0;
        }
        let scales = KvScales { k: vec![0.01, 0.02], v: vec![0.005, 0.03] };
        let q = HostKvCache::quantize_from(&c, &scales).unwrap();
        assert_eq!(q.layout, layout.with_kv_dtype(KvCacheDType::Fp8E4m3));
        let (k64, v64) = q.dequantize_f64(&scales);
        let back: HostKvCache<f32> = q.dequantize(&scales);
        assert_eq!(back.layout, q.layout);
        for (i, (&x, &b)) in c.key.iter().zip(&q.key).enumerate() {
            let head = (i / 4) % 2;
            assert_eq!(b, quantize_e4m3(x, scales.k[head]), "key {i}");
            assert_eq!(back.key[i], dequantize_e4m3(b) * scales.k[head]);
            assert_eq!(k64[i], dequantize_e4m3(b) as f64 * scales.k[head] as f64);
            // 3 mantissa bits: within half an ulp, 2^-4 of the value, or half the smallest
            // subnormal (2^-10 x scale) near zero (no key saturates: |x| / scale < 300).
            let bound = x.abs() as f64 / 16.0 + scales.k[head] as f64 * 2f64.powi(-10);
            assert!((k64[i] - x as f64).abs() <= bound, "key {i}: {x} -> {}", k64[i]);
        }
        for (i, (&x, &b)) in c.value.iter().zip(&q.value).enumerate() {
            let head = (i / 4) % 2;
            assert_eq!(b, quantize_e4m3(x, scales.v[head]), "value {i}");
            assert_eq!(v64[i], dequantize_e4m3(b) as f64 * scales.v[head] as f64);
        }
        // Re-quantizing the dequantized values gives the same bytes.
        assert_eq!(HostKvCache::quantize_from(&back, &scales).unwrap().key, q.key);
        assert!(HostKvCache::quantize_from(&c, &KvScales::ones(3)).is_err());
        let mut short = c.clone();
        short.key.pop();
        assert!(matches!(HostKvCache::quantize_from(&short, &scales), Err(AttnError::LengthMismatch { .. })));
    }

    proptest::proptest! {
        /// write_slots_fp8 stores exactly quantize_e4m3 of each element with its head's scale,
        /// at the slot mapping, and leaves every other byte alone.
        #[test]
        fn write_slots_fp8_is_elementwise_quantize(seed in proptest::prelude::any::<u64>(), hkv in 1usize..=4, d in 1usize..=8, tokens in 1usize..=12) {
            let mut rng = crate::workload::Rng::new(seed);
            let layout = KvCacheLayout::new(4, 4, hkv, d).unwrap();
            let mut slots: Vec<i64> = (0..16).collect();
            rng.shuffle(&mut slots);
            let mut slots: Vec<i64> = slots[..tokens].to_vec();
            slots[rng.below(tokens)] = -1; // one padding token
            let scale = |rng: &mut crate::workload::Rng| 2f32.powf(rng.uniform() * 6.0 - 4.0);
            let scales = KvScales { k: (0..hkv).map(|_| scale(&mut rng)).collect(), v: (0..hkv).map(|_| scale(&mut rng)).collect() };
            let n = tokens * hkv * d;
            let big = |rng: &mut crate::workload::Rng| rng.uniform() * 600.0; // some saturate
            let k: Vec<half::bf16> = (0..n).map(|_| half::bf16::from_f32(big(&mut rng))).collect();
            let v: Vec<half::bf16> = (0..n).map(|_| half::bf16::from_f32(big(&mut rng))).collect();
            let mut c = HostKvCache::zeros_fp8(layout);
            c.key.iter_mut().for_each(|b| *b = 0x11);
            c.value.iter_mut().for_each(|b| *b = 0x22);
            c.write_slots_fp8(&k, &v, &slots, &scales).unwrap();
            let (mut want_k, mut want_v) = (vec![0x11u8; layout.elements()], vec![0x22u8; layout.elements()]);
            for (t, &slot) in slots.iter().enumerate() {
                if slot < 0 { continue; }
                for h in 0..hkv {
                    for i in 0..d {
                        let (src, dst) = ((t * hkv + h) * d + i, layout.offset(slot as usize, h) + i);
                        want_k[dst] = quantize_e4m3(k[src].to_f32(), scales.k[h]);
                        want_v[dst] = quantize_e4m3(v[src].to_f32(), scales.v[h]);
                    }
                }
            }
            proptest::prop_assert_eq!(&c.key, &want_k);
            proptest::prop_assert_eq!(&c.value, &want_v);
        }
    }
}
