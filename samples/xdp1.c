/* xdp1: count packets per IP protocol number, then drop them all.
 *
 * Our version of the kernel's samples/bpf/xdp1_kern.c, used by the benchmarks.
 * Ethernet with up to two VLAN tags, then IPv4 (protocol) or IPv6 (next header).
 * rxcnt[proto] is incremented with an atomic add; non-IP and truncated frames
 * count nothing. Every frame is dropped.
 * rxcnt is a plain ARRAY, not the kernel sample's PERCPU_ARRAY: the offload
 * design replaced per-CPU arrays by arrays.
 */
#include "vxdp_rxcnt.h"

SEC("xdp")
int xdp_prog1(struct xdp_md *ctx)
{
	count_l3_proto(ctx);
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
