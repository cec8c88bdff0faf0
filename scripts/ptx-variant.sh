#!/usr/bin/env bash
# Keeps the current tree's PTX module of one architecture as a named variant, for an A/B of
# kernels in one GPU lease: the bundle's binaries load it through ATTN_PTX_DIR (same host
# code, so the variant's kernels must take the same parameters and shared memory), and
# `gpu-bundle/run.sh ab` benches main's embedded PTX and every variant one after another.
# Variants live in target/ptx-variants/NAME/ (gzipped); scripts/gpu-bundle.sh carries them.
#   git stash; scripts/ptx-variant.sh before; git stash pop     (main's kernel as "before")
#   scripts/ptx-variant.sh NAME [ARCH]                         (sm_90a)
#   scripts/ptx-variant.sh --clear                             (drop every variant)
set -euo pipefail
cd "$(dirname "$0")/.."
store=target/ptx-variants
if [ "${1:-}" = "--clear" ]; then rm -rf "$store"; exit 0; fi
name=${1:?usage: scripts/ptx-variant.sh NAME [ARCH] | --clear}
arch=${2:-sm_90a}
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "ptx-variant: NAME is letters, digits, _ . -" >&2; exit 2; }
module=$(scripts/build-ptx.sh "$arch" target/ptxas-kernel)
mkdir -p "$store/$name"
gzip -c "$module" > "$store/$name/attn_kernels_$arch.ptx.gz"
echo "ptx-variant: $store/$name/attn_kernels_$arch.ptx.gz ($(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' + changes'))"
