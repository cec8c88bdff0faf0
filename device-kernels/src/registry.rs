//! The kernel table: every kernel instantiation of the project, as data.
//!
//! One row of [`KERNELS`] is a group of instantiations of one family: the product of its
//! query dtypes, KV-cache dtypes, head dims, score modifiers and pipeline depths, all in one
//! architecture module, with one block size and one set of required architecture features.
//! Everything that needs to know which kernels exist reads this table:
//! - `build.rs` writes the device crate's instantiations from it (one `#[no_mangle]` entry
//!   point a kernel, through the family's `instance!` macro: [`Family::instance_macro`]),
//!   keeps each module's kernels by [`Module`], and gives every entry point its own
//!   `.maxntid` ([`KernelSpec::threads`]);
//! - the host names and loads kernels by [`KernelId`] (`attn_host::registry`), the
//!   selector reads the head dims and KV dtypes a family serves from it, and the ptxas test
//!   checks that every module holds exactly the table's kernels.
//!
//! Adding a head dim or a KV dtype is one edit of a row here (plus the kernel code that is
//! really new). This file is compiled by `build.rs`, the device crate and the host crate
//! (`#[path]`), so it depends on nothing but `params`.

use super::params::{
    mla_sm90_smem_bytes, mla_smem_bytes, paged_depth, paged_smem_bytes_at, prefill_sm90_smem_bytes, prefill_smem_bytes, CACHE_WRITE_THREADS, MLA_FP8_STAGES, MLA_SM90_STAGES, MLA_SM90_THREADS, MLA_STAGES, MLA_WARPS,
    paged_sm90_stages, PAGED_WARPS, PREFILL_SM90_THREADS, PREFILL_WARPS,
};

/// A kernel family: one file of the device crate, one parameter struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `reshape_and_cache`: this step's K/V into the paged cache (`CacheWriteParams`).
    CacheWrite,
    /// Paged decode, one query token a block, split-KV (`PagedAttnParams`).
    PagedDecode,
    /// The same kernel over the hardware's fp8 conversion (`cvt.rn.f16x2.e4m3x2`, f16 MMAs:
    /// `PagedAttnParams`), in the sm_90a module.
    PagedDecodeSm90,
    /// Flash-decoding's merge of split partial states (`MergeParams`).
    Merge,
    /// Context parallelism's merge of the ranks' (output, log-sum-exp) (`MergeRanksParams`).
    MergeRanks,
    /// FlashAttention-2 prefill on mma.sync (`PrefillParams`).
    FlashPrefill,
    /// The prefill's tiles on wgmma, TMA and warp specialization (`PrefillParams`).
    FlashPrefillSm90,
    /// The mma.sync prefill over the hardware's fp8 conversion (f16 MMAs: `PrefillParams`),
    /// in the sm_90a module: the fp8 rows of Hopper, whose wgmma kernel has none.
    FlashPrefillCvt,
    /// MLA's latent cache write (`MlaCacheWriteParams`).
    MlaCacheWrite,
    /// MLA decode, absorbed form, split-KV (`MlaParams`).
    MlaDecode,
    /// The MLA decode's blocks on wgmma, K tiles by TMA, warp specialization (`MlaParams`),
    /// in the sm_90a module.
    MlaDecodeSm90,
    /// The mma.sync MLA decode over fp8 rows widened by the hardware's conversion
    /// (`cvt.rn.f16x2.e4m3x2`: `MlaParams`), in the sm_90a module.
    MlaDecodeCvt,
}

impl Family {
    /// The device crate's macro that instantiates one kernel of this family, called by the
    /// generated table as `macro!(name, Q, KV, D, SCORE, STAGES)`.
    pub const fn instance_macro(self) -> &'static str {
        match self {
            Family::CacheWrite => "crate::cache_write::cache_write_instance",
            Family::PagedDecode => "crate::paged_decode::paged_attention_instance",
            Family::PagedDecodeSm90 => "crate::paged_decode::paged_attention_sm90_instance",
            Family::Merge => "crate::merge::merge_instance",
            Family::MergeRanks => "crate::merge::merge_ranks_instance",
            Family::FlashPrefill => "crate::flash_prefill::flash_prefill_instance",
            Family::FlashPrefillSm90 => "crate::flash_prefill_sm90::flash_prefill_sm90_instance",
            Family::FlashPrefillCvt => "crate::flash_prefill::flash_prefill_cvt_instance",
            Family::MlaCacheWrite => "crate::cache_write::mla_cache_write_instance",
            Family::MlaDecode => "crate::mla_decode::mla_decode_instance",
            Family::MlaDecodeSm90 => "crate::mla_decode_sm90::mla_decode_sm90_instance",
            Family::MlaDecodeCvt => "crate::mla_decode::mla_decode_cvt_instance",
        }
    }
    const fn prefix(self) -> &'static str {
        match self {
            Family::CacheWrite => "reshape_and_cache",
            Family::PagedDecode => "paged_attention",
            Family::PagedDecodeSm90 => "paged_attention_sm90",
            Family::Merge => "merge_splits",
            Family::MergeRanks => "merge_ranks",
            Family::FlashPrefill => "flash_prefill",
            Family::FlashPrefillSm90 => "flash_prefill_sm90",
            Family::FlashPrefillCvt => "flash_prefill_cvt",
            Family::MlaCacheWrite => "mla_cache_write",
            Family::MlaDecode => "mla_decode",
            Family::MlaDecodeSm90 => "mla_decode_sm90",
            Family::MlaDecodeCvt => "mla_decode_cvt",
        }
    }
}

