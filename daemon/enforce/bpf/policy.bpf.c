/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * wiremesh policy enforcement: two tc (clsact, direct-action) programs on a pod's host-side
 * interface. `wm_from_pod` runs on tc ingress (packets the pod sends: its egress policy),
 * `wm_to_pod` on tc egress (packets delivered to the pod: its ingress policy).
 *
 * Per packet: endpoint config by ifindex (none: drop, fail closed) -> parse L3/L4 ->
 * connection tracking (original direction: established; reversed: reply) -> for a new
 * connection, the remote identity from the ipcache LPM trie (world if no prefix matches)
 * and the policy map, probed exactly like policy::PolicyMap::lookup: {identity, any} x
 * {protocol, any} x 17 port prefix lengths, deny wins. Allowed new connections are tracked.
 * The number of probes is fixed: rules only grow the map.
 *
 * HTTP rules: a new TCP connection that a policy allows only under HTTP rules (POLICY_L7) is
 * not judged here but marked for the L7 proxy (nftables `tproxy` delivers the marked SYN to
 * it, `socket transparent` its later packets): egress rules at the client's interface, ingress
 * rules where the SYN enters this node (a local client's interface, or the WireGuard device
 * for a remote one). The proxy's own upstream connections carry MARK_FROM_PROXY: at the
 * server's interface an L7 entry admits them, and only them. An endpoint Istio
 * AuthorizationPolicies apply to (EP_PROXY_INGRESS_TCP) has every TCP connection its map admits
 * judged so, as if each allow entry carried HTTP rules: the proxy is its waypoint. An endpoint
 * whose AuthorizationPolicies read only the connection (EP_AUTHZ_INGRESS_TCP) has them judged
 * here instead, as ztunnel does: its DIR_AUTHZ entries must admit the connection as well.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "policy.h"

#define AF_INET 2
#define AF_INET6 10
#define HOST_IDENTITY 1
#define WORLD_IDENTITY 2
#define NS_PER_SEC 1000000000ull
#define CT_TCP_LIFETIME (21600 * NS_PER_SEC)
#define CT_TCP_CLOSING (10 * NS_PER_SEC)
#define CT_OTHER_LIFETIME (60 * NS_PER_SEC)

/* From linux/icmp.h and linux/icmpv6.h, which pull in libc headers. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct endpoint_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wm_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wm_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wm_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wm_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wm_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} wm_events SEC(".maps");

struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* conntrack ports; for ICMP echo the identifier */
	__u16 dport;
	__u16 policy_port; /* destination port, or ICMP type */
	__u8 protocol;
	__u8 family;
	__u8 tcp_flags;
};

static __always_inline int count(struct __sk_buff *skb, __u32 ifindex, __u8 dir, __u8 verdict,
				 __u8 reason)
{
	struct counter_key key = {
		.ifindex = ifindex, .direction = dir, .verdict = verdict, .reason = reason
	};
	struct counter_value *v = bpf_map_lookup_elem(&wm_counters, &key);

	if (v) {
		v->packets += 1;
		v->bytes += skb->len;
	} else {
		struct counter_value init = { .packets = 1, .bytes = skb->len };
		/* A full counter map loses counts, never verdicts. */
		bpf_map_update_elem(&wm_counters, &key, &init, BPF_NOEXIST);
	}
	return verdict == VERDICT_ALLOW ? TC_ACT_OK : TC_ACT_SHOT;
}

