#!/usr/bin/env bash
# The demo: two simulated nodes, four pods, the control plane and two agents; shows
# requests through the mesh, access logs with SPIFFE identities, and kernel maps.
# Everything it creates is removed at the end, and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release
cargo xtask demo
