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
  protobuf-compiler libprotobuf-dev etcd-server etcd-client openssl systemd
  clang llvm libbpf-dev linux-libc-dev bpftool
  systemd-container debootstrap nftables nginx sockperf
  umoci skopeo runc
)
# kubectl (with its built-in kustomize) renders deploy/kubernetes and drives the Kubernetes-store
# lab: a machine image may ship a newer one; else Debian's kubernetes-client.
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
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

# Verify what the build and the tests need, naming the package that provides anything missing:
# a package list that installs is not proof that the build will find what it needs.
fail() { echo "install-deps: $1" >&2; exit 1; }
declare -A provider=(
  [ip]=iproute2 [wg]=wireguard-tools [wireguard-go]=wireguard-go [tcpdump]=tcpdump [ping]=iputils-ping
  [nc]=netcat-openbsd [iperf3]=iperf3 [protoc]=protobuf-compiler [etcd]=etcd-server [etcdctl]=etcd-client
  [openssl]=openssl [systemd-analyze]=systemd [clang]=clang [llc]=llvm [bpftool]=bpftool
  [pkg-config]=pkg-config [cc]=build-essential [nsenter]=util-linux
  [systemd-nspawn]=systemd-container [debootstrap]=debootstrap [cargo]="rustup (https://rustup.rs)"
  [nft]=nftables [nginx]=nginx [sockperf]=sockperf
  [umoci]=umoci [skopeo]=skopeo [runc]=runc [kubectl]=kubernetes-client
)
for tool in "${!provider[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing after installation; install ${provider[$tool]}"
done
# etcd-client's build script runs protoc on .proto files that import the well-known types.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nmessage Probe { google.protobuf.FileDescriptorProto d = 1; }\n' > "$probe/probe.proto"
protoc --proto_path="$probe" --descriptor_set_out="$probe/out.pb" "$probe/probe.proto" 2>"$probe/err" \
  || fail "protoc cannot import google/protobuf/descriptor.proto ($(cat "$probe/err")); install libprotobuf-dev"
# The eBPF programs include libbpf's helpers and the kernel's UAPI headers.
[ -f /usr/include/bpf/bpf_helpers.h ] || fail "/usr/include/bpf/bpf_helpers.h is missing; install libbpf-dev"
[ -f /usr/include/linux/bpf.h ] || fail "/usr/include/linux/bpf.h is missing; install linux-libc-dev"
# Strict mode's guard goes through nft's JSON interface (the agent refuses to start without it).
echo '{"nftables": [{"metainfo": {"json_schema_version": 1}}]}' | nft -c -j -f - 2>/dev/null \
  || fail "nft cannot read JSON (nft -j); install nftables (with libnftables1)"
[ -c /dev/net/tun ] || fail "/dev/net/tun is missing; load the tun module (modprobe tun)"
