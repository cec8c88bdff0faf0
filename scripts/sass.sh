#!/usr/bin/env bash
# The SASS of one kernel, without a GPU: ptxas (scripts/setup.sh) assembles the built PTX of
# an architecture, nvdisasm (NVIDIA's `nvidia-cuda-nvdisasm` wheel, fetched into .tools/ on
# first use) disassembles it, and this prints the kernel's registers and spills, its
# instruction count and an opcode histogram; the listing is kept in target/sass/ to diff
# against another build's. For kernel work: what a change did to the code, before device time.
#   scripts/sass.sh paged_attention_sm90_bf16_e4m3_d128 [sm_90a]
set -euo pipefail
cd "$(dirname "$0")/.."
kernel=${1:?usage: scripts/sass.sh KERNEL [ARCH]}
arch=${2:-sm_90a}
nvdisasm=.tools/nvdisasm/bin/nvdisasm
if [ ! -x "$nvdisasm" ]; then
  scripts/fetch-nvidia-tool.sh 'nvidia-cuda-nvdisasm==13.2.78' bin/nvdisasm "$nvdisasm"
fi
ptx_dir=$(dirname "$(ls -t target/release/build/attn-backends-*/out/ptx_modules.rs | head -n 1)")
ptx="$ptx_dir/attn_kernels_${arch}.ptx"
[ -f "$ptx" ] || { echo "sass: no $ptx (cargo build --release first)" >&2; exit 1; }
mkdir -p target/sass
sum=$(sha256sum "$ptx" | cut -c1-16)
cubin="target/sass/${arch}-${sum}.cubin"
if [ ! -f "$cubin" ]; then
  .tools/ptxas/bin/ptxas -arch="$arch" -v "$ptx" -o "$cubin" 2> "target/sass/${arch}-${sum}.ptxas.txt"
fi
grep -A2 "Function properties for ${kernel}\$" "target/sass/${arch}-${sum}.ptxas.txt" | sed 1d || true
listing="target/sass/${kernel}-${arch}-${sum}.sass"
"$nvdisasm" -c "$cubin" 2>/dev/null |
  awk -v k="$kernel" '$0 ~ "^\\s*\\.text\\." k ":" {p = 1; next} p && /^\s*\.text\./ {p = 0; done = 1} p && !done' > "$listing"
[ -s "$listing" ] || { echo "sass: no kernel $kernel in the $arch module" >&2; exit 1; }
echo "$(grep -cE '^\s+/\*[0-9a-f]+\*/' "$listing") instructions; listing: $listing"
grep -oE '^\s+/\*[0-9a-f]+\*/\s+(@!?U?P[0-9T] )?[A-Z0-9_.]+' "$listing" | awk '{print $NF}' | sed 's/\..*//' |
  sort | uniq -c | sort -rn | awk '{printf "%s %s  ", $2, $1} NR % 8 == 0 {print ""} END {print ""}'
