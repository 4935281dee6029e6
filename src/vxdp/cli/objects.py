"""``FILE.o`` on the command line, and where the sample objects are.

Every command that takes an object reads it here, so a directory, a missing or
unreadable file, a file that is not a BPF ELF object and an object with no
program all give the same one line (``vxdp: PATH: is a directory``) whichever
command was given it. ``vxdp demo`` and ``vxdp bench engines`` find the
compiled samples the same way: ``samples/build`` of the source tree this
package runs from, built by ``make samples``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .output import CliError

if TYPE_CHECKING:
    from ..bpf.obj import BpfObject

SOURCE_ROOT = Path(__file__).resolve().parents[3]
SAMPLES_DIR = SOURCE_ROOT / "samples" / "build"


def file_error(path: str | os.PathLike, e: OSError) -> CliError:
    """An OSError on a file the user named, as one line in the words of the rest of the CLI."""
    if e.errno == errno.ENOENT:
        return CliError(f"{path}: no such file")
    if e.errno == errno.EISDIR:
        return CliError(f"{path}: is a directory")
    return CliError(f"{path}: {e.strerror or e}")


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of a file the user named (``offload import FILE``); any failure is one `CliError` line."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise file_error(path, e) from None


def check_readable(path: str | os.PathLike) -> None:
    """Refuse a directory or a missing file by name before a reader that words it worse sees it."""
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory")
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")


def read_object(path: str | os.PathLike) -> BpfObject:
    """Parse the object at ``path``, which must have a program (every command runs, loads or shows
    one). Any failure is a `CliError` naming ``path``."""
    from ..bpf.elf import load_object
    from ..bpf.elf_reader import ObjectError

    check_readable(path)
    try:
        obj = load_object(path)
    except OSError as e:
        raise file_error(path, e) from None
    except ObjectError as e:
        # the parser names the file by its base name; the user named it by path
        msg, base = str(e), os.path.basename(path)
        raise CliError(f"{path}{msg[len(base):]}" if msg.startswith(f"{base}:") else f"{path}: {msg}") from None
    if not obj.programs:
        raise CliError(f"{path}: no programs (no function in a SEC(\"xdp\") or other program section)")
    return obj


def pick_program(obj: BpfObject, name: str | None) -> str:
    """The name of program ``name`` (the first with None) of ``obj``, or a `CliError` listing the others."""
    try:
        return obj.program(name).name
    except KeyError as e:
        raise CliError(e.args[0]) from None


def sample(name: str, samples_dir: str | os.PathLike | None = None) -> Path:
    """A compiled sample object, ``name`` in ``samples_dir`` (default `SAMPLES_DIR`), which must exist."""
    where = Path(samples_dir) if samples_dir is not None else SAMPLES_DIR
    path = where / name
    if not path.is_file():
        if path.is_dir():
            raise CliError(f"{path}: is a directory")
        raise CliError(f"{path}: no such file (run `make samples` in {SOURCE_ROOT})")
    return path
