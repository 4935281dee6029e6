"""Harness code for tests, benchmarks and demos: the real peers (a QEMU guest, DPDK testpmd)
and network namespaces. Nothing in the datapath imports this package."""