/* Returns 0 on success, else the drop reason. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	switch (f->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr th;
		if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)))
			return REASON_MALFORMED;
		f->sport = bpf_ntohs(th.source);
		f->dport = bpf_ntohs(th.dest);
		f->policy_port = f->dport;
		f->tcp_flags = (th.fin ? 1 : 0) | (th.syn ? 2 : 0) | (th.rst ? 4 : 0) | (th.ack ? 8 : 0);
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* SCTP's common header starts with the same two port fields as UDP. */
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
			return REASON_MALFORMED;
		f->sport = bpf_ntohs(ports[0]);
		f->dport = bpf_ntohs(ports[1]);
		f->policy_port = f->dport;
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[8];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return REASON_MALFORMED;
		__u8 type = hdr[0];
		__u16 id = ((__u16)hdr[4] << 8) | hdr[5];
		f->policy_port = type;
		/* Echo request and reply share the identifier: track it as request (id, 0) and
		 * reply (0, id), so a reply is the reversed tuple of its request. */
		if (type == ICMP_ECHO || type == ICMPV6_ECHO_REQUEST) {
			f->sport = id;
		} else if (type == ICMP_ECHOREPLY || type == ICMPV6_ECHO_REPLY) {
			f->dport = id;
		}
		return 0;
	}
	default:
		return 0;
	}
}

static __always_inline int parse(struct __sk_buff *skb, struct flow *f, __u32 l3)
{
	__u16 proto = bpf_ntohs(skb->protocol);

	if (proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)))
			return REASON_MALFORMED;
		if (ip.ihl < 5)
			return REASON_MALFORMED;
		/* Later fragments carry no ports; they are not reassembled here. */
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			return REASON_UNSUPPORTED;
		f->family = 4;
		f->protocol = ip.protocol;
		__builtin_memcpy(f->saddr, &ip.saddr, 4);
		__builtin_memcpy(f->daddr, &ip.daddr, 4);
		return parse_l4(skb, l3 + ip.ihl * 4, f);
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)))
			return REASON_MALFORMED;
		f->family = 6;
		f->protocol = ip6.nexthdr;
		__builtin_memcpy(f->saddr, &ip6.saddr, 16);
		__builtin_memcpy(f->daddr, &ip6.daddr, 16);
		switch (ip6.nexthdr) {
		case IPPROTO_TCP:
		case IPPROTO_UDP:
		case IPPROTO_SCTP:
		case IPPROTO_ICMPV6:
			return parse_l4(skb, l3 + sizeof(ip6), f);
		default:
			return REASON_UNSUPPORTED;
		}
	}
	return REASON_UNSUPPORTED;
}

/* Records a flow event for `wiremesh observe`; `f` may be unparsed (family 0). Returns `ret`. */
static __always_inline int emit(const struct flow *f, __u32 ifindex, __u8 dir, __u8 verdict,
				__u8 reason, __u32 identity, int ret)
{
	struct flow_event *e = bpf_ringbuf_reserve(&wm_events, sizeof(*e), 0);

	if (!e)
		return ret;
	e->ktime_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->remote_identity = identity;
	__builtin_memcpy(e->saddr, f->saddr, 16);
	__builtin_memcpy(e->daddr, f->daddr, 16);
	e->sport = f->sport;
	e->dport = f->policy_port;
	e->protocol = f->protocol;
	e->family = f->family;
	e->direction = dir;
	e->verdict = verdict;
	e->reason = reason;
	e->tcp_flags = f->tcp_flags;
	e->pad[0] = 0;
	e->pad[1] = 0;
	bpf_ringbuf_submit(e, 0);
	return ret;
}

/* Counts a drop and records it for `wiremesh observe`. */
static __always_inline int drop(struct __sk_buff *skb, const struct flow *f, __u32 ifindex,
				__u8 dir, __u8 reason, __u32 identity)
{
	return emit(f, ifindex, dir, VERDICT_DROP, reason, identity,
		    count(skb, ifindex, dir, VERDICT_DROP, reason));
}

static __always_inline __u32 address_identity(const struct flow *f, const __u8 *addr)
{
	struct ipcache_key key = {
		.prefixlen = 32 + (f->family == 4 ? 32 : 128),
		.family = f->family,
	};
	__builtin_memcpy(key.addr, addr, 16);
	struct ipcache_value *v = bpf_map_lookup_elem(&wm_ipcache, &key);
	return v ? v->identity : WORLD_IDENTITY;
}

