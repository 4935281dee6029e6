/* bpf2bpf: BPF-to-BPF calls (subprograms) instead of inlining.
 *
 * Exercises: static __noinline functions (BPF_PSEUDO_CALL relocations inside
 * .text, the callee verified in the caller's context, packet pointers passed
 * as arguments), a call chain three deep, a subprogram with five arguments
 * and its own stack frame, a subprogram called from two sites, a subprogram
 * that does a map lookup and a helper call, and a global (non-static)
 * __noinline function, which the verifier checks on its own against its BTF
 * signature (ctx pointer and scalar arguments, scalar return).
 *
 * Program xdp_calls:
 *   classify(ctx) [global]: 0 non-IP, 1 IPv4, 2 IPv6, 3 truncated IP
 *   non-IP -> PASS; truncated -> ABORTED; IPv6 -> hop limit < 64 ? DROP : PASS
 *   IPv4: score = mix5(saddr, daddr, ttl, proto, len) via fold() and rotl();
 *         score is written into the IPv4 ID field (checksum left as is) and
 *         recorded in last_score[0]; score % 4 picks PASS/DROP/TX/PASS
 *         (TX swaps the MACs through a subprogram).
 *   calls[0..3] count how often each subprogram ran.
 * Maps: calls (ARRAY 4 x u64), last_score (ARRAY 1 x u32).
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} last_score SEC(".maps");

static __noinline void count_call(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&calls, &which);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __noinline __u32 rotl(__u32 x, __u32 n)
{
	n &= 31;
	return n ? (x << n) | (x >> (32 - n)) : x;
}

static __noinline __u32 fold(__u64 x)
{
	count_call(1);
	return rotl((__u32)x ^ (__u32)(x >> 32), (__u32)x & 31);
}

static __noinline __u32 mix5(__u32 a, __u32 b, __u32 c, __u32 d, __u32 e)
{
	__u32 buf[4] = { a, b ^ e, c * 0x9e3779b1u, d + e };
	__u64 acc = 0;

	count_call(2);
#pragma unroll
	for (int i = 0; i < 4; i++)
		acc = acc * 31 + fold(((__u64)buf[i] << 32) | (buf[(i + 1) & 3]));
	return fold(acc);
}

static __noinline int swap_and_tx(struct ethhdr *eth, void *data_end)
{
	count_call(3);
	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED;
	swap_macs(eth);
	return XDP_TX;
}

/* Global: verified separately, so it re-derives its packet pointers from ctx. */
__noinline int classify(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	struct cursor c;
	int proto;

	if (!ctx)
		return 0;
	cursor_init(&c, ctx);
	proto = parse_eth(&c, &eth);
	if (proto == ETH_P_IP)
		return parse_ipv4(&c, &ip) < 0 ? 3 : 1;
	if (proto == ETH_P_IPV6)
		return parse_ipv6(&c, &ip6) < 0 ? 3 : 2;
	return 0;
}

SEC("xdp")
int xdp_calls(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	struct cursor c;
	__u32 score, zero = 0;
	int kind = classify(ctx);

	count_call(0);
	if (kind == 0)
		return XDP_PASS;
	if (kind == 3)
		return XDP_ABORTED;

	cursor_init(&c, ctx);
	parse_eth(&c, &eth);
	if (kind == 2) {
		if (parse_ipv6(&c, &ip6) < 0)
			return XDP_ABORTED;
		return ip6->hop_limit < 64 ? XDP_DROP : XDP_PASS;
	}
	if (parse_ipv4(&c, &ip) < 0)
		return XDP_ABORTED;

	score = mix5(ip->saddr, ip->daddr, ip->ttl, ip->protocol, ctx->data_end - ctx->data);
	ip->id = (__u16)score;
	bpf_map_update_elem(&last_score, &zero, &score, BPF_ANY);
	switch (score % 4) {
	case 1:
		return XDP_DROP;
	case 2:
		return swap_and_tx(eth, data_end);
	default:
		return XDP_PASS;
	}
}

char _license[] SEC("license") = "GPL";
