/* tail_calls: a BTF prog_array statically initialised with .values, tail calls.
 *
 * Exercises: BPF_MAP_TYPE_PROG_ARRAY defined in ".maps" with
 * `.values = { [0] = &handle_ipv4, [2] = &handle_other }` (libbpf fills the
 * slots at load time, so must our loader), bpf_tail_call with an index taken
 * from the packet, a slot left empty on purpose (1: IPv6), and a tail call that
 * falls through. Several programs share section "xdp".
 *
 * xdp_entry    slot = 0 for IPv4, 1 for IPv6, 2 for anything else; tail-calls it.
 *              Slot 1 is empty, so IPv6 falls through: hops[3]++, XDP_PASS.
 * handle_ipv4  hops[0]++; TTL <= 1 -> DROP; UDP -> swap MACs, TX; else PASS.
 * handle_other hops[2]++; the first payload byte after the MACs picks the
 *              action: even EtherType low byte -> DROP, odd -> ABORTED.
 * Maps: jmp_table (PROG_ARRAY, 4 slots), hops (ARRAY of 4 u64).
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} hops SEC(".maps");

static __always_inline void count_hop(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&hops, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("xdp")
int handle_ipv4(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct cursor c;
	int proto;

	count_hop(0);
	cursor_init(&c, ctx);
	if (parse_eth(&c, &eth) != ETH_P_IP)
		return XDP_ABORTED; /* the entry promised IPv4 */
	proto = parse_ipv4(&c, &ip);
	if (proto < 0)
		return XDP_DROP;
	if (ip->ttl <= 1)
		return XDP_DROP;
	if (proto == IPPROTO_UDP) {
		swap_macs(eth);
		return XDP_TX;
	}
	return XDP_PASS;
}

SEC("xdp")
int handle_other(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	count_hop(2);
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	return (bpf_ntohs(eth->h_proto) & 1) ? XDP_ABORTED : XDP_DROP;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__uint(key_size, sizeof(__u32));
	__array(values, int(void *));
} jmp_table SEC(".maps") = {
	.values = {
		[0] = (void *)&handle_ipv4,
		[2] = (void *)&handle_other,
	},
};

SEC("xdp")
int xdp_entry(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct cursor c;
	__u32 slot;
	int proto;

	cursor_init(&c, ctx);
	proto = parse_eth(&c, &eth);
	if (proto < 0)
		return XDP_DROP;
	slot = proto == ETH_P_IP ? 0 : proto == ETH_P_IPV6 ? 1 : 2;
	bpf_tail_call(ctx, &jmp_table, slot);

	/* only reached when the slot is empty */
	count_hop(3);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