static __always_inline __u32 remote_identity(const struct flow *f, __u8 dir)
{
	return address_identity(f, dir == DIR_EGRESS ? f->daddr : f->saddr);
}

/* Returns POLICY_ALLOW, POLICY_L7 (allowed through the proxy only), or the drop reason. */
static __always_inline int policy_verdict(__u32 ifindex, __u8 dir, __u32 identity,
					  __u8 protocol, __u16 port)
{
	struct policy_key key = { .ifindex = ifindex, .direction = dir };
	__u32 found = 0;

	for (int i = 0; i < 4; i++) {
		key.identity = (i & 1) ? 0 : identity;
		key.protocol = (i & 2) ? 0 : protocol;
		for (int len = 0; len <= 16; len++) {
			key.prefix = len;
			key.port = len == 0 ? 0 : port & (__u16)(0xffff << (16 - len));
			struct policy_value *v = bpf_map_lookup_elem(&wm_policy, &key);
			if (v)
				found |= v->flags;
		}
		if (found & POLICY_DENY)
			return REASON_POLICY_DENY;
	}
	if (found & POLICY_ALLOW)
		return POLICY_ALLOW;
	return (found & POLICY_L7) ? POLICY_L7 : REASON_NO_POLICY;
}

/* The first packet of a TCP connection: SYN without ACK, FIN or RST. */
static __always_inline int is_syn(const struct flow *f)
{
	return f->protocol == IPPROTO_TCP && f->tcp_flags == 2;
}

/*
 * The verdict for a new connection into the endpoint `ifindex` (flags `ep_flags`): the policy
 * map's, except that a TCP connection the map allows outright goes through the proxy too when
 * Istio policies apply to the endpoint (EP_PROXY_INGRESS_TCP), and that a TCP connection its
 * authorization entries do not admit (EP_AUTHZ_INGRESS_TCP) is refused; neither applies to a
 * connection from the endpoint's own node (kubelet probes, as Istio's ambient mode exempts them).
 */
static __always_inline int ingress_verdict(__u32 ifindex, __u32 ep_flags, __u32 identity,
					   const struct flow *f)
{
	int verdict = policy_verdict(ifindex, DIR_INGRESS, identity, f->protocol, f->policy_port);
	if (verdict != POLICY_ALLOW && verdict != POLICY_L7)
		return verdict;
	if (f->protocol != IPPROTO_TCP || identity == HOST_IDENTITY)
		return verdict;
	if ((ep_flags & EP_AUTHZ_INGRESS_TCP) &&
	    policy_verdict(ifindex, DIR_AUTHZ, identity, f->protocol, f->policy_port) != POLICY_ALLOW)
		return REASON_AUTHZ_DENY;
	if (verdict == POLICY_ALLOW && (ep_flags & EP_PROXY_INGRESS_TCP))
		return POLICY_L7;
	return verdict;
}

/*
 * The local endpoint a packet is routed to (its host-side interface, by the routing table the
 * pods' /32 routes are in), if that endpoint enforces ingress; 0 otherwise.
 */
static __always_inline __u32 local_endpoint(struct __sk_buff *skb, const struct flow *f,
					    __u32 *ep_flags)
{
	struct bpf_fib_lookup fib = {};

	fib.family = f->family == 4 ? AF_INET : AF_INET6;
	fib.ifindex = skb->ifindex;
	if (f->family == 4) {
		__builtin_memcpy(&fib.ipv4_src, f->saddr, 4);
		__builtin_memcpy(&fib.ipv4_dst, f->daddr, 4);
	} else {
		__builtin_memcpy(fib.ipv6_src, f->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, f->daddr, 16);
	}
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 0;
	__u32 out = fib.ifindex;
	struct endpoint_config *ep = bpf_map_lookup_elem(&wm_endpoints, &out);
	if (!ep || !(ep->flags & EP_ENFORCE_INGRESS) || (ep->flags & EP_FAIL_CLOSED))
		return 0;
	*ep_flags = ep->flags;
	return out;
}

