#!/usr/bin/env bash
# One architecture's PTX module of the current tree, without cargo: the project's build script
# compiled as a plain program and run with ATTN_PTX_FROM=build, as cargo would (the pinned
# toolchain that scripts/setup.sh installs builds device-kernels/). Prints the module's path.
# Shared by scripts/ptxas-kernel.sh and scripts/ptx-variant.sh.
#   scripts/build-ptx.sh [ARCH] [WORKDIR]      (sm_90a, target/ptxas-kernel)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-sm_90a}
work=${2:-target/ptxas-kernel}
mkdir -p "$work/out"
rustc --edition 2024 -O --crate-name build_script_build build.rs -o "$work/build-script"
env -u ATTN_PTX_FROM -u RUSTUP_TOOLCHAIN ATTN_PTX_FROM=build ATTN_CUDA_ARCHS="$arch" \
  CARGO_MANIFEST_DIR="$PWD" OUT_DIR="$PWD/$work/out" HOST="${HOST:-x86_64-unknown-linux-gnu}" \
  "$work/build-script" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
echo "$work/out/attn_kernels_$arch.ptx"
