#!/usr/bin/env bash
# Runs on the GPU machine, from the bundle: GPU tests, compute-sanitizer (memcheck and
# racecheck on every kernel), the `attn demo`s, and the benchmarks (bf16 and fp8 caches).
# Logs go to $OUT (or ./logs).
#   run.sh                 every stage
#   run.sh quick           every stage but the sanitizers and the peers
#   run.sh STAGE...        only these: tests sanitize demo decode step prefill mla dcp peers attnbench ab
#   AB="M2 M4" AB_BACKEND=CUDA_MLA run.sh ab
#                          main's embedded PTX against each variant in alt/ (scripts/ptx-variant.sh),
#                          one after another in this lease: `attn bench $AB` for each, then a table
set -uo pipefail
cd "$(dirname "$0")"
[ -d bin ] || tar -xzf bin.tar.gz
log=${OUT:-logs}
mkdir -p "$log"
status=0
export ATTN_REQUIRE_GPU=1
# NCCL for the DCP tests (the nccl feature): PyTorch's, linked as libnccl.so.
nccl_dir=$(./nccl-lib.sh "${TMPDIR:-/tmp}/attn-nccl" 2>/dev/null) && export LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
all="tests sanitize demo decode step prefill mla dcp peers"
case "${1:-}" in
  "") stages=$all ;;
  quick) stages="tests demo decode step prefill mla dcp" ;;
  *) stages="$*" ;;
