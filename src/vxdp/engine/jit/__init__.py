"""The JIT engine: our verifier, then eBPF compiled to native code through LLVM (llvmlite), with maps
in native memory shared with user space (`maps`, `map_runtime`)."""
