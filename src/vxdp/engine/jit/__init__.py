"""The LLVM JIT engine: eBPF programs our verifier accepted, compiled to native code with llvmlite
that runs whole batches of frames per call.

Its maps (`maps`, `map_runtime`) live in native memory that both the compiled
programs and the user-space map API use, so a program's writes and a user's
updates meet in the same bytes without Python running per packet.
"""
