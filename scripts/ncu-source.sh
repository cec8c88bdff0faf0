#!/usr/bin/env bash
# ncu's source view of the Hopper prefill kernel (issue 17, item 1): per-SASS-line stall reasons
# and instruction counts on P1 and P2, as CSV under $OUT. Run from a folder holding bin/prefill
# (scripts/gpu-bundle.sh). Reports: ncu-src-<workload>.csv (source page, SASS) and
# ncu-src-<workload>.txt (the sections' details).
set -uo pipefail
cd "$(dirname "$0")"
[ -d bin ] || tar -xzf bin.tar.gz
O=${OUT:-logs}; mkdir -p "$O"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
for s in ${NCU_WORKLOADS:-P1 P2}; do
  timeout ${NCU_S:-120} "$ncu" --kernel-name regex:'flash_prefill_sm90' --launch-skip 3 --launch-count 1 \
    --section WarpStateStats --section InstructionStats --section SourceCounters --import-source no \
    --export "/tmp/ncu-$s" --force-overwrite ./bin/prefill "$s" > "$O/ncu-src-$s.log" 2>&1
  echo "ncu $s rc $?"
  "$ncu" -i "/tmp/ncu-$s.ncu-rep" --page details --print-details all > "$O/ncu-src-$s.txt" 2>&1
  "$ncu" -i "/tmp/ncu-$s.ncu-rep" --page source --print-source sass --csv > "$O/ncu-src-$s.csv" 2>&1
  wc -l "$O/ncu-src-$s.csv"
done
