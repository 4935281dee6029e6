"""``vxdp compile``: build the compiled-code cache of the datapath loops ahead of the first daemon.

Both daemons compile (or load) their compiled loops before they serve (`vxdp.jitcache`);
on a fresh install that takes seconds a user would otherwise wait through at the
first ``vxdp host serve`` and ``vxdp guest run``. ``make setup`` runs this once.
"""

from __future__ import annotations

import argparse

from .output import emit_json


def add_parser(objects: argparse._SubParsersAction) -> None:
    p = objects.add_parser(
        "compile", help="compile the datapath loops (numba) into the cache, ahead of the daemons",
        description="Compile every datapath kernel the backend (vxdp host serve) and the driver (vxdp guest "
        "run) run, or check that the cache already has them. The cache is numba's: the __pycache__ folders "
        "beside the package's sources, or $NUMBA_CACHE_DIR when it is set. Exit status 0 when every kernel "
        "is compiled or cached.")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    from .. import jitcache
    from ..engine import xdp_hook
    from ..engine.jit import map_warmup, staging
    from ..netdev import warmup as netdev_warmup
    from ..virtio import warmup as virtio_warmup

    report = jitcache.run([virtio_warmup.device, virtio_warmup.driver, netdev_warmup.port, netdev_warmup.tap,
                           xdp_hook.warmup, staging.warmup, map_warmup.maps])
    if args.json:
        emit_json({"cache": jitcache.cache_location(), "compiled": report.compiled, "loaded": report.loaded,
                   "seconds": round(report.seconds, 3)})
    else:
        print(f"vxdp compile: {report.summary()}")
        if not report.compiled:
            print(f"  cache: {jitcache.cache_location()}")
    return 0