esac
want() { [[ " $stages " == *" $1 "* ]]; }
echo "commit $(cat COMMIT); stages: $stages" | tee "$log/summary.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log/summary.txt"
for arch in ptx/*.ptx; do echo "ptx: $arch" >> "$log/summary.txt"; done
if want tests; then
  ./bin/gpu 2>&1 | tee "$log/gpu-tests.txt" || status=1
  grep "gpu tests:" "$log/gpu-tests.txt" >> "$log/summary.txt"
fi
if want sanitize; then
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [ -n "$cs" ]; then
    # A subset that still launches every kernel: cache writes (16-bit, fp8, MLA), decode and
    # split + merge, both prefills, MLA, at every element type of the cache.
    "$cs" --tool memcheck --error-exitcode 9 ./bin/gpu "d128 gqa 8:2" "d64 gqa 4:4" "d256 gqa 8:2 5 splits" "block size 1" "window" "ALiBi" "soft-cap" "one step" "cuda graph" "determinism" "ragged" "Falcon" "group 136" "d96" "mla bf16 16 heads" "mla bf16 128 heads 4 tokens" "mla f16 128 heads 3 splits" "mla vs" "fp8 bf16 d128 gqa 4:1" "fp8 f16 d256 gqa 4:1 5 splits" "fp8 f16 d96" "fp8 prefill bf16 d128" "fp8 prefill bf16 d256" "fp8 bf16 d128 block size 1" "fp8 bf16 d128 saturating" "fp8 cache" "fp8 portable" "mla fp8 bf16 16 heads" "mla fp8 f16 128 heads 3 splits" "mla fp8 sm90 bf16 64 heads 2-stage" "mla fp8 sm90 f16 128 heads 2 tokens" "sinks" "chunks bf16 d128 chunks of 64" "chunks f16 d64" "chunks portable" "Llama-4" "bidirectional" "fp8 bf16 d64 gpt-oss" "fp8 f16 d128 chunks" "mla portable" "mla bf16 64 heads block size 256" "mla bf16 32 heads 64k" "4-stage (32-key" "dcp gqa d128 N=4 I=16" "dcp mla 16 heads N=2" "dcp gqa d64 sinks" "dcp mla 16 heads fp8" "dcp gqa d128 graph" "persistent" > "$log/memcheck.txt" 2>&1 || status=1
    "$cs" --tool racecheck --error-exitcode 9 ./bin/gpu "bf16 d128 gqa 8:2" "f16 d256 gqa 4:4 5 splits" "cuda graph" "Falcon" "group 136" "soft-cap 10" "mla bf16 16 heads 5 splits" "mla bf16 128 heads 4 tokens" "prefill bf16 d128 gqa 4:1 ragged" "prefill portable bf16 d128" "fp8 bf16 d128 gqa 4:1" "fp8 f16 d256 gqa 4:1 5 splits" "fp8 prefill bf16 d128" "fp8 prefill bf16 d64" "fp8 portable bf16 d128" "fp8 portable f16 d64" "mla fp8 bf16 16 heads" "mla fp8 sm90 bf16 64 heads 2-stage" "mla fp8 sm90 f16 128 heads 2 tokens" "sinks bf16 d64 gpt-oss 64:8 full" "sinks bf16 d64 gpt-oss 64:8 window 128, 5 splits" "sinks portable bf16 d64 gpt-oss 64:8 full" "chunks bf16 d128 chunks of 64" "chunks portable bf16 d128" "bidirectional bf16 d64 16:16" "bidirectional bf16 d128" "bidirectional portable bf16 d64" "fp8 f16 d128 chunks" "mla portable bf16" "mla bf16 32 heads block size 16" "mla bf16 64 heads 4-stage" "dcp gqa d128 N=4 I=16" "dcp mla 16 heads N=2" "dcp gqa d128 f16" "persistent 1 run" "persistent 3 runs" > "$log/racecheck.txt" 2>&1 || status=1
    tail -n 3 "$log/memcheck.txt" "$log/racecheck.txt" | tee -a "$log/summary.txt"
  else
    echo "compute-sanitizer not found" | tee -a "$log/summary.txt"
  fi
fi
if want demo; then
  ./bin/attn demo 2>&1 | tee "$log/demo.txt" || status=1
  ./bin/attn demo --dtype f16 --model mistral-7b 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/02_gpu_plan_run 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/attn demo --model deepseek-v3 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/attn demo --model deepseek-v3 --kv-cache-dtype fp8 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/attn demo --model llama-3-8b --kv-cache-dtype fp8 2>&1 | tee -a "$log/demo.txt" || status=1
  # A layer no GPU kernel serves (f32): the CPU runs it, with the warning saying why.
  ./bin/attn demo --model llama-3-8b --dtype f32 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/attn select --model deepseek-v3 --kv-cache-dtype fp8 2>&1 | tee -a "$log/demo.txt" || status=1
  # The models people serve now: every layer type of each, on the GPU, checked.
  for m in gpt-oss-20b gpt-oss-120b llama-4-scout gemma-3-27b qwen3-32b; do
    ./bin/attn demo --model $m 2>&1 | tee -a "$log/demo.txt" || status=1
  done
  ./bin/attn demo --model gpt-oss-120b --kv-cache-dtype fp8 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/attn select --model gpt-oss-20b 2>&1 | tee -a "$log/demo.txt" || status=1
  ./bin/attn select --model llama-4-scout 2>&1 | tee -a "$log/demo.txt" || status=1
fi
if want decode; then
  ./bin/decode --json --extra 2>&1 | tee "$log/bench-decode.txt" || status=1
  ./bin/decode --json --extra --kv-dtype fp8 2>&1 | tee -a "$log/bench-decode.txt" || status=1
fi
want step && { ./bin/step --json 2>&1 | tee "$log/bench-step.txt" || status=1; }
if want prefill; then
  ./bin/prefill --json 2>&1 | tee "$log/bench-prefill.txt" || status=1
  ./bin/prefill --json --kv-dtype fp8 2>&1 | tee -a "$log/bench-prefill.txt" || status=1
fi
if want mla; then
  timeout ${MLA_TIMEOUT:-600} ./bin/mla --json --sweep 2>&1 | tee "$log/bench-mla.txt" || status=1
  timeout ${MLA_TIMEOUT:-600} ./bin/mla --json --sweep --kv-dtype fp8 2>&1 | tee -a "$log/bench-mla.txt" || status=1
fi
if want dcp; then
  timeout ${DCP_TIMEOUT:-400} ./bin/dcp --json 2>&1 | tee "$log/bench-dcp.txt" || status=1
fi
if want attnbench; then
  # `attn bench`: every workload of WORKLOADS.md, then sweeps (a Llama-3-8B decode at batch 8
  # over contexts 1k-128k; DeepSeek-V3 MLA at batch 32 over 1-4 query tokens), with the
  # peers' figures (peer_bench.py's peers.json, timed first in the same lease) drawn beside.
  peers=""
  if [ -f peer_bench.py ]; then
    timeout 300 python3 peer_bench.py --sections ceil,prefill,decode,mla --quick --out "$log" > "$log/peers.txt" 2>&1 || echo "peer bench failed (not a product failure)" >> "$log/summary.txt"
    [ -f "$log/peers.json" ] && peers="--peers $log/peers.json"
  fi
  ./bin/attn bench --json $peers > "$log/attn-bench.jsonl" 2> "$log/attn-bench.err" || status=1
  ./bin/attn bench --model llama-3-8b --batch 8 --sweep context --json > "$log/attn-bench-sweep.jsonl" 2>> "$log/attn-bench.err" || status=1
  ./bin/attn bench --model deepseek-v3 --batch 32 --context 8192 --sweep queries=1,2,3,4 --json >> "$log/attn-bench-sweep.jsonl" 2>> "$log/attn-bench.err" || status=1
  ./bin/attn bench --from "$log/attn-bench.jsonl" $peers --plot "$log/attn-bench.svg" >> "$log/summary.txt" 2>&1 || status=1
  ./bin/attn bench --from "$log/attn-bench-sweep.jsonl" --plot "$log/attn-bench-sweep.svg" >> "$log/summary.txt" 2>&1 || status=1
fi
if want ab; then
  for d in alt/*/; do for f in "$d"*.ptx.gz; do [ -f "$f" ] && gunzip -f "$f"; done; done
  for v in main alt/*/; do
    v=${v%/}; name=${v#alt/}
    if [ "$v" = main ]; then unset ATTN_PTX_DIR; else export ATTN_PTX_DIR=$v; fi
    ./bin/attn bench ${AB:-M2 M4 M3} ${AB_BACKEND:+--backend $AB_BACKEND} --json > "$log/ab-$name.jsonl" 2> "$log/ab-$name.err" || status=1
  done
  unset ATTN_PTX_DIR
  python3 - "$log" <<'PY' | tee -a "$log/summary.txt"
import glob, json, os, sys
runs = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "ab-*.jsonl"))):
    name = os.path.basename(path)[3:-6]
    for line in open(path):
        try: r = json.loads(line)
        except ValueError: continue
        runs.setdefault((r["workload"], r["backend"]), {})[name] = r
names = sorted({n for v in runs.values() for n in v}, key=lambda n: (n != "main", n))
print("| workload | backend | " + " | ".join(names) + " |")
print("|---|---|" + "---|" * len(names))
for (w, b), by in runs.items():
    cell = lambda r: f'{r["median_us"]:.1f} us, {r["fraction_of_ceiling"]:.3f} of {r["ceiling"]}' if r else "-"
    print(f"| {w} | {b} | " + " | ".join(cell(by.get(n)) for n in names) + " |")
PY
fi
if want peers && [ -f peer-p6.py ]; then
  timeout 120 python3 peer-p6.py > "$log/peers-p6.txt" 2>&1 || echo "P6 peer bench failed (not a product failure)" >> "$log/summary.txt"
fi
if want peers && [ -f peer_bench.py ]; then
  timeout 300 python3 peer_bench.py --sections prefill --quick > "$log/peers-prefill.txt" 2>&1 || echo "peer bench failed (not a product failure)" >> "$log/summary.txt"
fi
echo "run.sh status $status" | tee -a "$log/summary.txt"
exit $status
