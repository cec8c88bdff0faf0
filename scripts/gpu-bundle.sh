#!/usr/bin/env bash
# Builds the GPU test, benchmark and `attn` binaries (release, stripped) with the PTX into
# gpu-bundle/, with run.sh, for a GPU machine that has no Rust toolchain:
#   scripts/gpu-bundle.sh && (on the GPU machine) gpu-bundle/run.sh [quick]
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-bundle
rm -rf "$out" && mkdir -p "$out/bin" "$out/ptx"
exes=$( (cargo test --release --no-run --features nccl --test gpu --message-format=json &&
         cargo bench --no-run --bench decode --bench step --bench prefill --bench mla --bench dcp --message-format=json &&
         cargo build --release --bin attn --example 02_gpu_plan_run --message-format=json) | scripts/cargo-executables.py)
while read -r name exe; do
  cp "$exe" "$out/bin/$name" && strip "$out/bin/$name"
done <<< "$exes"
for b in gpu decode step prefill mla dcp attn 02_gpu_plan_run; do
  [ -x "$out/bin/$b" ] || { echo "gpu-bundle: $b did not build" >&2; exit 1; }
done
ptx_dir=$(dirname "$(ls -t target/release/build/attn-backends-*/out/ptx_modules.rs | head -n 1)")
cp "$ptx_dir"/attn_kernels_*.ptx "$out/ptx/"
# PTX variants for an A/B in one lease (scripts/ptx-variant.sh; `run.sh ab`).
if [ -d target/ptx-variants ]; then mkdir -p "$out/alt" && cp -r target/ptx-variants/. "$out/alt/"; fi
cp scripts/gpu-run.sh "$out/run.sh"
cp scripts/peer-p6.py scripts/nccl-lib.sh "$out/"
# The peers' benchmark (PyTorch SDPA, Triton), to time them in the same lease; not a dependency.
[ -f ../shared/peers/peer_bench.py ] && cp ../shared/peers/peer_bench.py "$out/" || true
git rev-parse --short HEAD > "$out/COMMIT" 2>/dev/null || echo unknown > "$out/COMMIT"
# Every binary embeds the PTX of every architecture: compressed, the bundle stays well
# under the 64 MiB a device run carries (run.sh unpacks it).
tar -C "$out" -czf "$out/bin.tar.gz" bin && rm -rf "$out/bin"
du -sh "$out"
