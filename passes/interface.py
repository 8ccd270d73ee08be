"""Give the written model the source's float16 graph inputs / outputs back (dfq_onnx/core/float16.py)."""

from __future__ import annotations

from dfq_onnx.core import float16
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


class RestoreInterface(Pass):
    """Cast at the float16 inputs / outputs of a float16 source, which Normalize compiled in float32."""

    name = "RestoreInterface"

    def run(self, state: CompileState) -> PassResult:
        if not state.low_precision_io:
            return PassResult(False, "float32 interface")
        n = float16.restore_interface(state.graph, state.low_precision_io)
        state.report.notes["float16_interface"] = sorted(state.low_precision_io)
        return PassResult(True, f"{n} float16 inputs / outputs restored with a Cast each")
