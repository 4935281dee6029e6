"""The host's offload service: policy, per-device handle tables, rewriting, the kernel engine, visibility.

`OffloadService` is the one entry point (the ctrl-vq handler and the operator
path both call it); `Policy` says what guests may do; `OffloadError` is every
refusal, naming the rule.
"""
