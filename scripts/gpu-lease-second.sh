#!/usr/bin/env bash
# Second call of a lease: attn-candle's GPU half (../gpu-candle), then the MLA figures the quick
# pass left out and `attn bench`'s catalogue (MODULE=main-module for main's kernels).
set -uo pipefail
cd "$(dirname "$0")"
. ./gpu-lease-common.sh
[ -z "${SKIP_CANDLE:-}" ] && CANDLE_TEST_S=${CANDLE_TEST_S:-150} CANDLE_BENCH_S=${CANDLE_BENCH_S:-200} bash ../gpu-candle/run.sh; stamp
use "${MODULE:-branch}"
echo "module ${MODULE:-branch}" | tee -a "$S"
timeout 40 ./bin/mla --json M1 M3 > "$O/mla-bf16.txt" 2>&1; grep -h '^{' "$O/mla-bf16.txt" | tee -a "$S"
timeout 40 ./bin/mla --json --kv-dtype fp8 M2 M4 > "$O/mla-fp8.txt" 2>&1; grep -h '^{' "$O/mla-fp8.txt" | tee -a "$S"; stamp
# Probe (NOTES-decode.md): is d64's 0.84-0.87 of copy the cache layout (a kv head's 128-byte
# rows 1 KiB apart at 8 kv heads)? The same bytes and group at 1 kv head, d64 and d128.
for c in d64-kv8:64 d64-kv1:512 d128-kv8:64 d128-kv1:512; do
  timeout 30 ./bin/attn bench --config probe/${c%%:*}.json --batch ${c##*:} --context 4096 --backend CUDA_PAGED --json 2>&1 | grep -h '^{' | tee -a "$O/probe.jsonl" | python3 -c 'import sys, json
for l in sys.stdin:
    d = json.loads(l); print("probe", d["workload"], "us %.1f" % d["median_us"], "frac %.3f" % (d.get("fraction_of_ceiling") or 0))' | tee -a "$S"
done; stamp
[ -n "${SKIP_BENCH:-}" ] && exit 0
timeout ${BENCH_S:-150} ./bin/attn bench --json > "$O/attn-bench.jsonl" 2> "$O/attn-bench.err"; echo "attn bench rc $?" | tee -a "$S"; stamp
