/* xdp_pass: count packets per IP protocol number, then pass them all.
 *
 * xdp1's counting with XDP_PASS: offloaded, it watches the traffic headed for
 * the guest without changing it (ping, iperf3 still work); run natively after
 * an offloaded program, it counts what the host passed.
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} rxcnt SEC(".maps");

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	struct cursor c;
	__u64 *value;
	__u32 key;
	int proto;

	cursor_init(&c, ctx);
	proto = parse_l3_proto(&c);
	if (proto < 0)
		return XDP_PASS;

	key = proto;
	value = bpf_map_lookup_elem(&rxcnt, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
