/* xdp_flow: a router's fast path, the heavier benchmark program beside xdp1 and xdp2.
 *
 * For IPv4 TCP and UDP frames: look the 5-tuple up in a HASH flow table (a miss
 * inserts the flow with BPF_NOEXIST; once the table is full new flows count in
 * `flow_err` and go on uncounted) and add the frame to its flow's packets and
 * bytes; then a TTL of 0 or 1 is a DROP (a router would send ICMP time exceeded),
 * any other is decremented with the header checksum updated through
 * bpf_csum_diff, the MACs are swapped and the frame goes back out: TX. The flow is
 * counted first so that every run of a benchmark's repeated frame (whose TTL
 * falls with each run) pays for the table.
 * Everything else (non-IPv4, other protocols, truncated headers): PASS, untouched.
 * Deterministic for a given frame and table.
 */
#include "vxdp_parse.h"

struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
	__uint(max_entries, 4096);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} flow_err SEC(".maps");

static __always_inline __u16 csum_replace2(__u16 check, __be16 old, __be16 new)
{
	__be32 from = old, to = new;
	__s64 sum = bpf_csum_diff(&from, sizeof(from), &to, sizeof(to), (__u16)~check);

	return csum_fold32(sum);
}

SEC("xdp")
int xdp_flow(struct xdp_md *ctx)
{
	struct flow_key key = {};
	struct flow_stats *st, fresh = {};
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *l4;
	struct cursor c;
	__be16 old, new;
	__u32 zero = 0;
	__u64 *err;
	int proto;

	cursor_init(&c, ctx);
	if (parse_eth(&c, &eth) != ETH_P_IP)
		return XDP_PASS;
	proto = parse_ipv4(&c, &ip);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return XDP_PASS;
	l4 = c.pos; /* TCP and UDP both open with the two ports */
	if ((void *)(l4 + 1) > c.end)
		return XDP_PASS;
	key.saddr = ip->saddr;
	key.daddr = ip->daddr;
	key.sport = l4->source;
	key.dport = l4->dest;
	key.proto = proto;
	st = bpf_map_lookup_elem(&flows, &key);
	if (!st) {
		if (bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST) == 0)
			st = bpf_map_lookup_elem(&flows, &key);
		if (!st) {
			err = bpf_map_lookup_elem(&flow_err, &zero);
			if (err)
				__sync_fetch_and_add(err, 1);
		}
	}
	if (st) {
		__sync_fetch_and_add(&st->packets, 1);
		__sync_fetch_and_add(&st->bytes, (__u64)(c.end - (void *)eth));
	}

	if (ip->ttl <= 1)
		return XDP_DROP;
	old = *(__be16 *)&ip->ttl;
	ip->ttl--;
	new = *(__be16 *)&ip->ttl;
	ip->check = csum_replace2(ip->check, old, new);
	swap_macs(eth);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
