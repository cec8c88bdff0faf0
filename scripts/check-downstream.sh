#!/usr/bin/env bash
# A new user's crate on stable Rust: tests/downstream/ (CPU layer vs the oracle, PTX modules
# embedded), with `attn-backends` as a path dependency, built and run with the stable
# toolchain, in two set-ups:
#   a. against the checkout, the pinned nightly installed: build.rs builds the PTX from
#      device-kernels/ with it, whatever toolchain builds the consumer;
#   b. against the files `cargo package --list` ships (plus host/, which a published crate
#      would get as attn-host from the registry), with a rustup home that holds stable only:
#      build.rs finds no pinned toolchain and embeds the PTX shipped in ptx/.
# Both must embed PTX byte-identical to ptx/. Scratch files and the (shared) target dir live
# in $ATTN_DOWNSTREAM_DIR (default target/downstream).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${ATTN_DOWNSTREAM_DIR:-$root/target/downstream}
mkdir -p "$work"
work=$(cd "$work" && pwd)
export CARGO_TARGET_DIR="$work/target"
unset RUSTUP_TOOLCHAIN RUSTC RUSTC_WRAPPER RUSTFLAGS CARGO_BUILD_RUSTFLAGS ATTN_PTX_FROM ATTN_CUDA_ARCHS
stable_sysroot=$(rustup run stable rustc --print sysroot)
archs=$(sed -n 's/^const DEFAULT_ARCHS: &str = "\(.*\)";/\1/p' build.rs)

# The scratch crate for one set-up: $1 = name, $2 = the attn-backends directory, $3 = the
# toolchain it is built with (its rust-toolchain.toml, as a stable user's default would be).
scratch() {
  local dir="$work/$1"
  rm -rf "$dir" && mkdir -p "$dir/src" "$dir/ptx"
  sed "s|@ATTN_BACKENDS@|$2|" tests/downstream/Cargo.toml.in >"$dir/Cargo.toml"
  cp tests/downstream/build.rs "$dir/"
  cp tests/downstream/src/main.rs "$dir/src/"
  printf '[toolchain]\nchannel = "%s"\n' "$3" >"$dir/rust-toolchain.toml"
  cp Cargo.lock "$dir/"   # the versions CI tests; a new user's resolution may pick newer ones
}

# Builds and runs the scratch crate $1 (more env before it), then checks its PTX and rustc.
run_scratch() {
  local dir="$work/$1"; shift
  local log="$work/$(basename "$dir").log"
  if ! (cd "$dir" && env "$@" RUSTUP_AUTO_INSTALL=0 DOWNSTREAM_PTX_DIR="$dir/ptx" cargo run 2>&1) >"$log"; then
    cat "$log" >&2
    echo "check-downstream: $(basename "$dir") failed to build or run (log above)" >&2
    exit 1
  fi
  grep -E '^(downstream:|warning: attn-backends)' "$log" | sed "s/^/  $(basename "$dir"): /"
  if grep -q 'downstream: built by .*nightly' "$log"; then
    echo "check-downstream: $(basename "$dir") was built by a nightly rustc, not stable" >&2; exit 1
  fi
  for a in ${archs//,/ }; do
    if ! cmp -s "$dir/ptx/$a.ptx" "ptx/$a.ptx"; then
      echo "check-downstream: $(basename "$dir"): the embedded $a PTX differs from ptx/$a.ptx (regenerate: scripts/ship-ptx.sh)" >&2
      exit 1
    fi
  done
}

start=$SECONDS
# a. The checkout; stable runs the consumer, build.rs finds the pinned nightly via rustup.
scratch checkout "$root" stable
run_scratch checkout
grep -q 'using the PTX shipped' "$work/checkout.log" && {
  echo "check-downstream: checkout: used the shipped PTX although the pinned toolchain is installed" >&2; exit 1; }

# b. What `cargo package` ships, on a machine with stable only (a rustup home linking it).
pkg="$work/packaged/attn-backends"
rm -rf "$work/packaged" && mkdir -p "$pkg"
if ! RUSTUP_TOOLCHAIN=stable cargo package -p attn-backends --list --allow-dirty >"$work/package.all" 2>"$work/package.err"; then
  cat "$work/package.err" >&2; echo "check-downstream: cargo package --list failed" >&2; exit 1
fi
grep -vxE '\.cargo_vcs_info\.json|Cargo\.toml\.orig' "$work/package.all" >"$work/package.list"
while read -r f; do
  mkdir -p "$pkg/$(dirname "$f")" && cp "$f" "$pkg/$f"
done <"$work/package.list"
for f in device-kernels/src/lib.rs ptx/SOURCES build.rs rust-toolchain.toml; do
  grep -qxF "$f" "$work/package.list" || { echo "check-downstream: cargo package leaves out $f" >&2; exit 1; }
done
cp -r host "$pkg/host"   # published separately as attn-host
rm -rf "$pkg/host/target"
home="$work/rustup-stable-only"
rm -rf "$home"
RUSTUP_HOME="$home" rustup toolchain link stable-only "$stable_sysroot" >/dev/null
scratch package "$pkg" stable-only
run_scratch package RUSTUP_HOME="$home"
grep -q 'using the PTX shipped in ptx/' "$work/package.log" || {
  echo "check-downstream: package: the shipped PTX was not used" >&2; exit 1; }
echo "check-downstream: OK on stable ($(rustup run stable rustc --version)): built from source with the pinned toolchain, and from the packaged files with the shipped PTX ($((SECONDS - start)) s)"
