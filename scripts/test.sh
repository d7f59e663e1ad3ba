#!/usr/bin/env bash
# Installs every dependency, then builds and runs every test: unit tests, tests of the real
# binary, and the end-to-end tests in network namespaces (which need root and create only
# namespaces of their own, removed on exit).
#   sudo ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the end-to-end tests need root (network namespaces, TUN devices)." >&2
  echo "Run: sudo ./scripts/test.sh" >&2
  exit 1
fi

./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A clean build gains nothing from incremental state, and it costs gigabytes of disk.
export CARGO_INCREMENTAL=0

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --bins --locked

echo "== the same binary under another version (e2e_upgrade upgrades the data path in place to it)"
# Only the crates that read WIREMESH_VERSION are rebuilt; then this version is built back.
v2_version="$(target/debug/wiremesh --version | cut -d' ' -f2)-upgrade-v2"
WIREMESH_VERSION="$v2_version" cargo build -p wiremesh --bin wiremesh --locked
cp target/debug/wiremesh target/wiremesh-upgrade-v2
cargo build -p wiremesh --bin wiremesh --locked
export WIREMESH_V2_BIN="$PWD/target/wiremesh-upgrade-v2"
"$WIREMESH_V2_BIN" --version | grep -q -- "-upgrade-v2" || { echo "the v2 binary does not report its version" >&2; exit 1; }

echo "== systemd unit"
unit_dir=$(mktemp -d)
sed "s|/usr/local/bin/wiremesh|$PWD/target/debug/wiremesh|" scripts/systemd/wiremesh.service > "$unit_dir/wiremesh.service"
systemd-analyze verify "$unit_dir/wiremesh.service"
# The hardening must not erode: the unit scores at most 4.5 (lower is safer).
security=$(systemd-analyze security --offline=true --no-pager "$unit_dir/wiremesh.service")
score=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 4.5) }'; then
  echo "scripts/systemd/wiremesh.service: systemd-analyze security scores it ${score:-?} (must be <= 4.5); exposures:" >&2
  printf '%s\n' "$security" | grep '✗' >&2 || printf '%s\n' "$security" >&2
  exit 1
fi
echo "systemd-analyze security: $score"
rm -rf "$unit_dir"
# ...and it must still start: boot it under systemd as PID 1 (a Debian root in systemd-nspawn,
# made once with debootstrap and cached) and check the agent comes up and stays up.
scripts/systemd/boot-test.sh /var/tmp/wiremesh-vm "$PWD/target/debug/wiremesh"

echo "== tests"
# The end-to-end tests find the agent binary here.
export WIREMESH_BIN="$PWD/target/debug/wiremesh"
# --no-fail-fast: one failing test binary does not hide the others' results.
cargo test --workspace --locked --no-fail-fast -- --test-threads=2

echo "== the data path without offloads"
# What a kernel without TUN/UDP offloads gets (config `offload: false`): the tests that move
# pod traffic through the data path, again, one packet per system call.
WIREMESH_LAB_OFFLOAD=off cargo test -p wiremesh-lab --locked --no-fail-fast \
  --test e2e_mesh --test e2e_interop --test e2e_leak --test e2e_strict \
  --test e2e_restart_lossless --test e2e_policy_host -- --test-threads=2

echo "== fuzz smoke"
# Every fuzz target (docs/FUZZING.md) for 20 s from its committed seeds: a crash fails the run.
FUZZ_NICE=0 ./scripts/fuzz.sh 20

echo "== all tests passed"
