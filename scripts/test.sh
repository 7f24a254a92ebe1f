#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, then the integration tests in
# tests/tests/ (root: they build network namespaces and load eBPF; under CI=true they
# fail rather than skip when not root). Cargo runs the test binaries one after
# another, and each integration test file holds one test with its own test bed, so
# beds never compete for the 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# The default members are every crate but mesh-ebpf, which only builds for the bpf
# target (mesh-agent's build.rs compiles and embeds it).
cargo build --release --all-targets
cargo test --release --no-fail-fast
