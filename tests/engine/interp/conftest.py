"""Fixtures for the interpreter's tests: a fresh engine per test."""

from __future__ import annotations

import pytest

from vxdp.engine.interp.engine import InterpEngine


@pytest.fixture
def interp() -> InterpEngine:
    engine = InterpEngine(seed=1)
    yield engine
    engine.close()
