"""Shared pytest configuration: quiet onnx-graphsurgeon, and the path of the optional shared data."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import traceback
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis: derandomized (the same examples on every run and machine), no per-example deadline (the
# machine is shared), no example database. HYPOTHESIS_PROFILE=dev draws fresh examples instead.
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# A test still running after this many seconds is stuck (the whole suite takes about a minute): the
# watchdog prints every thread's stack and ends the run with exit code 1, so a hang on some machine
# shows where it is in the CI log instead of running into CI's own time limit. faulthandler's watchdog
# is a C thread: it fires even when the stuck code is native (a solver, ORT) and holds the GIL.
TEST_TIMEOUT_S = 600


_WATCHDOG_OUT = []      # a copy of the real stderr (fd 2 is redirected while a test runs)


def pytest_configure(config):
    _WATCHDOG_OUT.append(os.fdopen(os.dup(2), "w"))
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


def _report_hang(nodeid: str) -> None:
    """The stuck test and the innermost frames of every thread, then exit 1 (CI logs show the tail)."""
    out = _WATCHDOG_OUT[0]
    print(f"\nHANG: {nodeid} still running after {TEST_TIMEOUT_S} s; innermost frames:", file=out)
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident():
            print(f"-- thread {ident}:\n" + "".join(traceback.format_stack(frame)[-12:]), file=out)
    out.flush()
    os._exit(1)


@pytest.fixture(autouse=True)
def _hang_watchdog(request):
    """A test running longer than TEST_TIMEOUT_S is reported and ends the run (see above): a Python
    timer names it and prints the stacks; faulthandler's C thread is the backstop when native code
    holds the GIL."""
    timer = threading.Timer(TEST_TIMEOUT_S, _report_hang, args=(request.node.nodeid,))
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(TEST_TIMEOUT_S + 60, exit=True, file=_WATCHDOG_OUT[0])
    yield
    faulthandler.cancel_dump_traceback_later()
    timer.cancel()
