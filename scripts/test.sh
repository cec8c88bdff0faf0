#!/usr/bin/env bash
# The test command (CI runs this): set-up, then every test on the CPU. PTX for every target
# architecture is built and assembled with ptxas (report: target/ptx/); GPU tests and
# benchmarks run their GPU-free paths and say why they skip. The PTX a package ships (ptx/,
# generated here, never committed) is built fresh, and a downstream crate must build and run
# on stable, from the checkout and from the packaged files.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The host's modules import no module that imports them back.
python3 scripts/import-cycles.py
scripts/ship-ptx.sh
export ATTN_REQUIRE_PTXAS=1
# The PTX ship-ptx.sh just built from the kernels (for every architecture): the builds below
# embed it rather than compile the kernels again (scripts/check-downstream.sh still builds
# them from source, as a user's build does, and compares).
export ATTN_PTX_FROM=shipped
cargo test --release --workspace --all-targets
cargo test --release --workspace --doc
# The nccl feature (context parallelism over NCCL) builds and its tests run with no NCCL and
# no GPU: NCCL is loaded at run time; the GPU cases skip, saying why.
cargo test --release --features nccl -p attn-host --lib dcp
cargo test --release --features nccl --test dcp --test gpu
# The API docs build with no rustdoc warning (broken links and the like).
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps -p attn-host -p attn-backends --features nccl
scripts/check-downstream.sh
