"""The reference engine: a pure-Python eBPF interpreter with an XDP context, maps and helpers."""
