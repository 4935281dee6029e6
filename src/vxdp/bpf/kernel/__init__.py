"""The host kernel through bpf(2) (ctypes) and rtnetlink (pyroute2): the only I/O in ``vxdp.bpf``.

Every bpf(2) call goes through `syscall.sys_bpf`; every fd has one owner object
that closes it (``close()`` is idempotent, ``__del__`` is the safety net, all
are context managers).
"""

from .btf import KernelBtf, KernelBtfError
from .live_frames import LiveFramesError, send_live_frames, send_live_frames_in, xdp_md
from .maps import BatchResult, KernelMap, MapError, MapInfo, sanitize_name
from .netns import run_in_netns, setns_current_thread
from .objects import (
    map_get_fd_by_id,
    map_get_next_id,
    map_ids,
    obj_get,
    obj_get_info,
    obj_pin,
    prog_get_fd_by_id,
    prog_get_next_id,
    prog_ids,
)
from .prog import (
    BPF_F_TEST_XDP_LIVE_FRAMES,
    KernelProgram,
    ProgInfo,
    ProgType,
    StatsHandle,
    TestRunResult,
    VerifierError,
    enable_stats,
)
from .syscall import BpfError, Cmd, sys_bpf
from .xdp import XdpError, XdpMode, attach_xdp, detach_xdp, query_xdp, query_xdp_attrs
from .xdp_link import XdpLink

__all__ = [
    "BPF_F_TEST_XDP_LIVE_FRAMES",
    "BatchResult",
    "BpfError",
    "Cmd",
    "KernelBtf",
    "KernelBtfError",
    "KernelMap",
    "KernelProgram",
    "LiveFramesError",
    "MapError",
    "MapInfo",
    "ProgInfo",
    "ProgType",
    "StatsHandle",
    "TestRunResult",
    "VerifierError",
    "XdpError",
    "XdpLink",
    "XdpMode",
    "attach_xdp",
    "detach_xdp",
    "enable_stats",
    "map_get_fd_by_id",
    "map_get_next_id",
    "map_ids",
    "obj_get",
    "obj_get_info",
    "obj_pin",
    "prog_get_fd_by_id",
    "prog_get_next_id",
    "prog_ids",
    "query_xdp",
    "query_xdp_attrs",
    "run_in_netns",
    "sanitize_name",
    "send_live_frames",
    "send_live_frames_in",
    "setns_current_thread",
    "sys_bpf",
    "xdp_md",
]
