#!/usr/bin/env bash
# Installs what building, testing and demonstrating wiremesh needs on Debian/Ubuntu, as root.
# Idempotent; used by scripts/test.sh and scripts/demo.sh.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get). Use: sudo $0" >&2
  exit 1
fi

packages=(
  ca-certificates curl build-essential pkg-config
  iproute2 iputils-ping netcat-openbsd tcpdump iperf3 procps util-linux
  wireguard-tools wireguard-go
  protobuf-compiler etcd-server etcd-client openssl systemd
  clang llvm libbpf-dev linux-libc-dev bpftool
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Rust toolchain: the machine's own rustup toolchain if present, else rustup's installer.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: no cargo found; installing the stable Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi

for tool in ip wg wireguard-go tcpdump ping nc protoc etcd etcdctl openssl systemd-analyze cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-deps: $tool is still missing after installation" >&2; exit 1; }
done
[ -c /dev/net/tun ] || { echo "install-deps: /dev/net/tun is missing; load the tun module (modprobe tun)" >&2; exit 1; }
