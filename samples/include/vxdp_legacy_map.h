/* vxdp_legacy_map.h: the pre-BTF map definition, `struct bpf_map_def SEC("maps")`.
 *
 * libbpf 1.x headers dropped struct bpf_map_def, but old objects (and the 2019
 * offload RFC's samples) use it, so the ELF loader must still read it: five
 * unsigned ints, in this order, one record per map symbol in section "maps".
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

#endif /* VXDP_LEGACY_MAP_H */
