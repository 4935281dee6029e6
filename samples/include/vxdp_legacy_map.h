/* vxdp_legacy_map.h: the pre-BTF map definition, `struct bpf_map_def SEC("maps")`.
 *
 * libbpf 1.x dropped struct bpf_map_def from its headers *and* refuses to open
 * objects with a "maps" section ("legacy map definitions ... are not supported
 * by libbpf v1.0+"), but old objects (and the 2019 offload RFC's samples) use
 * it, so vxdp's ELF loader must still read it: five unsigned ints, in this
 * order, one record per map symbol in section "maps".
 *
 * LEGACY_MAP(name, type, key_t, value_t, max) expands to exactly
 *
 *     struct bpf_map_def SEC("maps") name = {
 *             .type = type, .key_size = sizeof(key_t),
 *             .value_size = sizeof(value_t), .max_entries = max,
 *     };
 *
 * Built with -DVXDP_BTF_TWIN it expands to the same map as a BTF-defined one
 * instead, so that tests/test_samples.py can have the kernel verifier (through
 * bpftool/libbpf) check the very same program code.
 */
#ifndef VXDP_LEGACY_MAP_H
#define VXDP_LEGACY_MAP_H

struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

#ifndef VXDP_BTF_TWIN
#define LEGACY_MAP(name, map_type, key_t, value_t, max)			\
	struct bpf_map_def SEC("maps") name = {				\
		.type = map_type,					\
		.key_size = sizeof(key_t),				\
		.value_size = sizeof(value_t),				\
		.max_entries = max,					\
	}
#else
#define LEGACY_MAP(name, map_type, key_t, value_t, max)			\
	struct {							\
		__uint(type, map_type);					\
		__uint(key_size, sizeof(key_t));			\
		__uint(value_size, sizeof(value_t));			\
		__uint(max_entries, max);				\
	} name SEC(".maps")
#endif

#endif /* VXDP_LEGACY_MAP_H */
