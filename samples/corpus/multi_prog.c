/* multi_prog: two programs in one ELF section sharing maps and a subprogram.
 *
 * Exercises: several SEC("xdp") functions in one section (each a Program at
 * its own offset, relocations split between them), one static __noinline
 * subprogram linked into both, PERCPU_ARRAY counters (deterministic when the
 * test runs on one CPU), bpf_get_smp_processor_id and bpf_ktime_get_ns
 * stored only in nondet_cpu.
 *
 * xdp_port_filter: TCP/UDP over IPv4/IPv6: dst port < 1024 -> PASS, port
 *                  1024..49151 -> DROP, higher -> TX with ports swapped;
 *                  non-L4 -> PASS. per_port_class[class]++.
 * xdp_len_filter:  frames of at most 128 bytes -> PASS, else DROP if the
 *                  last byte is odd, else TX with MACs swapped.
 *                  per_port_class[3 + action]++ (a different range).
 * Maps: per_port_class (PERCPU_ARRAY 8 x u64), nondet_cpu (ARRAY 2 x u64).
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} per_port_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} nondet_cpu SEC(".maps");

static __noinline int account(__u32 slot, int action)
{
	__u64 *v = bpf_map_lookup_elem(&per_port_class, &slot);
	__u32 k = 0;
	__u64 cpu = bpf_get_smp_processor_id();
	__u64 now = bpf_ktime_get_ns();

	if (v)
		*v += 1; /* per-CPU: no atomic needed */
	bpf_map_update_elem(&nondet_cpu, &k, &cpu, BPF_ANY);
	k = 1;
	bpf_map_update_elem(&nondet_cpu, &k, &now, BPF_ANY);
	return action;
}

SEC("xdp")
int xdp_port_filter(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	struct udphdr *l4; /* source and dest sit at the same place in TCP */
	struct cursor c;
	__u16 port;
	__be16 tmp;
	int proto;

	cursor_init(&c, ctx);
	proto = parse_eth(&c, &eth);
	if (proto == ETH_P_IP)
		proto = parse_ipv4(&c, &ip);
	else if (proto == ETH_P_IPV6)
		proto = parse_ipv6(&c, &ip6);
	else
		return XDP_PASS;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return XDP_PASS;
	l4 = c.pos;
	if ((void *)(l4 + 1) > c.end)
		return XDP_PASS;

	port = bpf_ntohs(l4->dest);
	if (port < 1024)
		return account(0, XDP_PASS);
	if (port < 49152)
		return account(1, XDP_DROP);
	tmp = l4->source;
	l4->source = l4->dest;
	l4->dest = tmp;
	return account(2, XDP_TX);
}

SEC("xdp")
int xdp_len_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	__u32 idx;
	__u8 *last;

	if (len <= 128 || len > 4096)
		return account(3 + XDP_PASS, XDP_PASS);
	idx = (len - 1) & 0xfff;
	last = data + idx;
	if ((void *)(last + 1) > data_end)
		return XDP_ABORTED;
	if (*last & 1)
		return account(3 + XDP_DROP, XDP_DROP);
	if (data + sizeof(struct ethhdr) > data_end)
		return XDP_ABORTED;
	swap_macs(data);
	return account(3 + XDP_TX, XDP_TX);
}

char _license[] SEC("license") = "GPL";
