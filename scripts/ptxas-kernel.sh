#!/usr/bin/env bash
# One kernel through ptxas in under a minute, for kernel work without a GPU: builds only the
# named architecture's PTX (the project's build script), cuts the kernel's entry out of the
# module, assembles it alone (-v) and prints its registers, spills and any ptxas performance
# warning (C7514/C7515/C7518/C7520: wgmma serialized). scripts/sass.sh disassembles whole
# modules; scripts/ptx-variant.sh keeps a whole module for an A/B run on the GPU.
#   scripts/ptxas-kernel.sh mla_decode_sm90_bf16 [sm_90a]
set -euo pipefail
cd "$(dirname "$0")/.."
kernel=${1:?usage: scripts/ptxas-kernel.sh KERNEL [ARCH]}
arch=${2:-sm_90a}
work=target/ptxas-kernel
module=$(scripts/build-ptx.sh "$arch" "$work")
python3 - "$module" "$kernel" "$work/$kernel.ptx" <<'PY'
import sys
ptx, name, dest = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
head = [l for l in ptx.splitlines() if l.startswith(('.version', '.target', '.address_size', '.extern', '.shared', '.global'))]
i = ptx.find('.entry ' + name + '(')
if i < 0:
    sys.exit(f'ptxas-kernel: no kernel {name} in {sys.argv[1]}')
i = ptx.rfind('\n', 0, i) + 1
k, depth = ptx.index('{', i), 0
while True:
    depth += {'{': 1, '}': -1}.get(ptx[k], 0)
    if depth == 0:
        break
    k += 1
open(dest, 'w').write('\n'.join(head) + '\n' + ptx[i:k + 1] + '\n')
PY
.tools/ptxas/bin/ptxas -arch="$arch" -v "$work/$kernel.ptx" -o /dev/null 2>&1 | grep -vE '^ptxas info\s+: (Compiling|Function properties for) ' || true
