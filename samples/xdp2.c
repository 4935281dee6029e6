/* xdp2: count packets per IP protocol number, swap the MACs, send back (XDP_TX).
 *
 * Our version of the kernel's samples/bpf/xdp2_kern.c, used by the benchmarks.
 * Same parsing and counting as xdp1 (map rxcnt, plain ARRAY of 256 u64, atomic
 * add); every frame of at least 14 bytes leaves with source and destination
 * MAC exchanged, whatever its payload. Shorter frames are dropped.
 */
#include "vxdp_rxcnt.h"

SEC("xdp")
int xdp_prog2(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	count_l3_proto(ctx);
	swap_macs(eth);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
