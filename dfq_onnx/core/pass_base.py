"""Pass contract and the sequential runner.

A pass is a small object with one job: `run(state) -> PassResult`. Transform passes edit
`state.graph`; analysis passes leave typed results on the state and report `modified=False`.
The runner logs one line per pass with its wall time and peak resident memory (`core.rss`), records
both in the report, and wraps any failure with the pass name and the passes that ran before it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from dfq_onnx.core.errors import DfqError, PassError
from dfq_onnx.core.rss import PeakMeter
from dfq_onnx.core.state import CompileState

log = logging.getLogger("dfq_onnx")


@dataclass(frozen=True)
class PassResult:
    modified: bool
    summary: str = ""


class Pass:
    """Base class: subclasses implement `run` and give a one-line docstring."""

    name: str = ""

    def run(self, state: CompileState) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, state: CompileState) -> None:
        """Usage checks that need only the graph and its quantizer groups (no ORT run); `CheckUsage`
        runs them for every later pass before any of those runs. Raise a DfqError naming the option."""

    def __repr__(self) -> str:
        return self.name or type(self).__name__


def run_passes(passes: Sequence[Pass], state: CompileState) -> CompileState:
    done: list[str] = []
    for p in passes:
        name = repr(p)
        start = time.perf_counter()
        before = state.forward_passes
        try:
            with PeakMeter() as meter:
                result = p.run(state)
        except DfqError as exc:
            if isinstance(exc, PassError):
                raise
            raise PassError(f"{name}: {exc}", exc) from exc
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            after = f" (after {', '.join(done)})" if done else ""
            first = (str(exc).strip().splitlines() or [""])[0]     # one line; --debug has the rest
            raise PassError(f"{name} failed{after}: {type(exc).__name__}: {first}", exc) from exc
        seconds = time.perf_counter() - start
        entry = {"pass": name, "modified": result.modified, "seconds": round(seconds, 4),
                 "forward_passes": state.forward_passes - before, "summary": result.summary}
        peak = f"{meter.peak / 2**30:5.2f} GB" if meter.peak else "    - GB"
        if meter.peak:
            entry["peak_rss_mb"] = round(meter.peak / 2**20)
        state.report.passes.append(entry)
        log.info("%-18s %7.2fs %s  %s", name, seconds, peak, result.summary)
        done.append(name)
    state.report.forward_passes = state.forward_passes
    return state
