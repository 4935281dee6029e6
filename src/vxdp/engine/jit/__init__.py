"""The LLVM JIT engine: eBPF our verifier accepted, compiled to native code that runs whole batches."""
