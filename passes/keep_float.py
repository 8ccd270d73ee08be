"""Keep the model float where its integer form does not pay on the target (a measured latency table).

`dfq-onnx profile-target TARGET MODEL` times the whole model in FP32 and at the target's default pair
(and each quantizer group), in interleaved rounds, on the machine that will run it. Given that table
(`--latency-table`) a uniform compile checks

    model_ms(default pair) < fp32_ms        (the integer form pays at the table's batch)

and when it does not (a small model of depthwise convolutions and elementwise ops, whose integer
kernels and Q/DQ pairs cost more than the float kernels they replace), every quantizer group stays
float: the output is the normalized FP32 graph, with the measured figures and the reason in the
report's notes. The decision is a function of the table, so the compile stays deterministic; the
table must be of this model and target. Mixed-precision budgets leave the choice to the allocator.
"""

from __future__ import annotations

import logging

from dfq_onnx.backends.latency import LatencyTable
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, QuantSpec

log = logging.getLogger(__name__)


class KeepFloat(Pass):
    """Drop every quantizer when the latency table says the integer model is slower than FP32."""

    name = "KeepFloat"

    def __init__(self, latency_table: str):
        self.path = latency_table

    def run(self, state: CompileState) -> PassResult:
        table = LatencyTable.load(self.path)
        if table.target != state.target.name:
            raise UsageError(f"--latency-table {self.path} was measured for target '{table.target}', "
                             f"not '{state.target.name}'; run `dfq-onnx profile-target "
                             f"{state.target.name} MODEL`")
        if table.model_sha256 and state.model_hash and table.model_sha256 != state.model_hash:
            raise UsageError(f"--latency-table {self.path} was measured on another model; re-run "
                             "`dfq-onnx profile-target` on this one")
        pays = table.integer_pays()
        note = {"table": str(self.path), "batch": table.batch, "fp32_ms": table.fp32_ms,
                "integer_ms": table.model_ms.get(f"{table.base[0]}x{table.base[1]}"), "integer_pays": pays}
        state.report.notes["keep_float"] = note
        if pays is None or pays:
            return PassResult(False, "integer form pays" if pays else "table has no whole-model timings")
        dropped = len(state.groups)
        state.spec = QuantSpec(layers={}, act_tensors=(), encoding_of={}, absorbed={}, const_inputs=())
        state.groups = []
        state.act_groups = []
        log.warning("the integer model ran slower than FP32 (%.3f vs %.3f ms at batch %d, %s): writing the "
                    "model float", note["integer_ms"], table.fp32_ms, table.batch, self.path)
        return PassResult(False, f"integer form does not pay ({note['integer_ms']:.3f} ms vs FP32 "
                                 f"{table.fp32_ms:.3f} ms at batch {table.batch}): {dropped} groups float")