/// The query (compute) element: what the MMA multiplies. `B16`: a bitwise kernel that moves
/// 16-bit words of either type (the 16-bit cache writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QType {
    /// bf16 queries (and MMAs).
    Bf16,
    /// f16 queries (and MMAs).
    F16,
    /// Either 16-bit type, moved bitwise (the 16-bit cache writes).
    B16,
}

impl QType {
    /// The name's tag (`bf16`, `f16`, `b16`).
    pub const fn tag(self) -> &'static str {
        match self {
            QType::Bf16 => "bf16",
            QType::F16 => "f16",
            QType::B16 => "b16",
        }
    }
    /// The device crate's element type (`elem::Bf16`, ...).
    pub const fn device_type(self) -> &'static str {
        match self {
            QType::Bf16 => "Bf16",
            QType::F16 => "F16",
            QType::B16 => "B16",
        }
    }
}

/// The KV cache's storage element: the query's 16-bit type, or fp8 e4m3 with f32 scales
/// (one byte an element; the kernels convert tiles to the query type before the MMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvType {
    /// The query's own 16-bit type.
    Native,
    /// fp8 e4m3 bytes, with f32 scales per kv head.
    Fp8E4m3,
}

impl KvType {
    /// The name's infix: none for the native cache, `_e4m3` for fp8.
    pub const fn infix(self) -> &'static str {
        match self {
            KvType::Native => "",
            KvType::Fp8E4m3 => "_e4m3",
        }
    }
    /// The device crate's storage type (`kv::Native`, `kv::E4m3`).
    pub const fn device_type(self) -> &'static str {
        match self {
            KvType::Native => "Native",
            KvType::Fp8E4m3 => "E4m3",
        }
    }
    /// Bytes of one stored element (16-bit for the native cache).
    pub const fn bytes(self) -> u32 {
        match self {
            KvType::Native => 2,
            KvType::Fp8E4m3 => 1,
        }
    }
}

/// The score modifier compiled into a kernel (`score_mod`): where it changes the generated
/// code, a kernel is instantiated per modifier; `Dynamic` decides at run time (the
/// memory-bound decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScoreMod {
    /// None.
    Plain,
    /// The logits soft-cap.
    SoftCap,
    /// ALiBi.
    Alibi,
    /// Both.
    SoftCapAlibi,
    /// Decided at run time from the parameters (the decode kernel).
    Dynamic,
}

impl ScoreMod {
    /// The compiled-in modifier for a layer's soft-cap and ALiBi.
    pub const fn of(softcap: bool, alibi: bool) -> ScoreMod {
        match (softcap, alibi) {
            (false, false) => ScoreMod::Plain,
            (true, false) => ScoreMod::SoftCap,
            (false, true) => ScoreMod::Alibi,
            (true, true) => ScoreMod::SoftCapAlibi,
        }
    }
    /// The name's suffix (`_softcap`, `_alibi`, `_softcap_alibi`; none for `Plain` and `Dynamic`).
    pub const fn suffix(self) -> &'static str {
        match self {
            ScoreMod::Plain | ScoreMod::Dynamic => "",
            ScoreMod::SoftCap => "_softcap",
            ScoreMod::Alibi => "_alibi",
            ScoreMod::SoftCapAlibi => "_softcap_alibi",
        }
    }
    /// The device crate's policy type (`score_mod::Plain`, `Modified<CAP, ALIBI>`, `Dynamic`).
    pub const fn device_type(self) -> &'static str {
        match self {
            ScoreMod::Plain => "Plain",
            ScoreMod::SoftCap => "SoftCap",
            ScoreMod::Alibi => "Alibi",
            ScoreMod::SoftCapAlibi => "SoftCapAlibi",
            ScoreMod::Dynamic => "Dynamic",
        }
    }
}

