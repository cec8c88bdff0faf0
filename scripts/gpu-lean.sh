#!/usr/bin/env bash
# gpu-lean/: the GPU bundle cut to what a short lease runs (bin/gpu, mla, prefill, decode and
# attn, main's module in alt/, the lease scripts), small enough to travel with gpu-candle/ in
# one call (64 MiB). Run after scripts/gpu-bundle.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu-bundle/ptx gpu-lean && mkdir -p gpu-lean/tmp
tar -C gpu-lean/tmp -xzf gpu-bundle/bin.tar.gz bin/gpu bin/mla bin/prefill bin/decode bin/attn
tar -C gpu-lean/tmp -czf gpu-lean/bin.tar.gz bin && rm -rf gpu-lean/tmp
cp -r gpu-bundle/COMMIT gpu-bundle/peer_bench.py gpu-lean/
[ -d gpu-bundle/alt ] && cp -r gpu-bundle/alt gpu-lean/
cp scripts/gpu-lease-common.sh scripts/gpu-lease-pending.sh scripts/ncu-source.sh gpu-lean/
cp scripts/gpu-lease-second.sh gpu-lean/second.sh
cp scripts/gpu-lease-h200.sh gpu-lean/h200.sh
cp -r benches/data/probe gpu-lean/
du -sh gpu-lean
