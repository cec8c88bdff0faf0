#!/usr/bin/env bash
# attn-candle's CUDA half on a GPU machine, from gpu-candle/ (built here by
# `scripts/gpu-bundle-candle.sh`): its GPU tests, then the Llama throughput example
# (tokens/s of the twin and of candle-transformers). The binaries link CUDA 13's libraries
# (candle's `dynamic-linking`): PyTorch's cu13 wheels provide them there.
set -uo pipefail
cd "$(dirname "$0")"
O=${OUT:-logs}; mkdir -p "$O"; S=$O/summary.txt
libs=$(python3 -c 'import glob, os, site
for d in site.getsitepackages():
    for f in glob.glob(os.path.join(d, "nvidia", "*", "lib", "libcublas.so.*")) + glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so.*")) + glob.glob(os.path.join(d, "nvidia", "*", "lib", "libcurand.so.*")):
        print(os.path.dirname(f))' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ATTN_REQUIRE_GPU=1
[ -d bin ] || tar -xzf bin.tar.gz
echo "candle: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$O/candle.txt"
ldd bin/attn_candle_gpu | grep -E "not found|cublas|nvrtc|curand|libcuda" >> "$O/candle.txt" 2>&1
timeout ${CANDLE_TEST_S:-150} bin/attn_candle_gpu --test-threads 1 --nocapture >> "$O/candle.txt" 2>&1; echo "candle tests rc $?" | tee -a "$S"
grep -E "rel err|test result|FAILED|panicked" "$O/candle.txt" | head -20 | tee -a "$S"
# A twin that fails on non-finite logits: again on the portable kernels, to tell a Hopper
# kernel's NaN from one elsewhere (the assertion names the side: ours, the reference's).
if grep -q "twin_on_gpu_matches_candle_transformers_f16 .*FAILED\|non-finite" "$O/candle.txt"; then
  grep -A3 "non-finite" "$O/candle.txt" | head -8 | tee -a "$S"
  ATTN_BACKEND=CUDA_PAGED_PORTABLE timeout 60 bin/attn_candle_gpu twin_on_gpu_matches_candle_transformers_f16 --nocapture > "$O/candle-f16-portable.txt" 2>&1
  echo "f16 twin on CUDA_PAGED_PORTABLE rc $?" | tee -a "$S"; grep -E "GPU F16|left|right|panicked" "$O/candle-f16-portable.txt" | head -6 | tee -a "$S"
fi
timeout ${CANDLE_BENCH_S:-200} bin/llama_throughput --cuda ${CANDLE_SHAPES:+--shapes $CANDLE_SHAPES} > "$O/candle-throughput.txt" 2>&1; echo "candle throughput rc $?" | tee -a "$S"
cat "$O/candle-throughput.txt" | tail -8 | tee -a "$S"
