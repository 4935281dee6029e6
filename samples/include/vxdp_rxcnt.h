/* The per-IP-protocol counter xdp1, xdp2 and xdp_pass share (the kernel samples' rxcnt).
 *
 * rxcnt is a plain ARRAY of 256 u64, not the kernel samples' PERCPU_ARRAY: the
 * offload design replaced per-CPU arrays by arrays. count_l3_proto() parses
 * Ethernet (up to two VLAN tags) and IPv4/IPv6, adds one to rxcnt[protocol]
 * with an atomic add, and returns the protocol (negative: not IP, nothing counted).
 */
#ifndef VXDP_RXCNT_H
#define VXDP_RXCNT_H

#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} rxcnt SEC(".maps");

static __always_inline int count_l3_proto(struct xdp_md *ctx)
{
	struct cursor c;
	__u64 *value;
	__u32 key;
	int proto;

	cursor_init(&c, ctx);
	proto = parse_l3_proto(&c);
	if (proto < 0)
		return proto;
	key = proto;
	value = bpf_map_lookup_elem(&rxcnt, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
	return proto;
}

#endif
