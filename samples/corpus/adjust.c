/* adjust: changing the frame's size with bpf_xdp_adjust_head/_tail/_meta.
 *
 * Exercises: bpf_xdp_adjust_head with a negative delta (push a VLAN tag) and a
 * positive one (pop it), bpf_xdp_adjust_tail growing (append a trailer; the
 * kernel zeroes the new bytes) and shrinking (trim), bpf_xdp_adjust_meta
 * (scratch metadata, removed again before returning), re-deriving every
 * packet pointer after an adjust, and the helpers' error returns.
 *
 * Program xdp_adjust, by EtherType (outer, no VLAN walking):
 *   0x8100 (one VLAN tag)    pop the tag (MACs move 4 bytes up) -> PASS
 *   IPv4                     push a VLAN tag, VID = IP protocol  -> TX
 *   IPv6                     grow the tail by 16 bytes: "VXDP", old length
 *                            (be32), 8 zero bytes                 -> TX
 *   other, frame > 60 bytes  shrink the tail to 60 bytes          -> PASS
 *   other, frame <= 60       8 bytes of metadata: sum of the first
 *                            two 32-bit words of the frame, stored
 *                            in meta and read back; meta removed;
 *                            the sum's low bit picks DROP or PASS
 *   a helper that fails      -> ABORTED
 * Maps: sizes (ARRAY 4 x u64): [0] bytes in, [1] bytes out, [2] pushes, [3] pops.
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} sizes SEC(".maps");

static __always_inline void add(__u32 i, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sizes, &i);

	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline int done(struct xdp_md *ctx, int action)
{
	add(1, ctx->data_end - ctx->data);
	return action;
}

static __always_inline int push_vlan(struct xdp_md *ctx, __u16 vid)
{
	struct ethhdr *eth;
	struct vlan_hdr *vh;
	__be16 proto;

	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	proto = eth->h_proto;
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*vh)))
		return XDP_ABORTED;
	eth = (void *)(long)ctx->data;
	vh = (void *)(eth + 1);
	if ((void *)(vh + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__builtin_memmove(eth, (void *)eth + sizeof(*vh), 2 * ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_8021Q);
	vh->h_vlan_TCI = bpf_htons(vid & 0xfff);
	vh->h_vlan_encapsulated_proto = proto;
	add(2, 1);
	return XDP_TX;
}

static __always_inline int pop_vlan(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct vlan_hdr *vh = (void *)(eth + 1);
	__be16 proto;

	if ((void *)(vh + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	proto = vh->h_vlan_encapsulated_proto;
	__builtin_memmove((void *)eth + sizeof(*vh), eth, 2 * ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, sizeof(*vh)))
		return XDP_ABORTED;
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	eth->h_proto = proto;
	add(3, 1);
	return XDP_PASS;
}

static __always_inline int grow_tail(struct xdp_md *ctx, __u32 len)
{
	void *data, *data_end;
	__be32 *trailer;

	if (bpf_xdp_adjust_tail(ctx, 16))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (len > 1600)
		return XDP_ABORTED;
	trailer = data + len;
	if ((void *)(trailer + 4) > data_end)
		return XDP_ABORTED;
	trailer[0] = bpf_htonl(0x56584450); /* "VXDP" */
	trailer[1] = bpf_htonl(len);
	return XDP_TX;
}

static __always_inline int with_meta(struct xdp_md *ctx)
{
	__u32 *meta, *data, sum;

	if (bpf_xdp_adjust_meta(ctx, -8))
		return XDP_ABORTED;
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if ((void *)(meta + 2) > (void *)data || (void *)(data + 2) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	meta[0] = data[0] + data[1];
	meta[1] = 0;
	sum = meta[0];
	if (bpf_xdp_adjust_meta(ctx, 8))
		return XDP_ABORTED;
	return (sum & 1) ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int xdp_adjust(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u32 len = ctx->data_end - ctx->data;
	__u16 proto;

	add(0, len);
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return done(ctx, XDP_ABORTED);
	proto = bpf_ntohs(eth->h_proto);

	if (proto == ETH_P_8021Q)
		return done(ctx, pop_vlan(ctx));
	if (proto == ETH_P_IP) {
		struct iphdr *ip = (void *)(eth + 1);
		__u16 vid = 0;

		if ((void *)(ip + 1) <= (void *)(long)ctx->data_end)
			vid = ip->protocol;
		return done(ctx, push_vlan(ctx, vid));
	}
	if (proto == ETH_P_IPV6)
		return done(ctx, grow_tail(ctx, len));
	if (len > 60) {
		if (bpf_xdp_adjust_tail(ctx, 60 - (int)len))
			return done(ctx, XDP_ABORTED);
		return done(ctx, XDP_PASS);
	}
	return done(ctx, with_meta(ctx));
}

char _license[] SEC("license") = "GPL";
