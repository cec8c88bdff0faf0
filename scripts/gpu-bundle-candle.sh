#!/usr/bin/env bash
# Builds attn-candle's CUDA half into gpu-candle/ (its own folder: with gpu-bundle/ it would pass
# the 64 MiB a device run carries): its GPU test
# binary and the Llama throughput example, built with candle's `cuda` feature against the
# CUDA 13 of scripts/setup-cuda.sh, with run.sh (scripts/gpu-candle.sh) to run them there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-cuda.sh >/dev/null
source <(scripts/setup-cuda.sh --env)
out=gpu-candle
rm -rf "$out" && mkdir -p "$out/bin"
exes=$( (cargo test -p attn-candle --features cuda --release --no-run --test gpu --target-dir target/cuda --message-format=json &&
         cargo build -p attn-candle --features cuda --release --example llama_throughput --target-dir target/cuda --message-format=json) | scripts/cargo-executables.py)
while read -r name exe; do
  [ "$name" = gpu ] && name=attn_candle_gpu
  cp "$exe" "$out/bin/$name" && strip "$out/bin/$name"
done <<< "$exes"
for b in attn_candle_gpu llama_throughput; do
  [ -x "$out/bin/$b" ] || { echo "gpu-bundle-candle: $b did not build" >&2; exit 1; }
done
tar -C "$out" -czf "$out/bin.tar.gz" bin && rm -rf "$out/bin"
cp scripts/gpu-candle.sh "$out/run.sh"
du -sh "$out"
