/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts shared by policy.bpf.c and the Rust loader (daemon/src/enforce/maps.rs, which
 * mirrors every struct here field for field with #[repr(C)]). All integers are in host byte
 * order except addresses, which are kept as the 16 raw bytes seen on the wire (IPv4 in the
 * first 4).
 */
#ifndef WIREMESH_POLICY_H
#define WIREMESH_POLICY_H

#include <linux/types.h>

/* Policy directions, seen from the pod. */
#define DIR_INGRESS 1 /* entering the pod: tc egress of its host-side interface */
#define DIR_EGRESS 2  /* leaving the pod: tc ingress of its host-side interface */
/* Not a direction of the NetworkPolicy map but the endpoint's Istio authorization map, kept in
 * the same map under its own key space: TCP entering the pod (see EP_AUTHZ_INGRESS_TCP). */
#define DIR_AUTHZ 3

/* endpoint_config.flags */
#define EP_ENFORCE_INGRESS (1u << 0)
#define EP_ENFORCE_EGRESS (1u << 1)
/* Set by the agent when it could not bring the maps to the wanted state: drop everything. */
#define EP_FAIL_CLOSED (1u << 2)
/* Istio AuthorizationPolicies apply: every TCP connection the policy map admits into the pod,
 * except from its own node, goes through the L7 proxy (its waypoint). */
#define EP_PROXY_INGRESS_TCP (1u << 3)
/* Istio AuthorizationPolicies that read only the connection apply: a TCP connection into the
 * pod, except from its own node, is admitted only if the DIR_AUTHZ entries allow it too (no
 * entry: refused). */
#define EP_AUTHZ_INGRESS_TCP (1u << 4)

/* policy_value.flags */
#define POLICY_ALLOW (1u << 0) /* allowed, no L7 rule restricts it */
#define POLICY_DENY (1u << 1)
#define POLICY_L7 (1u << 2) /* allowed only through the L7 proxy, which applies HTTP rules */

/*
 * Packet marks (skb->mark bits 8..11; the rest of the mark is left alone). The agent's
 * nftables table `inet wiremesh_l7` and its policy routing rule act on them.
 */
#define MARK_MASK 0x0f00
#define MARK_TO_PROXY_INGRESS 0x0a00 /* SYN for a local pod's ingress HTTP rules */
#define MARK_TO_PROXY_EGRESS 0x0b00  /* SYN for a local pod's egress HTTP rules */
#define MARK_FROM_PROXY 0x0c00       /* the proxy's upstream connections (SO_MARK) */

/* counter_key.verdict */
#define VERDICT_ALLOW 0
#define VERDICT_DROP 1

/* counter_key.reason */
#define REASON_POLICY_ALLOW 1   /* new connection allowed by policy */
#define REASON_CT_ESTABLISHED 2 /* packet of a tracked connection, original direction */
#define REASON_CT_REPLY 3       /* reply of a tracked connection */
#define REASON_NOT_ENFORCED 4   /* endpoint does not enforce this direction */
#define REASON_NON_IP 5         /* ARP: needed for the link to work, carries no payload */
#define REASON_ICMP6_ND 6       /* IPv6 neighbour discovery, likewise */
#define REASON_PROXY_REDIRECT 7 /* new connection handed to the L7 proxy */
#define REASON_FROM_PROXY 8     /* new connection from the L7 proxy, which applied the HTTP rules */
#define REASON_POLICY_DENY 16   /* a deny rule matched */
#define REASON_NO_POLICY 17     /* no allow rule matched */
#define REASON_NO_ENDPOINT 18   /* program attached, no endpoint config: fail closed */
#define REASON_FAIL_CLOSED 19   /* endpoint marked fail-closed by the agent */
#define REASON_MALFORMED 20     /* truncated or unparseable header */
#define REASON_UNSUPPORTED 21   /* non-IP protocol, IPv6 extension header, fragment */
#define REASON_L7_UNREDIRECTED 22 /* HTTP rules apply but the connection bypassed the proxy */
#define REASON_AUTHZ_DENY 23    /* an Istio AuthorizationPolicy refused the connection */

struct endpoint_config {
	__u32 identity;
	__u32 flags;
};

struct policy_key {
	__u32 ifindex; /* the endpoint */
	__u32 identity; /* remote identity, 0 = any */
	__u16 port; /* port or ICMP type, bits below `prefix` cleared */
	__u8 direction;
	__u8 protocol; /* IP protocol number, 0 = any */
	__u8 prefix; /* significant leading port bits, 0..=16 */
	__u8 pad[3];
};

struct policy_value {
	__u32 flags;
};

/* LPM key: prefixlen counts from `family`, so a prefix is 32 + its address length. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
};

/* A connection as first seen, in its original direction, per endpoint and direction. */
struct ct_key {
	__u32 ifindex;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 direction;
	__u8 family;
	__u8 pad;
};

struct ct_value {
	__u64 expires_ns; /* bpf_ktime_get_ns() deadline */
	__u32 flags;
	__u32 pad;
};

struct counter_key {
	__u32 ifindex;
	__u8 direction;
	__u8 verdict;
	__u8 reason;
	__u8 pad;
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

/*
 * One flow event in the `wm_events` ring buffer: a new connection allowed (or handed to the
 * proxy) and every dropped packet, for `wiremesh observe`. Packets of tracked connections emit
 * nothing. A full ring loses events, never verdicts.
 */
struct flow_event {
	__u64 ktime_ns;
	__u32 ifindex;
	__u32 remote_identity;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport; /* or ICMP type */
	__u8 protocol;
	__u8 family; /* 4 or 6; 0 when the packet could not be parsed */
	__u8 direction;
	__u8 verdict;
	__u8 reason;
	__u8 tcp_flags;
	__u8 pad[2];
};

#endif
