"""Benchmarks behind ``vxdp bench``: each returns rows, and `report` writes them with their context."""
