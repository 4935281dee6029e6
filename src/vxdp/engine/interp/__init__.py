"""The reference engine: a pure-Python eBPF interpreter with an XDP context, maps and helpers."""

from .engine import InterpEngine, InterpError, InterpLoadError, InterpRunResult
from .memory import Fault
from .xdp import PacketSizeError, XdpContextError

__all__ = ["Fault", "InterpEngine", "InterpError", "InterpLoadError", "InterpRunResult", "PacketSizeError", "XdpContextError"]
