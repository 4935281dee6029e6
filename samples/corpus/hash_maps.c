/* hash_maps: a flow table and friends in HASH, PERCPU_HASH and LRU_HASH maps.
 *
 * Exercises: BTF-defined HASH with a struct key (zeroed padding) and struct
 * value, lookup/update with BPF_NOEXIST and BPF_ANY, delete (including delete
 * of a missing key, which fails with -ENOENT), PERCPU_HASH, LRU_HASH (keyed by
 * dst port % 64, so 1000s of packets never evict), a user-filled blocklist,
 * and nondeterministic helpers kept out of the verdict: bpf_ktime_get_ns and
 * bpf_get_prandom_u32 only ever land in the nondet_* maps.
 *
 * Program xdp_flows (IPv4 with TCP or UDP; Ethernet + up to 2 VLANs):
 *   non-IP -> PASS; IPv6 / other IPv4 protocols: proto_pc[proto]++ -> PASS
 *   saddr in blocklist                   -> DROP, blocklist value++
 *   TCP RST: flow deleted                -> DROP (errors[0]++ if it was absent)
 *   TCP FIN: flow deleted                -> PASS (errors[0]++ if it was absent)
 *   else flows[5-tuple] += 1 packet, len bytes; ports_lru[dport % 64]++;
 *   a flow's 4th and later packets       -> DROP, earlier ones -> PASS
 *   truncated L4 header                  -> ABORTED
 * Maps: flows (HASH 4096), blocklist (HASH be32 -> u32, 64, empty unless the
 * test fills it), proto_pc (PERCPU_HASH 256), ports_lru (LRU_HASH 4096),
 * errors (ARRAY 4), nondet_last_seen (HASH proto -> ns), nondet_sample (ARRAY 1).
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

struct flow_val {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
	__uint(max_entries, 4096);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u32);
	__uint(max_entries, 64);
} blocklist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} proto_pc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u16);
	__type(value, __u64);
	__uint(max_entries, 4096);
} ports_lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} errors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} nondet_last_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} nondet_sample SEC(".maps");

static __always_inline void count(void *map, void *key)
{
	__u64 one = 1, *v = bpf_map_lookup_elem(map, key);

	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
}

static __always_inline void error(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&errors, &i);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("xdp")
int xdp_flows(struct xdp_md *ctx)
{
	__u64 len = ctx->data_end - ctx->data, now = bpf_ktime_get_ns();
	__u32 zero = 0, rnd = bpf_get_prandom_u32(), key32, *blocked;
	struct flow_val *fv, init = { 1, len };
	struct flow_key fk;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	struct cursor c;
	__u16 port_key;
	int proto;

	bpf_map_update_elem(&nondet_sample, &zero, &rnd, BPF_ANY);

	cursor_init(&c, ctx);
	proto = parse_eth(&c, &eth);
	if (proto == ETH_P_IPV6) {
		proto = parse_ipv6(&c, &ip6);
		if (proto >= 0) {
			key32 = proto;
			count(&proto_pc, &key32);
		}
		return XDP_PASS;
	}
	if (proto != ETH_P_IP)
		return XDP_PASS;
	proto = parse_ipv4(&c, &ip);
	if (proto < 0)
		return XDP_PASS;
	key32 = proto;
	bpf_map_update_elem(&nondet_last_seen, &key32, &now, BPF_ANY);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
		count(&proto_pc, &key32);
		return XDP_PASS;
	}

	blocked = bpf_map_lookup_elem(&blocklist, &ip->saddr);
	if (blocked) {
		__sync_fetch_and_add(blocked, 1);
		return XDP_DROP;
	}

	__builtin_memset(&fk, 0, sizeof(fk));
	fk.saddr = ip->saddr;
	fk.daddr = ip->daddr;
	fk.proto = proto;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = c.pos;

		if ((void *)(th + 1) > c.end)
			return XDP_ABORTED;
		fk.sport = th->source;
		fk.dport = th->dest;
		if (th->rst || th->fin) {
			if (bpf_map_delete_elem(&flows, &fk))
				error(0);
			return th->rst ? XDP_DROP : XDP_PASS;
		}
	} else {
		struct udphdr *uh = c.pos;

		if ((void *)(uh + 1) > c.end)
			return XDP_ABORTED;
		fk.sport = uh->source;
		fk.dport = uh->dest;
	}

	port_key = bpf_ntohs(fk.dport) % 64;
	count(&ports_lru, &port_key);

	fv = bpf_map_lookup_elem(&flows, &fk);
	if (!fv) {
		if (bpf_map_update_elem(&flows, &fk, &init, BPF_NOEXIST))
			error(1);
		return XDP_PASS;
	}
	__sync_fetch_and_add(&fv->packets, 1);
	__sync_fetch_and_add(&fv->bytes, len);
	return fv->packets > 3 ? XDP_DROP : XDP_PASS;
}

char _license[] SEC("license") = "GPL";
