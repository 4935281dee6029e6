/* csum: checksums with bpf_csum_diff, a router-like TTL decrement, ICMP echo.
 *
 * Exercises: bpf_csum_diff over packet memory (verify a whole IPv4 header),
 * over stack words (RFC 1624 incremental updates of the IPv4, UDP and ICMP
 * checksums), byte swaps, and packet writes at several layers.
 *
 * Program xdp_csum (Ethernet + up to 2 VLANs):
 *   non-IPv4, or IPv4 with options       -> PASS
 *   IPv4 header checksum wrong            -> DROP   (stats[0]++)
 *   TTL <= 1                              -> DROP   (stats[1]++)
 *   otherwise TTL--, checksum updated, then by protocol:
 *     UDP to port 53: port := 5353, UDP checksum updated (0 stays 0) -> TX, MACs swapped (stats[3]++)
 *     ICMP echo request: becomes an echo reply, IPs and MACs swapped  -> TX (stats[4]++)
 *     anything else                                                  -> PASS (stats[2]++)
 * Maps: stats (ARRAY 8 x u64).
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} stats SEC(".maps");

static __always_inline void stat(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* New checksum after one 16-bit word of the covered data changed. */
static __always_inline __u16 csum_replace2(__u16 check, __be16 old, __be16 new)
{
	__be32 from = old, to = new;
	__s64 sum = bpf_csum_diff(&from, sizeof(from), &to, sizeof(to), (__u16)~check);

	return csum_fold32(sum);
}

SEC("xdp")
int xdp_csum(struct xdp_md *ctx)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct cursor c;
	__be16 old, new;
	__s64 sum;
	int proto;

	cursor_init(&c, ctx);
	if (parse_eth(&c, &eth) != ETH_P_IP)
		return XDP_PASS;
	ip = c.pos;
	if ((void *)(ip + 1) > c.end || ip->ihl != 5)
		return XDP_PASS;
	proto = ip->protocol;
	c.pos = ip + 1;

	sum = bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0);
	if (sum < 0 || csum_fold32(sum) != 0) {
		stat(0);
		return XDP_DROP;
	}
	if (ip->ttl <= 1) {
		stat(1);
		return XDP_DROP;
	}

	old = *(__be16 *)&ip->ttl;
	ip->ttl--;
	new = *(__be16 *)&ip->ttl;
	ip->check = csum_replace2(ip->check, old, new);

	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = c.pos;

		if ((void *)(uh + 1) > c.end || uh->dest != bpf_htons(53))
			goto forward;
		old = uh->dest;
		uh->dest = bpf_htons(5353);
		if (uh->check) {
			__u16 check = csum_replace2(uh->check, old, uh->dest);

			uh->check = check ? check : 0xffff;
		}
		swap_macs(eth);
		stat(3);
		return XDP_TX;
	}
	if (proto == IPPROTO_ICMP) {
		struct icmphdr *ih = c.pos;
		__be32 addr;

		if ((void *)(ih + 1) > c.end || ih->type != ICMP_ECHO || ih->code != 0)
			goto forward;
		old = *(__be16 *)ih;
		ih->type = ICMP_ECHOREPLY;
		ih->checksum = csum_replace2(ih->checksum, old, *(__be16 *)ih);
		addr = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = addr;
		swap_macs(eth);
		stat(4);
		return XDP_TX;
	}
forward:
	stat(2);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
