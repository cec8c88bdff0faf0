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
  mkdir -p .tools/wheels .tools/ptxas/bin
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d .tools/wheels 'nvidia-cuda-nvcc-cu12==12.9.86'
  python3 - <<'PY'
import glob, zipfile, os
whl = glob.glob('.tools/wheels/nvidia_cuda_nvcc_cu12-*.whl')[0]
with zipfile.ZipFile(whl) as z:
    data = z.read('nvidia/cuda_nvcc/bin/ptxas')
with open('.tools/ptxas/bin/ptxas', 'wb') as f:
    f.write(data)
os.chmod('.tools/ptxas/bin/ptxas', 0o755)
PY
  rm -rf .tools/wheels
fi
echo "setup: $toolchain ($(rustup run "$toolchain" rustc --version); rust-src, llvm-tools), stable $(rustup run stable rustc --version), ptxas $($ptxas --version | tail -1)"
