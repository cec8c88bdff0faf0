#!/usr/bin/env bash
# (scripts/gpu-lease-h200.sh: gpu-lean.sh carries it as h200.sh.) The second call of a full lease,
# from gpu-lean/ with ../gpu-candle beside it; the first is gpu-bundle/run.sh's tests, sanitizers
# and benches. Here: the peers timed in the same lease (peer_bench.py: copy and matmul ceilings,
# SDPA prefill on cuDNN and flash, decode on SDPA and the Triton paged kernel), `attn bench` over
# every workload with the peers beside it and its plot (the README's figure), the sweeps (SWEEPS=1),
# ncu's source view of the prefill (NCU=1),
# attn-candle's GPU tests and tokens/s. SKIP_PEERS, SKIP_BENCH, SKIP_CANDLE leave a stage out.
set -uo pipefail
cd "$(dirname "$0")"
. ./gpu-lease-common.sh
if [ -z "${SKIP_PEERS:-}" ]; then
  PYTHONUNBUFFERED=1 timeout ${PEERS_S:-200} python3 peer_bench.py --sections ceil,prefill,decode,mla --quick --out "$O" > "$O/peers.txt" 2>&1
  echo "peers rc $?" | tee -a "$S"; stamp
fi
peers=""; [ -f "$O/peers.json" ] && peers="--peers $O/peers.json"
if [ -z "${SKIP_BENCH:-}" ]; then
  timeout ${BENCH_S:-150} ./bin/attn bench --json $peers > "$O/attn-bench.jsonl" 2> "$O/attn-bench.err"; echo "attn bench rc $?" | tee -a "$S"
  ./bin/attn bench --from "$O/attn-bench.jsonl" $peers --plot "$O/attn-bench.svg" >> "$S" 2>&1; stamp
fi
if [ -n "${SWEEPS:-}" ]; then
  timeout ${SWEEP_S:-60} ./bin/attn bench --model llama-3-8b --batch 8 --sweep context --json > "$O/attn-bench-sweep.jsonl" 2>> "$O/attn-bench.err"
  timeout ${SWEEP_S:-60} ./bin/attn bench --model deepseek-v3 --batch 32 --context 8192 --sweep queries=1,2,3,4 --json >> "$O/attn-bench-sweep.jsonl" 2>> "$O/attn-bench.err"
  ./bin/attn bench --from "$O/attn-bench-sweep.jsonl" --plot "$O/attn-bench-sweep.svg" >> "$S" 2>&1; stamp
fi
# ncu's source view of the Hopper prefill (NOTES-prefill.md, issue 17 item 1).
[ -n "${NCU:-}" ] && { NCU_S=${NCU_S:-90} bash ./ncu-source.sh | tee -a "$S"; stamp; }
[ -z "${SKIP_CANDLE:-}" ] && { bash ../gpu-candle/run.sh; stamp; }
exit 0