/// The PTX module a kernel is in: every module (`Portable`), or only an sm_90a module
/// (`Sm90a`: wgmma, TMA, setmaxnreg). build.rs drops `Sm90a` kernels before lowering any
/// other architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    /// Every module: sm_80 and sm_90a.
    Portable,
    /// The sm_90a module only.
    Sm90a,
}

/// Architecture features, as a set: what a kernel requires, and what a loaded module on a
/// device offers (`attn_host::platform::ArchFeatures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u32);

impl Features {
    /// No feature.
    pub const NONE: Features = Features(0);
    /// `mma.sync`, `ldmatrix`, `cp.async` (sm_80 and newer).
    pub const MMA_SYNC: Features = Features(1);
    /// Warpgroup MMA (`wgmma.mma_async`, sm_90a).
    pub const WGMMA: Features = Features(2);
    /// Bulk tensor copies (`cp.async.bulk.tensor`, mbarrier transactions, sm_90).
    pub const TMA: Features = Features(4);
    /// `setmaxnreg` (sm_90a).
    pub const SETMAXNREG: Features = Features(8);
    /// The hardware's fp8 conversions (`cvt.rn.f16x2.e4m3x2`: sm_89 and newer; here in the
    /// sm_90a module).
    pub const CVT_FP8: Features = Features(16);
    /// Everything an sm_90a module's kernels may use.
    pub const HOPPER: Features = Features(1 | 2 | 4 | 8 | 16);

    /// Both sets.
    pub const fn union(self, o: Features) -> Features {
        Features(self.0 | o.0)
    }
    /// Whether `self` holds every feature of `o`.
    pub const fn contains(self, o: Features) -> bool {
        self.0 & o.0 == o.0
    }
}

/// A kernel's identity: the typed id a plan's launch carries and a backend matches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId {
    /// The kernel's family.
    pub family: Family,
    /// Its query type.
    pub q: QType,
    /// Its KV-cache element.
    pub kv: KvType,
    /// 0 for the families that take any head dim (cache writes, merge) or a fixed one (MLA).
    pub head_dim: u32,
    /// Its score modifier.
    pub score: ScoreMod,
    /// Pipeline depth where a family comes in several (MLA decode); 0 otherwise.
    pub stages: u32,
}

impl KernelId {
    /// The entry point's name in the PTX: `<family>_<q>[_e4m3][_d<head dim>][<modifier>][_s<stages>]`
    /// (the MLA decode's default depth, `MLA_STAGES[0]`, carries no `_s`).
    /// Written into `out`, which must hold 64 bytes; returns the name's length.
    pub fn write_name(&self, out: &mut [u8; 64]) -> usize {
        let mut n = 0;
        let mut put = |s: &[u8]| {
            for &b in s {
                out[n] = b;
                n += 1;
            }
        };
        put(self.family.prefix().as_bytes());
        put(b"_");
        put(self.q.tag().as_bytes());
        put(self.kv.infix().as_bytes());
        if self.head_dim > 0 {
            put(b"_d");
            put_decimal(&mut put, self.head_dim);
        }
        put(self.score.suffix().as_bytes());
        if self.stages > 0 && self.stages != MLA_STAGES[0] {
            put(b"_s");
            put_decimal(&mut put, self.stages);
        }
        n
    }

    /// Dynamic shared memory a block of this kernel takes, bytes.
    pub const fn smem_bytes(&self) -> u32 {
        match self.family {
            Family::CacheWrite | Family::Merge | Family::MergeRanks | Family::MlaCacheWrite => 0,
            Family::PagedDecode | Family::PagedDecodeSm90 => paged_smem_bytes_at(self.head_dim, self.kv.bytes(), paged_depth(self.head_dim, self.stages)),
            Family::FlashPrefill | Family::FlashPrefillCvt => prefill_smem_bytes(self.head_dim, self.kv.bytes()),
            Family::FlashPrefillSm90 => prefill_sm90_smem_bytes(self.head_dim),
            Family::MlaDecode | Family::MlaDecodeCvt => mla_smem_bytes(self.stages, self.kv.bytes()),
            Family::MlaDecodeSm90 => mla_sm90_smem_bytes(self.stages),
        }
    }
}

fn put_decimal(put: &mut impl FnMut(&[u8]), x: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut v = x;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
}

