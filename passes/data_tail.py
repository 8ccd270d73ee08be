"""Set aside a model's data-dependent tail (NMS and the like) for the compile, and put it back after Emit.

The math-free part of the compile: `dfq_onnx.core.tail` says what the tail is and why. `DetachTail` runs
right after Normalize, so synthesis, calibration, the activation decision and sensitivity all see the
head, whose outputs are the tensors the tail reads (e.g. a detector's boxes and scores before NMS);
`AttachTail` runs after EmitQDQ and restores the source's outputs: the written model computes the same
post-processing in float on the quantized head's outputs. Models without such ops are untouched.
"""

from __future__ import annotations

import logging

from dfq_onnx.core import tail
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState

log = logging.getLogger(__name__)


class DetachTail(Pass):
    """Compile the head only when the outputs come after value-dependent-size ops (NMS, NonZero, ...)."""

    name = "DetachTail"

    def run(self, state: CompileState) -> PassResult:
        found, why = tail.split(state.graph)
        state.batch_first = tail.batch_first(state.graph, state.output_batch_axes)   # core/tail.py
        moved = [m.output for m in state.batch_first]
        if moved:
            state.report.notes["batch_first_outputs"] = moved
        also = f"; {', '.join(moved)} read batch-first" if moved else ""
        if found is None:
            if why:
                state.report.skip("data-dependent tail", why)
                log.warning("%s", why)
            return PassResult(bool(moved), (why or "no data-dependent outputs") + also)
        state.tail = found
        state.report.notes["data_tail"] = {"nodes": len(found.nodes), "scored_at": found.cut}
        return PassResult(True, f"{why}; scored at {', '.join(found.cut)}{also}")


class AttachTail(Pass):
    """Put the data-dependent tail set aside by DetachTail back on the emitted graph."""

    name = "AttachTail"

    def run(self, state: CompileState) -> PassResult:
        tail.restore_batch_axes(state.graph, state.batch_first)
        moved, state.batch_first = len(state.batch_first), []
        if state.tail is None:
            return PassResult(bool(moved), f"{moved} batch axes restored" if moved else "nothing set aside")
        tail.attach(state.graph, state.tail)
        n, state.tail = len(state.tail.nodes), None
        return PassResult(True, f"{n} tail nodes restored (float)")
