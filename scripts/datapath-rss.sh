#!/usr/bin/env bash
# Resident memory of the `wiremesh datapath` process: idle, and after 200 peers were set through
# its UAPI socket with stock `wg set`, in a network namespace of its own (deleted afterwards).
# Compare two builds by running it once per binary, alternating:
#
#   sudo ./scripts/datapath-rss.sh target/release/wiremesh [label]
#
# Needs root, `wg` and `ip`; prints one line of KiB figures. Stops only the process it started.
set -euo pipefail
bin=${1:?usage: datapath-rss.sh WIREMESH_BINARY [LABEL]}
label=${2:-$bin}
umask 077
ns=wmrss$$
iface=wmrss$$
dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
wg genkey >"$dir/key"
ip netns exec "$ns" "$bin" datapath --interface "$iface" --listen-port 51871 --key-file "$dir/key" \
  >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "/var/run/wireguard/$iface.sock" ] && break; sleep 0.1; done
[ -S "/var/run/wireguard/$iface.sock" ] || { echo "datapath-rss: no UAPI socket; log:" >&2; cat "$dir/log" >&2; exit 1; }
sleep 1
rss() { awk "/$1/{print \$2}" "/proc/$pid/status"; }
idle=$(rss VmRSS)
for i in $(seq 200); do
  peer=$(wg genkey | wg pubkey)
  ip netns exec "$ns" wg set "$iface" peer "$peer" allowed-ips "10.244.$((i % 250)).$((i / 250))/32" \
    endpoint "198.18.$((i / 250)).$((i % 250 + 1)):51871"
done
sleep 1
echo "$label idle_rss_kib=$idle rss_200_peers_kib=$(rss VmRSS) peak_kib=$(rss VmHWM)"
