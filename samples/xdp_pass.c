/* xdp_pass: count packets per IP protocol number, then pass them all.
 *
 * xdp1's counting with XDP_PASS: offloaded, it watches the traffic headed for
 * the guest without changing it (ping, iperf3 still work); run natively after
 * an offloaded program, it counts what the host passed.
 */
#include "vxdp_rxcnt.h"

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	count_l3_proto(ctx);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
