/* Empty on purpose. <linux/icmp.h> pulls in <linux/if.h>, which includes glibc's
 * <sys/socket.h>; for -target bpf glibc believes it is a 32-bit build and wants
 * gnu/stubs-32.h, which only gcc-multilib ships. The stubs only list glibc
 * functions that are unimplemented, which a BPF program never calls. */