/// One row of the table: a family's instantiations in one module.
#[derive(Clone, Copy, Debug)]
pub struct KernelRow {
    /// The family of the row's kernels.
    pub family: Family,
    /// Their query types.
    pub q: &'static [QType],
    /// Their KV-cache elements.
    pub kv: &'static [KvType],
    /// Head dims (`&[0]`: the family takes any, or MLA's fixed one).
    pub head_dims: &'static [u32],
    /// Their score modifiers.
    pub scores: &'static [ScoreMod],
    /// Pipeline depths (`&[0]`: one).
    pub stages: &'static [u32],
    /// The module they are in.
    pub module: Module,
    /// Threads per block: the launch's block and the entry point's `.maxntid`. 0: the
    /// launch chooses (the merge: one thread per 8 output dims) and no `.maxntid` is given.
    pub threads: u32,
    /// The architecture features they require.
    pub needs: Features,
}

/// One kernel of the table, expanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// The kernel.
    pub id: KernelId,
    /// Its module.
    pub module: Module,
    /// Threads per block (0: the launch chooses).
    pub threads: u32,
    /// The architecture features it requires.
    pub needs: Features,
}

/// Query dtypes of the attention kernels.
const Q16: &[QType] = &[QType::Bf16, QType::F16];
/// Head dims of the multi-head families (decode, portable prefill).
pub const HEAD_DIMS: &[u32] = &[64, 96, 128, 256];
/// Head dims of the Hopper prefill (its 64-column TMA boxes and wgmma widths).
pub const SM90_HEAD_DIMS: &[u32] = &[64, 128, 256];
const MODIFIERS: &[ScoreMod] = &[ScoreMod::Plain, ScoreMod::SoftCap, ScoreMod::Alibi, ScoreMod::SoftCapAlibi];
const ONE: &[u32] = &[0];
/// Both KV-cache elements: the query's 16-bit type and fp8 e4m3.
const KV_ALL: &[KvType] = &[KvType::Native, KvType::Fp8E4m3];

/// The sm_90a decode rows' depths where they differ from the portable kernel's
/// ([`paged_sm90_stages`]: bytes in flight for the H200).
const SM90_FP8_D128: &[u32] = &[paged_sm90_stages(128, 1)];
const SM90_FP8_D256: &[u32] = &[paged_sm90_stages(256, 1)];
const SM90_B16_D256: &[u32] = &[paged_sm90_stages(256, 2)];

