"""backends/act_qdq.py: EmitQDQ and the sensitivity probe write the same activation encodings, including
the target's fixed output encodings (Sigmoid on QNN HTP), so the probe scores the model Emit writes."""

from __future__ import annotations

import copy

import numpy as np
from _util import compile_state, initializers, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

from dfq_onnx.core import ir
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan
from dfq_onnx.sensitivity import probe


def _quantizers(model) -> dict[str, tuple[float, int]]:
    inits = initializers(model)
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
            for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_probe_and_emit_share_fixed_output_encodings():
    passes = [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate()]
    state = compile_state(builders.conv_silu(), passes, target="qnn-htp", calib="noise")
    r = state.ranges["sig_out"]
    assert (r.hi - min(r.lo, 0.0)) / 255 != np.float32(1 / 256)    # min/max would give another scale
    pm = probe.build_probe(state.graph, state.spec, [], state.ranges, state.target, (), 8)
    s = copy.copy(state)
    s.graph, s.report = ir.copy_graph(state.graph), Report()
    s.plan = BitPlan({g.id: (8, 8) for g in state.groups})
    EmitQDQ().run(s)
    emitted, probed = _quantizers(state_model(s)), _quantizers(pm.model)
    assert emitted["sig_out"] == (np.float32(1 / 256), emitted["sig_out"][1])
    assert probed["sig_out"] == emitted["sig_out"]
    assert probed == {t: emitted[t] for t in probed}
