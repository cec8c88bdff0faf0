#!/usr/bin/env bash
# The PTX a published package ships in ptx/ (used by build.rs where the pinned toolchain is
# not installed, e.g. a consumer on stable Rust): builds device-kernels/ fresh with the
# pinned toolchain, through build.rs itself (compiled here as a plain program), for the
# default architectures. ptx/ is generated, never committed (.gitignore): run this before
# `cargo package` / `cargo publish` (Cargo.toml's `include` ships it); scripts/test.sh runs it
# before checking the packaged crate on stable (scripts/check-downstream.sh).
#
#   scripts/ship-ptx.sh           (re)generate ptx/
#   scripts/ship-ptx.sh --check   fail unless ptx/ is byte-identical to a fresh build
#
# ptx/SOURCES records the SHA-256 of device-kernels/src, build.rs and rust-toolchain.toml,
# and build.rs refuses a shipped PTX whose inputs differ, so a stale ptx/ can only ever
# fail, never be embedded.
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
archs=$(sed -n 's/^const DEFAULT_ARCHS: &str = "\(.*\)";/\1/p' build.rs)
[ -n "$archs" ] || { echo "ship-ptx: no DEFAULT_ARCHS in build.rs" >&2; exit 1; }
work=${ATTN_SHIP_DIR:-target/ship-ptx}
mkdir -p "$work/out"
work=$(cd "$work" && pwd)
rm -f "$work"/out/attn_kernels_*.ptx "$work/out/SOURCES"
# build.rs needs nothing but std: the pinned toolchain compiles it, then it runs as cargo would.
rustc --edition 2024 -O --crate-name build_script_build build.rs -o "$work/build-script"
env -u ATTN_PTX_FROM -u RUSTUP_TOOLCHAIN ATTN_PTX_FROM=build ATTN_CUDA_ARCHS="$archs" \
  CARGO_MANIFEST_DIR="$PWD" OUT_DIR="$work/out" HOST="${HOST:-x86_64-unknown-linux-gnu}" \
  "$work/build-script" >"$work/build.log"
fresh=("$work/out/SOURCES")
shipped=(ptx/SOURCES)
for a in ${archs//,/ }; do
  fresh+=("$work/out/attn_kernels_$a.ptx")
  shipped+=("ptx/$a.ptx")
done
if [ "$check" = 1 ]; then
  stale=()
  for i in "${!fresh[@]}"; do
    cmp -s "${fresh[$i]}" "${shipped[$i]}" || stale+=("${shipped[$i]}")
  done
  extra=$(ls ptx 2>/dev/null | grep -vxF -f <(printf '%s\n' "${shipped[@]#ptx/}") || true)
  if [ ${#stale[@]} -gt 0 ] || [ -n "$extra" ]; then
    echo "ship-ptx: the shipped PTX differs from a fresh build of device-kernels/: ${stale[*]} $extra" >&2
    if [ -f ptx/SOURCES ]; then
      diff ptx/SOURCES "$work/out/SOURCES" >&2 || true
    fi
    echo "ship-ptx: regenerate it: scripts/ship-ptx.sh" >&2
    exit 1
  fi
  echo "ship-ptx: ptx/ ($archs) is identical to a fresh build"
else
  rm -rf ptx && mkdir ptx
  for i in "${!fresh[@]}"; do cp "${fresh[$i]}" "${shipped[$i]}"; done
  echo "ship-ptx: wrote ptx/ ($archs, $(cat ptx/*.ptx | wc -c) bytes of PTX), for packaging"
fi
