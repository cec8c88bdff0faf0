#!/usr/bin/env bash
# (scripts/gpu-lease-lean.sh: copy into gpu-bundle/ with gpu-lease-common.sh; STOP_AFTER_SWEEP=1 for the least time.)
# The pending kernels in the least device time: their tests, the MLA depth sweep, one prefill
# A/B round, memcheck on the 4-stage MLA kernel. Each stage into $OUT/summary.txt.
set -uo pipefail
cd "$(dirname "$0")"
. ./gpu-lease-common.sh
timeout ${T_TESTS:-80} ./bin/gpu "4-stage" "mla fp8" "persistent" "d256" "fp8 bf16 d128" "prefill bf16 d128" "prefill f16 d64" "prefill bf16 d256" > "$O/gpu.txt" 2>&1; echo "tests rc $?" | tee -a "$S"
grep -E "gpu tests:|FAIL|panicked" "$O/gpu.txt" | head -20 | tee -a "$S"
grep -E "4-stage|prefill bf16 d128 gqa" "$O/gpu.txt" | head -8 | tee -a "$S"; stamp
timeout ${T_SWEEP:-70} ./bin/mla --json --sweep M2 M4 > "$O/sweep.txt" 2>&1; echo "sweep rc $?" | tee -a "$S"; fig "$O/sweep.txt" sweep; stamp
[ -n "${STOP_AFTER_SWEEP:-}" ] && exit 0
for v in branch main-module; do
  use $v
  timeout 25 ./bin/prefill --json P1 P2 > "$O/prefill-$v.txt" 2>&1; fig "$O/prefill-$v.txt" "prefill-$v"
done
use branch
timeout 30 ./bin/decode --json --extra --portable X1 > "$O/decode-ab.txt" 2>&1; fig "$O/decode-ab.txt" decode-ab
timeout 30 ./bin/decode --json --portable --kv-dtype fp8 D1 > "$O/decode-ab-fp8.txt" 2>&1; fig "$O/decode-ab-fp8.txt" decode-ab-fp8; stamp
cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
timeout 50 "$cs" --tool memcheck --error-exitcode 9 ./bin/gpu "mla bf16 64 heads 4-stage" "prefill bf16 d128 gqa 4:1 ragged" > "$O/memcheck.txt" 2>&1; echo "memcheck rc $?" | tee -a "$S"
tail -n 2 "$O/memcheck.txt" | tee -a "$S"; stamp
