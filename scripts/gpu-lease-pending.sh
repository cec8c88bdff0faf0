#!/usr/bin/env bash
# The pending kernels of branch gpu-pending-s4 on a GPU, most important first (each stage
# appends to $OUT/summary.txt, so a run cut short still reports what it did):
#  1. the changed kernels' tests (MLA 4-stage S first, fp8 MLA, persistent, Hopper prefill);
#  2. the MLA plans M2 M4 (`mla --sweep`: 2 stages unchanged, 4 stages S first);
#  3. the prefill A/B (this module against main's, alternated), the fp8 MLA A/B on M1 M3, and
#     decode X1 X2 D1 (bf16) and D1 X1 D3 (fp8) on CUDA_PAGED against CUDA_PAGED_PORTABLE (the
#     sm_90a decode rows' deeper pipelines);
#  4. memcheck and racecheck on the changed kernels;
#  5. every GPU test on this module, then M1 M3 bf16 and M1-M4 fp8.
# Build: on main `scripts/ptx-variant.sh main-module`; on the branch `scripts/gpu-bundle.sh`,
# `cp scripts/gpu-lease-common.sh scripts/gpu-lease-pending.sh gpu-bundle/`; run it with carry gpu-bundle.
set -uo pipefail
cd "$(dirname "$0")"
. ./gpu-lease-common.sh
timeout 100 ./bin/gpu "4-stage" "mla fp8" "persistent" "mla bf16 128 heads 4 tokens" "d256" "fp8 bf16 d128" "fp8 f16 d128" "prefill bf16 d128" "prefill f16 d64" "prefill bf16 d256" > "$O/gpu.txt" 2>&1; echo "tests rc $?" | tee -a "$S"
grep -E "gpu tests:|FAIL|panicked" "$O/gpu.txt" | head -20 | tee -a "$S"
grep -E "4-stage|fp8 f16 128 heads 3 splits|fp8 bf16 128 heads 4 tokens|prefill bf16 d128 gqa" "$O/gpu.txt" | head -12 | tee -a "$S"
stamp
timeout 90 ./bin/mla --json --sweep M2 M4 > "$O/sweep.txt" 2>&1; echo "sweep rc $?" | tee -a "$S"
fig "$O/sweep.txt" sweep
stamp
for v in branch main-module branch main-module; do
  use $v; timeout 30 ./bin/prefill --json P1 P2 > "$O/prefill-$v.txt" 2>&1; fig "$O/prefill-$v.txt" "prefill-$v"
done
for v in branch main-module; do
  use $v; timeout 30 ./bin/mla --json --kv-dtype fp8 M1 M3 > "$O/fp8-$v.txt" 2>&1; fig "$O/fp8-$v.txt" "fp8-$v"
done
use branch
timeout 40 ./bin/decode --json --extra --portable X1 X2 D1 > "$O/decode-ab.txt" 2>&1; fig "$O/decode-ab.txt" decode-ab
timeout 40 ./bin/decode --json --extra --portable --kv-dtype fp8 D1 X1 D3 > "$O/decode-ab-fp8.txt" 2>&1; fig "$O/decode-ab-fp8.txt" decode-ab-fp8
stamp
cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
timeout 70 "$cs" --tool memcheck --error-exitcode 9 ./bin/gpu "4-stage" "mla fp8 f16 128 heads 3 splits" "prefill bf16 d128 gqa 4:1 ragged" "prefill bf16 d256" "prefill f16 d64" "bf16 d256 gqa 8:2 5 splits" "fp8 bf16 d128 gqa 4:1 5 splits" "fp8 f16 d256 gqa 4:1" > "$O/memcheck.txt" 2>&1; echo "memcheck rc $?" | tee -a "$S"
tail -n 2 "$O/memcheck.txt" | tee -a "$S"; stamp
timeout 70 "$cs" --tool racecheck --error-exitcode 9 ./bin/gpu "4-stage" "mla fp8 f16 128 heads 3 splits" "prefill bf16 d128 gqa 4:1 ragged" "bf16 d256 gqa 8:2 5 splits" "fp8 bf16 d128 gqa 4:1 5 splits" > "$O/racecheck.txt" 2>&1; echo "racecheck rc $?" | tee -a "$S"
tail -n 2 "$O/racecheck.txt" | tee -a "$S"; stamp
[ -n "${QUICK:-}" ] && exit 0
timeout 120 ./bin/gpu > "$O/gpu-all.txt" 2>&1; echo "all tests rc $?" | tee -a "$S"
grep -E "gpu tests:|FAIL|panicked" "$O/gpu-all.txt" | head -20 | tee -a "$S"; stamp
timeout 40 ./bin/mla --json M1 M3 > "$O/mla-bf16.txt" 2>&1; fig "$O/mla-bf16.txt" mla-bf16
timeout 40 ./bin/mla --json --kv-dtype fp8 M2 M4 > "$O/mla-fp8.txt" 2>&1; fig "$O/mla-fp8.txt" mla-fp8
stamp
