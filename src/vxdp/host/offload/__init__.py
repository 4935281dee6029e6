"""The host's offload service: policy, per-device handle tables, rewriting, the kernel engine, visibility.

`OffloadService` is the one entry point (the ctrl-vq handler and the operator
path both call it); `Policy` says what guests may do; `OffloadError` is every
refusal, naming the rule.
"""

from .errors import OffloadError
from .handles import HandleTable, Kind
from .policy import NEVER_HELPERS, Policy, PolicyError, Quota, load_policy, map_memory, policy_from_toml
from .rewrite import ACTION_SLOTS, add_action_counters, check_program, rewrite_map_handles
from .service import OffloadService

__all__ = [
    "ACTION_SLOTS",
    "NEVER_HELPERS",
    "HandleTable",
    "Kind",
    "OffloadError",
    "OffloadService",
    "Policy",
    "PolicyError",
    "Quota",
    "add_action_counters",
    "check_program",
    "load_policy",
    "map_memory",
    "policy_from_toml",
    "rewrite_map_handles",
]
