"""Reaching a running daemon from the command line: by ``--guest NAME`` or ``--device DEV``.

A guest driver (``vxdp guest run --name NAME``) answers on
``/run/vxdp/guest-NAME.sock``, a host device (``vxdp host serve --name DEV``)
on ``/run/vxdp/host-DEV.sock``; ``$VXDP_RUN_DIR`` moves both. A refusal comes
back as one line, with the verifier log or the policy rule as its detail.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from .. import rpc
from .output import CliError

_RULE = re.compile(r"\(rule ([\w.]+)\)")


def add_target(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """``--guest NAME`` (the guest's own tools) or, for the operator, ``--device DEV``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--guest", metavar="NAME", help="the guest driver started with --name NAME")
    if device:
        group.add_argument(
            "--device", metavar="DEV", help="operator path: the host device, on behalf of a stock guest"
        )


def call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    if getattr(args, "guest", None):
        path, who = rpc.guest_socket(args.guest), f"guest {args.guest}"
    else:
        path, who = rpc.host_socket(args.device), f"device {args.device}"
    try:
        return rpc.call(path, method, **params)
    except rpc.RpcError as e:
        if e.code == "ENOENT" and "no daemon listening" in e.message:
            raise CliError(f"{who}: not running ({e.message})") from None
        detail, fields = "", {}
        if isinstance(e.data, dict):
            detail, fields = e.data.get("log") or e.data.get("rule") or "", e.data
        elif isinstance(e.data, str):
            detail, fields = e.data, {"log": e.data}  # a verifier log travels as the bare string
        elif e.data is not None:
            detail, fields = json.dumps(e.data), {"data": e.data}
        rule = _RULE.search(e.message)  # a policy refusal names its rule in the message: "(rule helpers.never)"
        if rule and "rule" not in fields:
            fields = {**fields, "rule": rule.group(1)}
        raise CliError(f"{who}: {e.message} ({e.code})", detail, errno=e.code, **fields) from None
