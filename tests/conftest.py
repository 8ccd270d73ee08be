"""Shared pytest configuration: quiet onnx-graphsurgeon, and the path of the optional shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis: derandomized (the same examples on every run and machine), no per-example deadline (the
# machine is shared), no example database. HYPOTHESIS_PROFILE=dev draws fresh examples instead.
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    # onnx-graphsurgeon prints warnings to stdout, which would pollute the CLI tests' capsys.
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.ERROR


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Synthetic calibration (the default) caches its samples: keep them out of the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DFQ_ONNX_CACHE_DIR", str(tmp_path_factory.mktemp("dfq-cache")))
    yield
    mp.undo()