/// The table.
pub const KERNELS: &[KernelRow] = &[
    KernelRow { family: Family::CacheWrite, q: &[QType::B16], kv: &[KvType::Native], head_dims: ONE, scores: &[ScoreMod::Plain], stages: ONE, module: Module::Portable, threads: CACHE_WRITE_THREADS, needs: Features::NONE },
    KernelRow { family: Family::CacheWrite, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: ONE, scores: &[ScoreMod::Plain], stages: ONE, module: Module::Portable, threads: CACHE_WRITE_THREADS, needs: Features::NONE },
    KernelRow { family: Family::PagedDecode, q: Q16, kv: KV_ALL, head_dims: HEAD_DIMS, scores: &[ScoreMod::Dynamic], stages: ONE, module: Module::Portable, threads: PAGED_WARPS * 32, needs: Features::MMA_SYNC },
    KernelRow { family: Family::PagedDecodeSm90, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: &[64, 96], scores: &[ScoreMod::Dynamic], stages: ONE, module: Module::Sm90a, threads: PAGED_WARPS * 32, needs: Features::MMA_SYNC.union(Features::CVT_FP8) },
    KernelRow { family: Family::PagedDecodeSm90, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: &[128], scores: &[ScoreMod::Dynamic], stages: SM90_FP8_D128, module: Module::Sm90a, threads: PAGED_WARPS * 32, needs: Features::MMA_SYNC.union(Features::CVT_FP8) },
    KernelRow { family: Family::PagedDecodeSm90, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: &[256], scores: &[ScoreMod::Dynamic], stages: SM90_FP8_D256, module: Module::Sm90a, threads: PAGED_WARPS * 32, needs: Features::MMA_SYNC.union(Features::CVT_FP8) },
    KernelRow { family: Family::PagedDecodeSm90, q: Q16, kv: &[KvType::Native], head_dims: &[256], scores: &[ScoreMod::Dynamic], stages: SM90_B16_D256, module: Module::Sm90a, threads: PAGED_WARPS * 32, needs: Features::MMA_SYNC },
    KernelRow { family: Family::Merge, q: Q16, kv: &[KvType::Native], head_dims: ONE, scores: &[ScoreMod::Plain], stages: ONE, module: Module::Portable, threads: 0, needs: Features::NONE },
    KernelRow { family: Family::MergeRanks, q: Q16, kv: &[KvType::Native], head_dims: ONE, scores: &[ScoreMod::Plain], stages: ONE, module: Module::Portable, threads: 0, needs: Features::NONE },
    KernelRow { family: Family::FlashPrefill, q: Q16, kv: KV_ALL, head_dims: HEAD_DIMS, scores: MODIFIERS, stages: ONE, module: Module::Portable, threads: PREFILL_WARPS * 32, needs: Features::MMA_SYNC },
    KernelRow { family: Family::FlashPrefillCvt, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: HEAD_DIMS, scores: MODIFIERS, stages: ONE, module: Module::Sm90a, threads: PREFILL_WARPS * 32, needs: Features::MMA_SYNC.union(Features::CVT_FP8) },
    KernelRow { family: Family::FlashPrefillSm90, q: Q16, kv: &[KvType::Native], head_dims: SM90_HEAD_DIMS, scores: MODIFIERS, stages: ONE, module: Module::Sm90a, threads: PREFILL_SM90_THREADS, needs: Features::HOPPER },
    KernelRow { family: Family::MlaCacheWrite, q: &[QType::B16], kv: &[KvType::Native], head_dims: ONE, scores: &[ScoreMod::Plain], stages: ONE, module: Module::Portable, threads: CACHE_WRITE_THREADS, needs: Features::NONE },
    KernelRow { family: Family::MlaCacheWrite, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: ONE, scores: &[ScoreMod::Plain], stages: ONE, module: Module::Portable, threads: CACHE_WRITE_THREADS, needs: Features::NONE },
    KernelRow { family: Family::MlaDecode, q: Q16, kv: &[KvType::Native], head_dims: ONE, scores: &[ScoreMod::Plain], stages: &MLA_STAGES, module: Module::Portable, threads: MLA_WARPS * 32, needs: Features::MMA_SYNC },
    KernelRow { family: Family::MlaDecode, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: ONE, scores: &[ScoreMod::Plain], stages: &MLA_FP8_STAGES, module: Module::Portable, threads: MLA_WARPS * 32, needs: Features::MMA_SYNC },
    KernelRow { family: Family::MlaDecodeCvt, q: Q16, kv: &[KvType::Fp8E4m3], head_dims: ONE, scores: &[ScoreMod::Plain], stages: &MLA_FP8_STAGES, module: Module::Sm90a, threads: MLA_WARPS * 32, needs: Features::MMA_SYNC.union(Features::CVT_FP8) },
    KernelRow { family: Family::MlaDecodeSm90, q: Q16, kv: KV_ALL, head_dims: ONE, scores: &[ScoreMod::Plain], stages: &MLA_SM90_STAGES, module: Module::Sm90a, threads: MLA_SM90_THREADS, needs: Features::HOPPER },
];

/// Whether some row of `family` holds KV dtype `kv` (at compile time: the backends' capability
/// rows read their KV dtypes from the table this way).
pub const fn family_has_kv(family: Family, kv: KvType) -> bool {
    let mut i = 0;
    while i < KERNELS.len() {
        let row = &KERNELS[i];
        if row.family as u8 == family as u8 {
            let mut j = 0;
            while j < row.kv.len() {
                if row.kv[j] as u8 == kv as u8 {
                    return true;
                }
                j += 1;
            }
        }
        i += 1;
    }
    false
}

/// Calls `f` for every kernel of the table, row by row.
pub fn for_each_kernel(mut f: impl FnMut(KernelSpec)) {
    for row in KERNELS {
        for &q in row.q {
            for &kv in row.kv {
                for &head_dim in row.head_dims {
                    for &score in row.scores {
                        for &stages in row.stages {
                            let id = KernelId { family: row.family, q, kv, head_dim, score, stages };
                            f(KernelSpec { id, module: row.module, threads: row.threads, needs: row.needs });
                        }
                    }
                }
            }
        }
    }
}

/// The first kernel of the table for which `pred` holds.
pub fn find_by(pred: impl Fn(&KernelSpec) -> bool) -> Option<KernelSpec> {
    let mut found = None;
    for_each_kernel(|k| {
        if found.is_none() && pred(&k) {
            found = Some(k);
        }
    });
    found
}

/// The table's entry for `id`, if it has one.
pub fn find(id: &KernelId) -> Option<KernelSpec> {
    find_by(|k| k.id == *id)
}

