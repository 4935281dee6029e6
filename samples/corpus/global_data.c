/* global_data: global variables in .data, .rodata and .bss.
 *
 * Exercises: libbpf's global-data maps (one single-entry ARRAY per section,
 * referenced with BPF_PSEUDO_MAP_VALUE + offset in ld_imm64), const volatile
 * configuration in .rodata (frozen; the verifier sees the values), a const
 * lookup table in .rodata read with a variable index, initialised mutable
 * state in .data, zeroed counters in .bss, and an array in .bss indexed by a
 * bounded value from the packet.
 *
 * Program xdp_global: frames shorter than min_len -> ABORTED. Non-IPv4 -> PASS.
 * IPv4: the protocol's class (proto_class table) picks the action:
 * class 0 PASS, 1 DROP (ICMP), 2 TCP: PASS unless dst port == blocked_port
 * (DROP), 3 UDP: TX with MACs swapped and the IPv4 TOS set to tos_mark.
 * Every packet: pkt_seen++, bytes_seen += len, last_len = len,
 * by_ttl_bucket[ttl >> 5]++ (IPv4), verdicts[action]++; the .data
 * generation counter starts at 7 and counts up per IPv4 packet.
 * Maps (libbpf names): global_d.data, global_d.rodata, global_d.bss.
 */
#include "vxdp_parse.h"

/* .rodata: set by the loader before load, read-only for the program */
const volatile __u16 blocked_port = 23;
const volatile __u32 min_len = 20;
const volatile __u8 tos_mark = 0x28;
/* .rodata too: a plain const table */
static const __u8 proto_class[18] = { [IPPROTO_ICMP] = 1, [IPPROTO_TCP] = 2, [IPPROTO_UDP] = 3 };

/* .data: initialised, mutable */
__u64 generation = 7;
__u32 last_len = 0xdeadbeef;

/* .bss: zero-initialised */
__u64 pkt_seen;
__u64 bytes_seen;
__u64 by_ttl_bucket[8];
__u32 verdicts[5];

static __always_inline int verdict(int action)
{
	if (action >= 0 && action < 5)
		__sync_fetch_and_add(&verdicts[action], 1);
	return action;
}

SEC("xdp")
int xdp_global(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct cursor c;
	__u8 class;
	int proto;

	__sync_fetch_and_add(&pkt_seen, 1);
	__sync_fetch_and_add(&bytes_seen, len);
	last_len = len;
	if (len < min_len)
		return verdict(XDP_ABORTED);

	cursor_init(&c, ctx);
	if (parse_eth(&c, &eth) != ETH_P_IP)
		return verdict(XDP_PASS);
	proto = parse_ipv4(&c, &ip);
	if (proto < 0)
		return verdict(XDP_PASS);

	generation++;
	by_ttl_bucket[ip->ttl >> 5]++;

	class = proto < sizeof(proto_class) ? proto_class[proto] : 0;
	switch (class) {
	case 1:
		return verdict(XDP_DROP);
	case 2: {
		struct tcphdr *th = c.pos;

		if ((void *)(th + 1) > c.end)
			return verdict(XDP_PASS);
		return verdict(th->dest == bpf_htons(blocked_port) ? XDP_DROP : XDP_PASS);
	}
	case 3: {
		__u16 old = *(__u16 *)ip, new;
		__u32 sum;

		/* TOS is the low byte of the first 16-bit word: update the
		 * checksum the RFC 1624 way, with 16-bit arithmetic. */
		ip->tos = tos_mark;
		new = *(__u16 *)ip;
		sum = (__u16)~ip->check + (__u16)~old + new;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		ip->check = ~sum;
		swap_macs(eth);
		return verdict(XDP_TX);
	}
	default:
		return verdict(XDP_PASS);
	}
}

char _license[] SEC("license") = "GPL";
