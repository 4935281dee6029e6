/* tail_chain: a legacy PROG_ARRAY that the loader must fill, chained tail calls.
 *
 * Exercises: `struct bpf_map_def SEC("maps")` of type PROG_ARRAY with no static
 * values, bpf_tail_call from the entry and again from a tail-called program
 * (a chain of three), state handed between programs through a PERCPU_ARRAY,
 * and deterministic fall-through when a slot is empty.
 *
 * Slots of `progs` (fill them before running xdp_dispatch):
 *   0 = l4_tcp, 1 = l4_udp, 2 = l4_icmp, 3 = finish_tx
 * xdp_dispatch parses Ethernet (+VLANs) and IPv4/IPv6, stores the L4 offset in
 *              scratch[0], tail-calls slot 0/1/2 by protocol; other protocols
 *              and non-IP frames PASS; an empty slot -> ABORTED.
 * l4_tcp       TCP with SYN set -> DROP, otherwise PASS.
 * l4_udp       UDP to port 7 (echo) -> swap ports, tail-call finish_tx; else PASS.
 * l4_icmp      every ICMP message -> tail-call finish_tx.
 * finish_tx    swaps the MACs, stage_cnt[3]++, XDP_TX.
 * Each program does stage_cnt[slot]++ (entry: stage_cnt[4]); an empty slot 3
 * makes l4_udp/l4_icmp return DROP.
 * Maps: progs (legacy PROG_ARRAY 8), stage_cnt (ARRAY 8 x u64), scratch
 * (PERCPU_ARRAY 1 x u32).
 */
#include "vxdp_parse.h"
#include "vxdp_legacy_map.h"

LEGACY_MAP(progs, BPF_MAP_TYPE_PROG_ARRAY, __u32, __u32, 8);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} stage_cnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} scratch SEC(".maps");

static __always_inline void stage(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stage_cnt, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* The L4 header, re-checked against data_end: offsets from a map are scalars. */
static __always_inline void *l4_header(struct xdp_md *ctx, __u32 need)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, *off = bpf_map_lookup_elem(&scratch, &zero);
	__u32 o;

	if (!off)
		return 0;
	o = *off;
	if (o > 1500)
		return 0;
	if (data + o + need > data_end)
		return 0;
	return data + o;
}

SEC("xdp")
int l4_tcp(struct xdp_md *ctx)
{
	struct tcphdr *th = l4_header(ctx, sizeof(*th));

	stage(0);
	if (!th)
		return XDP_PASS;
	return th->syn ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int l4_udp(struct xdp_md *ctx)
{
	struct udphdr *uh = l4_header(ctx, sizeof(*uh));
	__be16 port;

	stage(1);
	if (!uh || uh->dest != bpf_htons(7))
		return XDP_PASS;
	port = uh->source;
	uh->source = uh->dest;
	uh->dest = port;
	bpf_tail_call(ctx, &progs, 3);
	return XDP_DROP;
}

SEC("xdp")
int l4_icmp(struct xdp_md *ctx)
{
	stage(2);
	bpf_tail_call(ctx, &progs, 3);
	return XDP_DROP;
}

SEC("xdp")
int finish_tx(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	stage(3);
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	swap_macs(eth);
	return XDP_TX;
}

SEC("xdp")
int xdp_dispatch(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	struct cursor c;
	__u32 zero = 0, *off, slot;
	int proto;

	stage(4);
	cursor_init(&c, ctx);
	proto = parse_eth(&c, &eth);
	if (proto == ETH_P_IP)
		proto = parse_ipv4(&c, &ip);
	else if (proto == ETH_P_IPV6)
		proto = parse_ipv6(&c, &ip6);
	else
		return XDP_PASS;

	if (proto == IPPROTO_TCP)
		slot = 0;
	else if (proto == IPPROTO_UDP)
		slot = 1;
	else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
		slot = 2;
	else
		return XDP_PASS;

	off = bpf_map_lookup_elem(&scratch, &zero);
	if (!off)
		return XDP_ABORTED;
	*off = c.pos - (void *)(long)ctx->data;
	bpf_tail_call(ctx, &progs, slot);
	return XDP_ABORTED;
}

char _license[] SEC("license") = "GPL";
