#!/usr/bin/env bash
# Optional: what attn-candle's `cuda` feature needs to build here, with no CUDA toolkit
# installed and no GPU: candle's `cuda` feature compiles candle's own CUDA C++ kernels with
# nvcc and links cudarc with `dynamic-linking` (libcuda, nvrtc, cuBLAS, cuRAND). All of it
# comes from NVIDIA's PyPI wheels of CUDA 13.0 (the GPU machines' driver is 580, CUDA 13.0;
# their PyTorch is cu130, whose libraries the binaries then load), laid out as a CUDA_HOME in
# .tools/cuda13. libcuda.so is the driver's, in no wheel: a stub with the driver API's names
# (from cudarc's bindings) lets the linker finish; the real driver is loaded at run time.
# About 1 GiB. CI does not need it (the adapter's CPU half builds without it).
#   scripts/setup-cuda.sh && source <(scripts/setup-cuda.sh --env)
#   cargo test -p attn-candle --features cuda --target-dir target/cuda
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/.tools/cuda13
if [ "${1:-}" = "--env" ]; then
  echo "export CUDA_HOME=$root PATH=$root/bin:\$PATH CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
  exit 0
fi
if [ ! -x "$root/bin/nvcc" ] || [ ! -e "$root/lib/stubs/libcuda.so" ]; then
  wheels=$(mktemp -d .tools-wheels.XXXXXX)
  trap 'rm -rf "$wheels"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.5.25
  rm -rf "$root" && mkdir -p "$root"
  python3 - "$wheels" "$root" <<'PY'
import glob, os, sys, zipfile
wheels, root = sys.argv[1:]
for w in glob.glob(os.path.join(wheels, '*.whl')):
    with zipfile.ZipFile(w) as z:
        for info in z.infolist():
            # nvidia/cu13/{bin,include,lib,nvvm}/... -> root/...
            parts = info.filename.split('/')
            if len(parts) < 4 or parts[:2] != ['nvidia', 'cu13'] or info.is_dir() or parts[2].startswith('.'):
                continue
            dest = os.path.join(root, *parts[2:])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, 'wb') as f:
                f.write(z.read(info))
            if parts[2] in ('bin',) or '/bin/' in info.filename:
                os.chmod(dest, 0o755)
PY
  # The unversioned names the linker asks for.
  (cd "$root/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done && ln -sf libcurand.so.10 libcurand.so)
  # The driver stub: every cu* function cudarc declares, as a symbol of libcuda.so.1.
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -n 1)
  [ -f "$sys" ] || { cargo fetch -q && sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -n 1); }
  mkdir -p "$root/lib/stubs"
  grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$sys" | sed -E 's/\s*fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
    awk '{print "int " $1 "(void) { return 999; }"}' > "$wheels/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$wheels/cuda_stub.c"
fi
echo "setup-cuda: $("$root/bin/nvcc" --version | tail -n 1) in $root; then: source <(scripts/setup-cuda.sh --env)"
