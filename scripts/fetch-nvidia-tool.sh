#!/usr/bin/env bash
# One binary out of one of NVIDIA's PyPI wheels (no CUDA toolkit): scripts/setup.sh takes
# ptxas this way, scripts/sass.sh nvdisasm.
#   scripts/fetch-nvidia-tool.sh 'nvidia-cuda-nvcc-cu12==12.9.86' bin/ptxas .tools/ptxas/bin/ptxas
set -euo pipefail
cd "$(dirname "$0")/.."
requirement=$1 member=$2 dest=$3
wheels=$(mktemp -d .tools-wheels.XXXXXX)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
  --python-version 3.11 -d "$wheels" "$requirement"
mkdir -p "$(dirname "$dest")"
python3 - "$wheels" "$member" "$dest" <<'PY'
import glob, os, sys, zipfile
wheels, member, dest = sys.argv[1:]
with zipfile.ZipFile(glob.glob(os.path.join(wheels, '*.whl'))[0]) as z:
    name = next(n for n in z.namelist() if n.endswith('/' + member))
    data = z.read(name)
with open(dest, 'wb') as f:
    f.write(data)
os.chmod(dest, 0o755)
PY