/*
 * A SYN to a local pod whose ingress rules for this client are HTTP rules goes to the proxy.
 * Judging the connection itself is left to that pod's interface (or to the proxy).
 */
static __always_inline void mark_ingress_redirect(struct __sk_buff *skb, const struct flow *f)
{
	if (!is_syn(f))
		return;
	__u32 ep_flags = 0;
	__u32 ep = local_endpoint(skb, f, &ep_flags);
	if (!ep)
		return;
	__u32 identity = address_identity(f, f->saddr);
	if (ingress_verdict(ep, ep_flags, identity, f) == POLICY_L7)
		skb->mark = (skb->mark & ~MARK_MASK) | MARK_TO_PROXY_INGRESS;
}

static __always_inline void ct_refresh(struct ct_value *ct, const struct flow *f, __u64 now)
{
	if (f->protocol != IPPROTO_TCP)
		ct->expires_ns = now + CT_OTHER_LIFETIME;
	else if (f->tcp_flags & 5) /* FIN or RST: let it go soon */
		ct->expires_ns = now + CT_TCP_CLOSING;
	else if (ct->expires_ns > now + CT_TCP_CLOSING || (f->tcp_flags & 2))
		ct->expires_ns = now + CT_TCP_LIFETIME;
}

/*
 * `l3`: where the IP header starts (ETH_HLEN on a pod's veth, 0 on the WireGuard TUN device).
 * `host`: the interface is the host endpoint's (the WireGuard device, which also forwards pod
 * traffic): only packets to (ingress) or from (egress) one of the host's own addresses are the
 * host's; the rest is judged at the pods' interfaces.
 */
static __always_inline int handle(struct __sk_buff *skb, __u8 dir, __u32 l3, int host)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_config *ep = bpf_map_lookup_elem(&wm_endpoints, &ifindex);
	struct flow f = {};

	if (!ep || (ep->flags & EP_FAIL_CLOSED)) {
		/* Parsed for the flow event only: the verdict does not depend on it. */
		if (parse(skb, &f, l3))
			f.family = 0;
		return drop(skb, &f, ifindex, dir, ep ? REASON_FAIL_CLOSED : REASON_NO_ENDPOINT, 0);
	}
	if (bpf_ntohs(skb->protocol) == ETH_P_ARP)
		return count(skb, ifindex, dir, VERDICT_ALLOW, REASON_NON_IP);
	__u32 enforce = dir == DIR_INGRESS ? EP_ENFORCE_INGRESS : EP_ENFORCE_EGRESS;
	if (!(ep->flags & enforce))
		return count(skb, ifindex, dir, VERDICT_ALLOW, REASON_NOT_ENFORCED);

	int reason = parse(skb, &f, l3);
	if (reason) {
		f.family = 0;
		return drop(skb, &f, ifindex, dir, reason, 0);
	}
	if (host) {
		const __u8 *local = dir == DIR_INGRESS ? f.daddr : f.saddr;
		if (address_identity(&f, local) != HOST_IDENTITY)
			return count(skb, ifindex, dir, VERDICT_ALLOW, REASON_NOT_ENFORCED);
	}
	if (f.protocol == IPPROTO_ICMPV6 && f.policy_port >= 133 && f.policy_port <= 137)
		return count(skb, ifindex, dir, VERDICT_ALLOW, REASON_ICMP6_ND);

	__u64 now = bpf_ktime_get_ns();
	struct ct_key key = {
		.ifindex = ifindex,
		.sport = f.sport,
		.dport = f.dport,
		.protocol = f.protocol,
		.direction = dir,
		.family = f.family,
	};
	__builtin_memcpy(key.saddr, f.saddr, 16);
	__builtin_memcpy(key.daddr, f.daddr, 16);
	struct ct_value *ct = bpf_map_lookup_elem(&wm_ct, &key);
	if (ct && ct->expires_ns > now) {
		ct_refresh(ct, &f, now);
		return count(skb, ifindex, dir, VERDICT_ALLOW, REASON_CT_ESTABLISHED);
	}

	struct ct_key rev = key;
	__builtin_memcpy(rev.saddr, f.daddr, 16);
	__builtin_memcpy(rev.daddr, f.saddr, 16);
	rev.sport = f.dport;
	rev.dport = f.sport;
	rev.direction = dir == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS;
	ct = bpf_map_lookup_elem(&wm_ct, &rev);
	if (ct && ct->expires_ns > now) {
		ct_refresh(ct, &f, now);
		return count(skb, ifindex, dir, VERDICT_ALLOW, REASON_CT_REPLY);
	}

	__u32 identity = remote_identity(&f, dir);
	int verdict = dir == DIR_INGRESS ? ingress_verdict(ifindex, ep->flags, identity, &f)
					 : policy_verdict(ifindex, dir, identity, f.protocol, f.policy_port);
	int allowed_by = REASON_POLICY_ALLOW;
	if (verdict == POLICY_L7) {
		if (dir == DIR_INGRESS && (skb->mark & MARK_MASK) == MARK_FROM_PROXY) {
			allowed_by = REASON_FROM_PROXY;
		} else if (dir == DIR_EGRESS && !host && is_syn(&f)) {
			skb->mark = (skb->mark & ~MARK_MASK) | MARK_TO_PROXY_EGRESS;
			allowed_by = REASON_PROXY_REDIRECT;
		} else {
			return drop(skb, &f, ifindex, dir, REASON_L7_UNREDIRECTED, identity);
		}
	} else if (verdict != POLICY_ALLOW) {
		return drop(skb, &f, ifindex, dir, verdict, identity);
	}

	struct ct_value fresh = {};
	ct_refresh(&fresh, &f, now);
	if (f.protocol == IPPROTO_TCP && !(f.tcp_flags & 5))
		fresh.expires_ns = now + CT_TCP_LIFETIME;
	/* LRU: an insert evicts the least recently used entry rather than fail. */
	bpf_map_update_elem(&wm_ct, &key, &fresh, BPF_ANY);
	return emit(&f, ifindex, dir, VERDICT_ALLOW, allowed_by, identity,
		    count(skb, ifindex, dir, VERDICT_ALLOW, allowed_by));
}

