/* legacy_maps: maps declared the pre-BTF way, `struct bpf_map_def SEC("maps")`.
 *
 * Exercises: legacy ARRAY, HASH and PERCPU_ARRAY definitions (see
 * vxdp_legacy_map.h), map lookup/update with BPF_NOEXIST and BPF_ANY, a hash
 * map that fills up on purpose (64 entries, keyed by EtherType: once full, new
 * keys fail with -E2BIG and are counted in len_hist[15]).
 *
 * Program xdp_legacy: len_hist[len / 128]++ (buckets 0..11); ethertype_cnt[type]++;
 * IPv4 -> PASS, IPv6 -> DROP, other EtherTypes -> PASS the first time a type is
 * seen (inserted with BPF_NOEXIST), DROP afterwards. action_cnt[action]++.
 * Maps: len_hist (ARRAY 16 x u64), ethertype_cnt (HASH u16 -> u64, 64 entries),
 * action_cnt (PERCPU_ARRAY 8 x u64).
 */
#include "vxdp_parse.h"
#include "vxdp_legacy_map.h"

LEGACY_MAP(len_hist, BPF_MAP_TYPE_ARRAY, __u32, __u64, 16);

LEGACY_MAP(ethertype_cnt, BPF_MAP_TYPE_HASH, __u16, __u64, 64);

LEGACY_MAP(action_cnt, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, __u64, 8);

static __always_inline void bump(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int finish(int action)
{
	bump(&action_cnt, action);
	return action;
}

SEC("xdp")
int xdp_legacy(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 one = 1, *cnt;
	__u16 type;
	long err;

	bump(&len_hist, (__u32)(data_end - data) / 128);
	if ((void *)(eth + 1) > data_end)
		return finish(XDP_ABORTED);
	type = bpf_ntohs(eth->h_proto);

	cnt = bpf_map_lookup_elem(&ethertype_cnt, &type);
	if (cnt) {
		__sync_fetch_and_add(cnt, 1);
	} else {
		err = bpf_map_update_elem(&ethertype_cnt, &type, &one, BPF_NOEXIST);
		if (err)
			bump(&len_hist, 15);
		else if (type != ETH_P_IP && type != ETH_P_IPV6)
			return finish(XDP_PASS);
	}
	if (type == ETH_P_IP)
		return finish(XDP_PASS);
	return finish(XDP_DROP);
}

char _license[] SEC("license") = "GPL";
