#!/usr/bin/env bash
# Points the `nccl` feature's loader at an NCCL: makes DIR/libnccl.so a link to the
# libnccl.so.2 of PyTorch's `nvidia-nccl` package (or of $NCCL_LIB when set) and prints the
# LD_LIBRARY_PATH to use:
#   export LD_LIBRARY_PATH=$(scripts/nccl-lib.sh /tmp/nccl):$LD_LIBRARY_PATH
# cudarc loads NCCL by the names libnccl.so (and a few numbered ones, not .so.2), which is
# why the link is needed where only the versioned file is installed.
set -euo pipefail
dir=${1:?usage: nccl-lib.sh DIR}
lib=${NCCL_LIB:-}
if [ -z "$lib" ]; then
  for py in python3 python; do
    lib=$("$py" - 2>/dev/null <<'PY' || true
import glob, os
import nvidia.nccl as n
paths = [p for d in n.__path__ for p in glob.glob(os.path.join(d, "lib", "libnccl.so*"))]
print(sorted(paths)[0] if paths else "")
PY
)
    [ -n "$lib" ] && break
  done
fi
[ -n "$lib" ] && [ -f "$lib" ] || { echo "nccl-lib.sh: no libnccl.so.2 found (pip's nvidia-nccl package, or set NCCL_LIB=/path/to/libnccl.so.2)" >&2; exit 1; }
mkdir -p "$dir"
ln -sf "$lib" "$dir/libnccl.so"
echo "$dir"
