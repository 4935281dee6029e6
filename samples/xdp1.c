/* xdp1: count packets per IP protocol number, then drop them all.
 *
 * Our version of the kernel's samples/bpf/xdp1_kern.c, used by the benchmarks.
 * Ethernet with up to two VLAN tags, then IPv4 (protocol) or IPv6 (next header).
 * rxcnt[proto] is incremented with an atomic add; non-IP and truncated frames
 * count nothing. Every frame is dropped.
 * rxcnt is a plain ARRAY, not the kernel sample's PERCPU_ARRAY: the offload
 * design replaced per-CPU arrays by arrays.
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} rxcnt SEC(".maps");

SEC("xdp")
int xdp_prog1(struct xdp_md *ctx)
{
	struct cursor c;
	__u64 *value;
	__u32 key;
	int proto;

	cursor_init(&c, ctx);
	proto = parse_l3_proto(&c);
	if (proto < 0)
		return XDP_DROP;

	key = proto;
	value = bpf_map_lookup_elem(&rxcnt, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
