"""Loss at the output of whole quantized models that differ only in their activation ranges.

For candidate range sets R_1, R_2, ... of one quantization spec, each candidate is the fixed model (every
weight at the default bits, every quantized activation at the default bits with ranges R_i: the probe of
`build_probe(..., fixed_weight_bits=w)` without switches), run once over the scoring rows. The FP32
reference outputs and the metric (`resolve_metrics`) are computed once for all candidates:

    L(R) = [ sum_o loss_o(FP32_o, Q_R,o) over all rows, over the even rows, over the odd rows,
             over each of the caller's row subsets S_1, S_2, ... ]

the same loss and halves as `Evaluator.loss` (the sensitivity terms' shrinkage reads the halves); the
subsets let a caller see the loss per population of rows (e.g. the line drawings and their twins).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.runtime import run_batched
from dfq_onnx.core import ir
from dfq_onnx.core.state import QuantSpec, Range
from dfq_onnx.sensitivity.losses import all_stats, total_loss
from dfq_onnx.sensitivity.probe import build_probe, session
from dfq_onnx.sensitivity.table import resolve_metrics


class RangeScorer:
    """`loss(ranges)`: L(R) of the module docstring on `samples`, in calls of `batch` rows."""

    def __init__(self, graph: gs.Graph, spec: QuantSpec, target, samples: Mapping[str, np.ndarray],
                 metric: str, batch: int | None = None, producers: dict | None = None,
                 subsets: Sequence[np.ndarray] = ()):
        self.graph, self.spec, self.target, self.samples = graph, spec, target, dict(samples)
        self.n = len(next(iter(self.samples.values())))
        self.batch = batch or self.n
        self.forward_passes = 0
        fp32 = ir.session_model(ir.copy_graph(graph), ir_version=ir.min_ir_version(graph.opset))
        self.reference = self._forward(fp32)
        names = [o.name for o in fp32.graph.output]
        self.kinds = resolve_metrics(metric, self.reference, None, names, producers)
        self.rows = (None, np.arange(0, self.n, 2), np.arange(1, self.n, 2), *subsets)

    def _forward(self, model) -> list[np.ndarray]:
        self.forward_passes += -(-self.n // self.batch)
        return run_batched(session(model), self.samples, self.batch)

    def model(self, ranges: Mapping[str, Range]):
        """The fixed quantized model with activation ranges `ranges`."""
        w, a = self.target.default_weight_bits, self.target.default_act_bits
        return build_probe(self.graph, self.spec, [], ranges, self.target, (), a, fixed_weight_bits=w).model

    def loss(self, ranges: Mapping[str, Range]) -> np.ndarray:
        outs = self._forward(self.model(ranges))
        stats = all_stats(self.kinds, self.reference, outs)
        return np.array([total_loss(self.kinds, stats, r) for r in self.rows])
