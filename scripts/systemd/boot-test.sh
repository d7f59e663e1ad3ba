#!/usr/bin/env bash
# Boots scripts/systemd/wiremesh.service for real: a Debian root file system with systemd as
# PID 1 (systemd-nspawn -b) in a network namespace of its own, with the unit exactly as shipped
# (only ExecStart's path is the one the rootfs sees), and checks that the hardened agent starts,
# brings up its data path and its eBPF policy, serves its sockets, and stays up. A unit that
# scores well but cannot start is worse than useless.
#
#   sudo scripts/systemd/boot-test.sh [ROOTFS] [BINARY]
#
# ROOTFS: a Debian root with systemd (default /var/tmp/wiremesh-vm, made with debootstrap
# --include=systemd,systemd-sysv,dbus,iproute2,nftables on first use); BINARY: target/debug/wiremesh.
# Needs root, systemd-nspawn (systemd-container) and debootstrap. Leaves nothing behind: the
# rootfs is used through a throwaway overlay; the namespace, the bpffs and the container are
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

rootfs=${1:-/var/tmp/wiremesh-vm}
bin=$(realpath "${2:-target/debug/wiremesh}")
[ "$(id -u)" -eq 0 ] || { echo "boot-test: run as root" >&2; exit 1; }
command -v systemd-nspawn >/dev/null || { echo "boot-test: systemd-nspawn missing (apt-get install systemd-container)" >&2; exit 1; }
[ -x "$bin" ] || { echo "boot-test: no agent binary at $bin (cargo build --bins)" >&2; exit 1; }
if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
  command -v debootstrap >/dev/null || { echo "boot-test: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
  echo "boot-test: creating $rootfs (once)"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2,nftables bookworm "$rootfs.tmp" http://deb.debian.org/debian >/dev/null
  mv "$rootfs.tmp" "$rootfs"
fi
# Strict mode (the default) needs nft in the "VM"; a root cached before that lacks it.
if [ ! -x "$rootfs/usr/sbin/nft" ]; then
  echo "boot-test: installing nftables into $rootfs"
  cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends nftables >/dev/null
fi

ns=wmboot$$
work=$(mktemp -d /var/tmp/wiremesh-boot.XXXXXX)
nspawn_pid=
cleanup() {
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid"; for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null
  fi
  umount -l "$work/root" 2>/dev/null; umount -l "$work/bpf" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  [ -n "${BOOT_TEST_KEEP:-}" ] && { echo "boot-test: kept $work (the VM's changes in $work/scratch/upper)"; return; }
  umount -l "$work/scratch" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/scratch" "$work/root" "$work/bpf"
# The overlay's upper and work directories on a tmpfs of their own: overlayfs refuses an upper
# directory on overlayfs, which /var/tmp is in a container or in ../shared/tools/fresh-machine.
mount -t tmpfs -o mode=0755 tmpfs "$work/scratch"
mkdir -p "$work/scratch/upper" "$work/scratch/work"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/scratch/upper,workdir=$work/scratch/work" "$work/root"
mount -t bpf bpf "$work/bpf"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name eth1
ip -n "$ns" addr add 198.18.7.1/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set eth1 up

r=$work/root
install -m 0755 "$bin" "$r/usr/local/bin/wiremesh"
cp scripts/systemd/wiremesh.service "$r/etc/systemd/system/wiremesh.service"
ln -sf /etc/systemd/system/wiremesh.service "$r/etc/systemd/system/multi-user.target.wants/wiremesh.service"
cp scripts/systemd/wiremesh-guard.service "$r/etc/systemd/system/wiremesh-guard.service"
mkdir -p "$r/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/wiremesh-guard.service "$r/etc/systemd/system/sysinit.target.wants/wiremesh-guard.service"
mkdir -p "$r/etc/wiremesh"
cat > "$r/etc/wiremesh/agent.yaml" <<'EOF'
nodeName: vm-1
nodeIPs: [198.18.7.1]
podCIDRs: [10.244.7.0/24]
clusterPodCIDRs: [10.244.0.0/16]
datapath: userspace
metricsAddress: 127.0.0.1:9871
EOF
# Quiet, fast boot: no getty, no network management beyond what the namespace has.
for u in getty@tty1.service console-getty.service systemd-networkd.service systemd-resolved.service; do
  ln -sf /dev/null "$r/etc/systemd/system/$u"
done

echo "boot-test: booting systemd in netns $ns"
systemd-nspawn -q -b -D "$r" --register=no --keep-unit --console=passive \
  --network-namespace-path="/run/netns/$ns" \
  --capability=CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON \
  --system-call-filter=bpf \
  --bind=/dev/net/tun --bind="$work/bpf:/sys/fs/bpf" \
  >"$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1: the child of nspawn that runs systemd in a PID namespace of its own
# (nspawn's short-lived outer child has the same parent; picking it instead made every check
# below fail when it had already gone, as under ../shared/tools/fresh-machine).
init=
outer_pidns=$(readlink "/proc/$nspawn_pid/ns/pid")
for _ in $(seq 100); do
  for child in $(pgrep -P "$nspawn_pid" || true); do
    if [ "$(readlink "/proc/$child/ns/pid" 2>/dev/null)" != "$outer_pidns" ] \
      && [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ]; then
      init=$child
    fi
  done
  [ -n "$init" ] && break; sleep 0.1
done
[ -n "$init" ] || { cat "$work/console.log"; echo "boot-test: the container did not start" >&2; exit 1; }
# Its root and working directory too (-r -w): the namespaces alone are not enough when this
# script runs chrooted, as under ../shared/tools/fresh-machine.
inside() { nsenter -t "$init" -a -r -w -- "$@"; }

state=
for _ in $(seq 120); do
  state=$(inside systemctl is-active wiremesh.service 2>"$work/inside.err" || true)
  [ "$state" = active ] && inside test -S /run/wiremesh/wiremesh.sock 2>/dev/null && break
  sleep 0.5
done
fail() {
  echo "boot-test: $*" >&2
  inside journalctl -b --no-pager -u wiremesh.service | tail -40 >&2 || true
  echo "boot-test: the container's console, last lines:" >&2
  tail -20 "$work/console.log" >&2 || true
  exit 1
}
[ "$state" = active ] || fail "wiremesh.service is '$state', not active ($(tail -1 "$work/inside.err"))"
sleep 3
state=$(inside systemctl is-active wiremesh.service || true)
[ "$state" = active ] || fail "wiremesh.service did not stay up ($state)"
restarts=$(inside systemctl show -p NRestarts --value wiremesh.service)
[ "$restarts" = 0 ] || fail "wiremesh.service restarted $restarts times"
inside journalctl -b --no-pager -u wiremesh.service | grep -q "agent ready" || fail "no 'agent ready' in the journal"
inside ip link show wiremesh_wg0 >/dev/null || fail "no wiremesh_wg0 interface"
inside wiremesh encrypt status | grep -q "vm-1\|wiremesh_wg0" || fail "encrypt status failed"
inside bash -c 'exec 3<>/dev/tcp/127.0.0.1/9871; printf "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" >&3; cat <&3' \
  | grep -q "^wiremesh_peers " || fail "no metrics on metricsAddress"
ls "$work/bpf/wiremesh" >/dev/null 2>&1 || fail "no policy maps pinned under /sys/fs/bpf/wiremesh"
guard=$(inside systemctl is-active wiremesh-guard.service || true)
[ "$guard" = active ] || fail "wiremesh-guard.service is '$guard', not active"
inside nft list table inet wiremesh >/dev/null || fail "no strict-mode table inet wiremesh"
inside wiremesh encrypt status | grep -qi "strict mode" || fail "encrypt status does not show strict mode"
caps=$(inside sh -c 'grep CapBnd /proc/$(systemctl show -p MainPID --value wiremesh.service)/status')
echo "boot-test: wiremesh.service active under the hardened unit ($caps)"
inside journalctl -b --no-pager -u wiremesh.service | tail -15
echo "boot-test: ok"
