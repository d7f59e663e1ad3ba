#!/usr/bin/env bash
# Builds wiremesh and runs a local encrypted lab: three nodes with two pods each, in network
# namespaces on this machine, on the embedded dir store. Shows pod-to-pod traffic across
# nodes, `wiremesh encrypt status`, `wg show`, and a capture proving the underlay carries only
# WireGuard. Everything it creates is removed when it ends.
#   sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh needs root (network namespaces, TUN devices). Run: sudo ./scripts/demo.sh" >&2
  exit 1
fi

./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --bins --locked
export WIREMESH_BIN="$PWD/target/debug/wiremesh"
exec ./target/debug/wiremesh-lab demo --nodes "${NODES:-3}" --pods "${PODS:-2}"
