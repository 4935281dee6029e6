/* xdp2: count packets per IP protocol number, swap the MACs, send back (XDP_TX).
 *
 * Our version of the kernel's samples/bpf/xdp2_kern.c, used by the benchmarks.
 * Same parsing and counting as xdp1 (map rxcnt, plain ARRAY of 256 u64, atomic
 * add); every frame of at least 14 bytes leaves with source and destination
 * MAC exchanged, whatever its payload. Shorter frames are dropped.
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} rxcnt SEC(".maps");

SEC("xdp")
int xdp_prog2(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct cursor c;
	__u64 *value;
	__u32 key;
	int proto;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;

	cursor_init(&c, ctx);
	proto = parse_l3_proto(&c);
	if (proto >= 0) {
		key = proto;
		value = bpf_map_lookup_elem(&rxcnt, &key);
		if (value)
			__sync_fetch_and_add(value, 1);
	}

	swap_macs(eth);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
