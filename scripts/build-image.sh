#!/usr/bin/env bash
# Builds the wiremesh container image without a registry or a container engine: a minimal root
# file system (the agent binary, every shared library it and `nft` load, `nft` itself — strict
# mode and the L7 redirect apply their rules through `nft -j` —, CA certificates, a root-only
# /etc/passwd and /etc/group, and the empty directories the agent writes to) packed by umoci into
# the OCI layout <out>/wiremesh with the version as its tag, and exported by skopeo as a docker
# archive <out>/wiremesh-<version>.tar (for `docker load` / `ctr image import`).
#
# Usage: scripts/build-image.sh [--binary PATH] [--version V] [--out DIR]
#   --binary   the wiremesh binary to pack (default: `cargo build --release --locked --bin
#              wiremesh`, then <target dir>/release/wiremesh)
#   --version  the image tag (default: the workspace version in the root Cargo.toml)
#   --out      where the layout and the archive go (default: target/oci)
#
# Idempotent: the tag is replaced and unreferenced blobs are collected. Runs as root (the root
# file system holds root-owned files). Prints the image's size: the compressed layer and the
# unpacked root file system.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=""
version=""
out="$repo/target/oci"

die() {
    echo "build-image: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root (the root file system holds root-owned files)"
for tool in umoci skopeo ldd nft install; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (scripts/install-deps.sh installs it)"
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || die "$ca_bundle is missing (Debian package ca-certificates)"

if [ -z "$version" ]; then
    version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
    [ -n "$version" ] || die "no [workspace.package] version in $repo/Cargo.toml"
fi
case "$version" in
*[!A-Za-z0-9._-]* | "") die "version '$version' is not a valid image tag" ;;
esac
if [ -z "$binary" ]; then
    (cd "$repo" && cargo build --release --locked --bin wiremesh)
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/wiremesh"
fi
[ -x "$binary" ] || die "the binary $binary does not exist or is not executable"
nft=$(command -v nft)
# The source label: the repository's origin, or its commit where it has no remote.
source=$(git -C "$repo" config --get remote.origin.url 2>/dev/null ||
    echo "wiremesh@$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)")

mkdir -p "$out"
out=$(cd "$out" && pwd)
layout="$out/wiremesh"
work=$(mktemp -d "$out/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

# copy SRC DEST: copies a file into the root file system at DEST (symlinks resolved).
copy() {
    install -D -m "$(stat -L -c %a "$1")" "$1" "$rootfs$2"
}

# libs PROGRAM: the shared libraries (and the loader) ldd names for PROGRAM, one path a line.
libs() {
    ldd "$1" | awk '/=>/ && $3 ~ /^\// { print $3 } /^[ \t]*\// { print $1 }'
}

copy "$binary" /usr/local/bin/wiremesh
copy "$nft" /usr/sbin/nft
for lib in $( (libs "$binary"; libs "$nft") | sort -u); do
    copy "$lib" "$lib"
done
copy "$ca_bundle" /etc/ssl/certs/ca-certificates.crt
# nft names protocols and services from these when it prints or parses rules.
for f in /etc/protocols /etc/services; do
    [ -f "$f" ] && copy "$f" "$f"
done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
mkdir -p "$rootfs/tmp" "$rootfs/run/wiremesh" "$rootfs/run/wireguard" "$rootfs/var/lib/wiremesh" \
    "$rootfs/etc/wiremesh" "$rootfs/root" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root" "$rootfs/var/lib/wiremesh"

# The loader must resolve the libraries in the image on its own: check it before packing.
smoke=$(chroot "$rootfs" /usr/local/bin/wiremesh --version) ||
    die "wiremesh --version fails inside the root file system (a library missing?)"
chroot "$rootfs" /usr/sbin/nft --version >/dev/null ||
    die "nft --version fails inside the root file system (a library missing?)"

[ -d "$layout" ] || umoci init --layout "$layout"
umoci rm --image "$layout:$version" 2>/dev/null || true
umoci new --image "$layout:$version"
umoci insert --image "$layout:$version" --history.created_by "scripts/build-image.sh" "$rootfs" /
umoci config --image "$layout:$version" \
    --config.entrypoint wiremesh \
    --config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir / \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.source=$source" \
    --config.label "org.opencontainers.image.title=wiremesh" \
    --history.created_by "scripts/build-image.sh (config)"
umoci gc --layout "$layout"

archive="$out/wiremesh-$version.tar"
rm -f "$archive"
skopeo copy --quiet "oci:$layout:$version" "docker-archive:$archive:wiremesh:$version"

manifest=$(skopeo inspect --raw "oci:$layout:$version")
compressed=$(printf '%s' "$manifest" | sed -n 's/.*"layers":\[\(.*\)\].*/\1/p' |
    grep -o '"size":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }')
unpacked=$(du -sb "$rootfs" | awk '{ print $1 }')
echo "image wiremesh:$version ($smoke)"
echo "  OCI layout:     $layout (tag $version)"
echo "  docker archive: $archive ($(stat -c %s "$archive") bytes)"
echo "  size:           $compressed bytes compressed (layers), $unpacked bytes unpacked"
