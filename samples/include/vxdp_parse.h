/* vxdp_parse.h: tiny bounds-checked packet parsing for the sample XDP programs.
 *
 * Why a cursor: the verifier only accepts a packet access after a comparison of
 * the very pointer (plus constant offset) against data_end, so every parse step
 * checks `pos + sizeof(hdr) > end` before touching the header and then advances.
 * All helpers are __always_inline so that the checks stay next to the accesses.
 */
#ifndef VXDP_PARSE_H
#define VXDP_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/icmp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct vlan_hdr {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

struct cursor {
	void *pos;
	void *end;
};

static __always_inline void cursor_init(struct cursor *c, struct xdp_md *ctx)
{
	c->pos = (void *)(long)ctx->data;
	c->end = (void *)(long)ctx->data_end;
}

/* Ethernet plus up to two VLAN tags (802.1Q or 802.1AD), like the kernel's
 * samples/bpf/xdp1_kern.c. Returns the inner EtherType in host order, or -1
 * when the frame is too short for what its headers announce. */
static __always_inline int parse_eth(struct cursor *c, struct ethhdr **ethp)
{
	struct ethhdr *eth = c->pos;
	__u16 proto;

	if ((void *)(eth + 1) > c->end)
		return -1;
	*ethp = eth;
	c->pos = eth + 1;
	proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct vlan_hdr *vh = c->pos;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if ((void *)(vh + 1) > c->end)
			return -1;
		proto = bpf_ntohs(vh->h_vlan_encapsulated_proto);
		c->pos = vh + 1;
	}
	return proto;
}

/* IPv4 header including options. Returns the protocol number, or -1 when the
 * header is truncated or its IHL is below 5. */
static __always_inline int parse_ipv4(struct cursor *c, struct iphdr **ipp)
{
	struct iphdr *ip = c->pos;
	__u32 hlen;

	if ((void *)(ip + 1) > c->end)
		return -1;
	hlen = ip->ihl * 4;
	if (hlen < sizeof(*ip))
		return -1;
	if (c->pos + hlen > c->end)
		return -1;
	*ipp = ip;
	c->pos += hlen;
	return ip->protocol;
}

/* Fixed IPv6 header (extension headers are not walked). Returns nexthdr or -1. */
static __always_inline int parse_ipv6(struct cursor *c, struct ipv6hdr **ip6p)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > c->end)
		return -1;
	*ip6p = ip6;
	c->pos = ip6 + 1;
	return ip6->nexthdr;
}

/* Layer 3 in one go: returns the IP protocol number (IPv4) or next header
 * (IPv6), or -1 for non-IP and truncated frames. */
static __always_inline int parse_l3_proto(struct cursor *c)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	int proto = parse_eth(c, &eth);

	if (proto == ETH_P_IP)
		return parse_ipv4(c, &ip);
	if (proto == ETH_P_IPV6)
		return parse_ipv6(c, &ip6);
	return -1;
}

static __always_inline void swap_macs(struct ethhdr *eth)
{
	unsigned char tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* Fold a 32-bit one's-complement sum (as bpf_csum_diff returns) to 16 bits. */
static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

#endif /* VXDP_PARSE_H */
