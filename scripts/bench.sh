#!/usr/bin/env bash
# Direct vs meshed TCP (throughput, latency, agent CPU and memory), same node and
# across nodes; prints the table and writes docs/benchmarks.md. Extra arguments go
# to `cargo xtask bench` (e.g. --seconds 10 --round-trips 50000).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release
cargo xtask bench "$@"
