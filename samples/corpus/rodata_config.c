/* rodata_config: const volatile configuration that the verifier must see as constants.
 *
 * Exercises: BPF_MAP_FREEZE of .rodata. A loader (libbpf, vxdp) writes the
 * initial image of .rodata, freezes the map, then loads the programs; the
 * verifier then reads a frozen BPF_F_RDONLY_PROG map's values as known
 * constants and skips branches they make dead. Here `cfg_unsafe` is 0, and
 * the branch it guards reads the packet without a bounds check: the verifier
 * accepts the program only if it knows `cfg_unsafe` is 0, i.e. only when
 * .rodata is frozen. Not frozen, the load fails with EACCES ("invalid access
 * to packet").
 *
 * Program xdp_rodata: every frame: seen[0]++, seen[1] += len. Frames shorter
 * than min_len (60) -> DROP, seen[2]++. Others -> cfg_action (PASS).
 * Maps: seen ARRAY 4 x u64; .rodata (libbpf names it rodata_c.rodata).
 */
#include "vxdp_parse.h"

/* .rodata: fixed at load, frozen; the verifier sees these values */
const volatile __u32 cfg_unsafe = 0;
const volatile __u32 min_len = 60;
const volatile __u32 cfg_action = XDP_PASS;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

static __always_inline void count(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&seen, &slot);

	if (v)
		__sync_fetch_and_add(v, n);
}

SEC("xdp")
int xdp_rodata(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 len = end - data;

	if (cfg_unsafe)  /* dead: the packet read below has no bounds check */
		return *(volatile __u32 *)(data + 64) & 3;

	count(0, 1);
	count(1, len);
	if (len < min_len) {
		count(2, 1);
		return XDP_DROP;
	}
	return cfg_action;
}

char _license[] SEC("license") = "GPL";
