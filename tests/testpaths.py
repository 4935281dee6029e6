"""Where things are, for any test: the repository root and the compiled sample objects."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_BUILD = ROOT / "samples" / "build"


def sample_objects() -> list[Path]:
    """Every compiled sample object; empty means `make samples` has not run."""
    return sorted(SAMPLES_BUILD.rglob("*.o"))
