"""MeasureInputMoments: E[x_j^2] per input channel of every weighted layer, for weights below 8 bits.

Runs after Calibrate on the same samples (the user's data, the synthetic set, or noise; without views),
in chunks of rows (`calibrate.batches`), the FP32 graph reduced in-graph to mean(x^2) per row and
channel (dfq_onnx/backends/input_moments.py), so memory is one chunk of activations whatever the number
of samples. The moments weigh each channel's clip search of the low-bit weights (core/weight_clip.py:
the diagonal of E[x x^T]); Emit, the sensitivity probe and bias correction all read them from
`state.input_moments`, so the probe's weights stay Emit's. Only compiles that may put weights below
8 bits run it (a budget, or --weight-bits below 8); the default plan's weights do not depend on it.
"""

from __future__ import annotations

import numpy as np
from dfq_onnx.passes.calibrate import batches

from dfq_onnx.backends import input_moments as im
from dfq_onnx.backends import runtime
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


class MeasureInputMoments(Pass):
    """Measure E[x_j^2] of each weighted layer's input on the calibration samples."""

    name = "MeasureInputMoments"

    def run(self, state: CompileState) -> PassResult:
        if state.input_moments:
            return PassResult(False, "already measured")
        if state.calib is None:
            return PassResult(False, "no samples (weights keep unweighted clipping)")
        nodes = {node_label(n): n for n in state.graph.nodes}
        reads = {}
        for name, layer in state.spec.layers.items():
            if layer.role == "weighted" and name in nodes:
                if (t := im.measured_input(nodes[name], layer)) is not None:
                    reads[name] = (t, nodes[name].op in im.CHANNEL_FIRST)
        tensors = dict(reads.values())
        if not tensors:
            return PassResult(False, "no measurable layer inputs")
        sums = self._measure(state, tensors)
        state.input_moments = {name: sums[t][0] / max(1, sums[t][1]) for name, (t, _) in reads.items()}
        bad = [t for t, (s, _) in sums.items() if not np.all(np.isfinite(s))]
        if bad:
            raise UnsupportedModelError(f"tensor '{bad[0]}' is not finite on the calibration data")
        return PassResult(False, f"{len(state.input_moments)} layers' input moments from {len(tensors)} "
                                 "tensors")

    @staticmethod
    def _measure(state: CompileState, tensors: dict[str, bool]) -> dict[str, list]:
        names = list(tensors)
        sess = runtime.session(im.moment_model(state.graph, tensors), mem_pattern=False)
        feeds = state.calib
        sums: dict[str, list] = {}
        for chunk, rows in batches(state, feeds, len(next(iter(feeds.values()))), names):
            chunk = {k: np.asarray(v) for k, v in chunk.items()}
            im.accumulate(sums, sess.run(None, chunk), names, rows, len(next(iter(chunk.values()))))
            state.forward_passes += 1
        return sums
