#!/usr/bin/env bash
# Sets up a fresh machine: the pinned nightly (rust-src, llvm-tools) that builds the kernels,
# stable (what scripts/check-downstream.sh builds a consumer with), and ptxas (from NVIDIA's
# PyPI wheel, no CUDA toolkit) that checks the PTX. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
   || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^llvm-tools' \
   || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup toolchain install "$toolchain" --profile minimal -c rust-src -c llvm-tools
fi
# Stable: what a downstream user builds with (scripts/check-downstream.sh).
if ! rustup run stable rustc --version >/dev/null 2>&1; then
  rustup toolchain install stable --profile minimal
fi
ptxas=.tools/ptxas/bin/ptxas
if [ ! -x "$ptxas" ]; then
  scripts/fetch-nvidia-tool.sh 'nvidia-cuda-nvcc-cu12==12.9.86' bin/ptxas "$ptxas"
fi
echo "setup: $toolchain ($(rustup run "$toolchain" rustc --version); rust-src, llvm-tools), stable $(rustup run stable rustc --version), ptxas $($ptxas --version | tail -1)"
