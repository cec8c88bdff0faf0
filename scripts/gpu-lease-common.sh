# Sourced by the lease scripts (gpu-lease-pending.sh, gpu-lease-second.sh, gpu-lease-h200.sh), from their folder:
# unpacks the bundle, opens $OUT/summary.txt with the device and commit, and defines `stamp`
# (seconds since the start), `fig FILE LABEL` (a bench's JSON lines, one summary line each) and `use`.
[ -d bin ] || tar -xzf bin.tar.gz
gunzip -f alt/*/*.gz 2>/dev/null
O=${OUT:-logs}; mkdir -p "$O"; S=$O/summary.txt
export ATTN_REQUIRE_GPU=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; echo "commit $(cat COMMIT)"; } | tee "$S"
t0=$(date +%s)
stamp() { echo "t=$(( $(date +%s) - t0 ))" | tee -a "$S"; }
fig() { grep -h '^{' "$1" | python3 -c '
import sys, json
for l in sys.stdin:
    d = json.loads(l)
    print(sys.argv[1], d["workload"], d.get("kv_dtype", ""), d["kernel"], "splits", d.get("splits"), "us %.1f" % d["median_us"],
          "TFLOP/s %.1f" % (d.get("tflops") or 0), "GB/s %.0f" % (d.get("gbps") or 0), "frac %.3f" % (d.get("fraction_of_ceiling") or 0))' "$2" | tee -a "$S"; }
# `use branch` for the bundle's own module, `use NAME` for alt/NAME (loaded by ATTN_PTX_DIR).
use() { if [ "$1" = branch ]; then unset ATTN_PTX_DIR; else export ATTN_PTX_DIR=alt/$1; fi; }
