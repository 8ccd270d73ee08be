"""Give the written model the source's interface back: float16 graph inputs / outputs
(dfq_onnx/core/float16.py), inputs batched on axis 1 (dfq_onnx/core/batch_axis.py) and the interface of a
model with no batch axis (dfq_onnx/core/unbatched.py)."""

from __future__ import annotations

from dfq_onnx.core import batch_axis, float16, unbatched
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


class RestoreInterface(Pass):
    """Cast at the float16 inputs / outputs of a float16 source, which Normalize compiled in float32;
    the Transpose before an input compiled batch-major removed, the batch axis of one given to a model
    without one taken away."""

    name = "RestoreInterface"

    def run(self, state: CompileState) -> PassResult:
        moved = batch_axis.restore_layout(state.graph, state.batch_axis1) if state.batch_axis1 else 0
        said = f"; {moved} inputs batched on axis 1 again" if moved else ""
        if state.unbatched:
            moved += unbatched.restore(state.graph)
            said += "; the batch axis of one taken off the inputs and outputs again"
        if not state.low_precision_io:
            return PassResult(bool(moved), f"float32 interface{said}")
        n = float16.restore_interface(state.graph, state.low_precision_io)
        state.report.notes["float16_interface"] = sorted(state.low_precision_io)
        return PassResult(True, f"{n} float16 inputs / outputs restored with a Cast each{said}")
