/* alu: integer arithmetic whose results are easy to get subtly wrong.
 *
 * Exercises: byte swaps (bpf_ntohs/bpf_ntohl/bpf_be64_to_cpu, i.e. BPF_END),
 * 64-bit ALU, 32-bit ALU forced with inline asm (w registers: mul overflow,
 * add, div by a packet value that may be 0 -> 0, arsh32, neg32, and the
 * implicit zeroing of the upper half), unsigned div and mod by packet values
 * (the mod as raw BPF_MOD encodings, which clang 14 cannot produce)
 * (div by 0 gives 0, mod by 0 keeps the dividend), shifts by packet-derived
 * amounts (masked to the width, as C requires), arithmetic right shift,
 * signed compares of 16-, 32- and 64-bit values. clang 14 cannot emit signed
 * division for BPF, so there is none.
 *
 * Program xdp_alu: needs 14 + 64 bytes (shorter frames -> PASS untouched).
 * Inputs from the payload after the 14-byte Ethernet header (big-endian):
 * a = u32 @0, b = u32 @4, c = u64 @8, d = u16 @16, s = u8 @18.
 * Eight u64 results are written back over payload bytes 0..63 (big-endian)
 * and into results[0..7]; the action: (s16)d == -1 -> ABORTED,
 * (s64)c < 0 -> DROP, (s32)a < (s32)b -> PASS, else TX.
 * Maps: results (ARRAY 8 x u64).
 */
#include "vxdp_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 8);
} results SEC(".maps");

/* 32-bit ALU instructions, whatever -mcpu the Makefile uses (v1 has no alu32
 * code generation, but the assembler takes w registers). */
static __always_inline __u64 alu32_mix(__u64 a, __u64 b)
{
	__u64 r;

	asm volatile("r1 = %[a]\n\t"
		     "r2 = %[b]\n\t"
		     "r3 = -4294967296 ll\n\t"  /* 0xffffffff00000000: garbage */
		     "r1 |= r3\n\t"          /* in the upper half, which...  */
		     "w1 *= w2\n\t"          /* ...a 32-bit op must clear   */
		     "w1 += 0x7fffffff\n\t"
		     "w3 = w2\n\t"
		     "w3 &= 7\n\t"
		     "w1 /= w3\n\t"          /* b & 7 may be 0: result 0  */
		     "w1 s>>= 3\n\t"
		     "w2 = w1\n\t"
		     "w2 = -w2\n\t"
		     "w1 ^= w2\n\t"
		     "w1 <<= 5\n\t"
		     "%[r] = r1\n\t"
		     : [r] "=r"(r)
		     : [a] "r"(a), [b] "r"(b)
		     : "r1", "r2", "r3");
	return r;
}

/* clang 14 neither emits BPF_MOD (it expands a % b into a - a / b * b) nor
 * assembles "%=", so the two mod instructions are spelled as raw encodings:
 * 0x9f = BPF_ALU64 | BPF_MOD | BPF_X, 0x9c = BPF_ALU | BPF_MOD | BPF_X, and
 * 0x21 = src r2, dst r1. A divisor of 0 leaves the dividend (64-bit) or its
 * zero-extended low half (32-bit). */
static __always_inline __u64 mod_raw(__u64 a, __u64 b, __u64 c, __u64 d)
{
	__u64 r64, r32;

	asm volatile("r1 = %[a]\n\t"
		     "r2 = %[b]\n\t"
		     ".quad 0x219f\n\t"      /* r1 %%= r2 */
		     "%[r64] = r1\n\t"
		     "r1 = %[c]\n\t"
		     "r2 = %[d]\n\t"
		     ".quad 0x219c\n\t"      /* w1 %%= w2 */
		     "%[r32] = r1\n\t"
		     : [r64] "=&r"(r64), [r32] "=&r"(r32)
		     : [a] "r"(a), [b] "r"(b), [c] "r"(c), [d] "r"(d)
		     : "r1", "r2");
	return r64 ^ (r32 << 29);
}

SEC("xdp")
int xdp_alu(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *p = data + sizeof(struct ethhdr);
	__u64 res[8], c, *out;
	__u32 a, b, s;
	__u16 d;

	if ((void *)(p + 64) > data_end)
		return XDP_PASS;
	a = bpf_ntohl(*(__u32 *)(p + 0));
	b = bpf_ntohl(*(__u32 *)(p + 4));
	c = bpf_be64_to_cpu(*(__u64 *)(p + 8));
	d = bpf_ntohs(*(__u16 *)(p + 16));
	s = p[18];

	res[0] = ((__u64)(a / b) << 32) | (a % b);
	res[1] = d ? c / d : 0xd1d0;
	res[1] ^= c / d;
	res[2] = (c % b) ^ mod_raw(c, b & 7, c, d & 3);
	res[3] = (c << (s & 63)) | (c >> ((64 - s) & 63));
	res[4] = (__u64)((__s64)c >> (s & 63));
	res[5] = alu32_mix(a, b);
	res[6] = (__u32)(a * b + 0x12345678) >> (s & 31);
	res[6] |= (__u64)((__s32)a >> (s & 31)) << 32;
	res[7] = ((__u64)__builtin_bswap32(a) << 32) | bpf_htons(d) | ((__u64)((__s16)d < -100) << 16) |
		 ((__u64)((__s32)b > (__s32)a) << 17) | ((__u64)((__s64)c <= (__s64)-5) << 18);

#pragma unroll
	for (int i = 0; i < 8; i++) {
		__u32 k = i;

		((__u64 *)p)[i] = bpf_cpu_to_be64(res[i]);
		out = bpf_map_lookup_elem(&results, &k);
		if (out)
			*out = res[i];
	}

	if ((__s16)d == -1)
		return XDP_ABORTED;
	if ((__s64)c < 0)
		return XDP_DROP;
	if ((__s32)a < (__s32)b)
		return XDP_PASS;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