/* A SYN the pod's own egress rules did not send to the proxy may be bound for a local pod
 * whose ingress rules do. */
static __always_inline void local_ingress_redirect(struct __sk_buff *skb, __u32 l3)
{
	if ((skb->mark & MARK_MASK) == MARK_TO_PROXY_EGRESS)
		return;
	struct flow f = {};
	if (parse(skb, &f, l3))
		return;
	mark_ingress_redirect(skb, &f);
}

SEC("classifier")
int wm_from_pod(struct __sk_buff *skb)
{
	int verdict = handle(skb, DIR_EGRESS, ETH_HLEN, 0);
	if (verdict == TC_ACT_OK)
		local_ingress_redirect(skb, ETH_HLEN);
	return verdict;
}

SEC("classifier")
int wm_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS, ETH_HLEN, 0);
}

/* tc ingress of the WireGuard device: packets out of the tunnel, into the host (judged by the
 * host endpoint's policy) or on to local pods (sent to the proxy where their HTTP rules say). */
SEC("classifier")
int wm_to_host(struct __sk_buff *skb)
{
	int verdict = handle(skb, DIR_INGRESS, 0, 1);
	if (verdict == TC_ACT_OK)
		local_ingress_redirect(skb, 0);
	return verdict;
}

/* tc ingress of the WireGuard device when no host policy selects this node: only the redirect
 * of SYNs to local pods' HTTP rules; nothing is dropped here. */
SEC("classifier")
int wm_from_tunnel(struct __sk_buff *skb)
{
	local_ingress_redirect(skb, 0);
	return TC_ACT_OK;
}

/* tc egress of the WireGuard device: packets from the host into the tunnel. */
SEC("classifier")
int wm_from_host(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS, 0, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
