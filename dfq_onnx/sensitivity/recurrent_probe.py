"""Whole-model variants for scoring recurrent forms at the output (passes/choose_recurrent.py).

The integer LSTM's activation grids are the kernel's own (DynamicQuantizeLSTM quantizes X per call and h
at every step): no float simulation reproduces the per-step rounding, so a configuration runs the real
kernel. Each configuration is a copy of the FP32 graph that `variant(config)` edits (the named LSTMs in
their form, or every weight on its plan grid), exported and run in its own session; the Evaluator runs
one configuration over every batch before the next, so one session is alive at a time:

    config {}                   the FP32 graph (the Evaluator's reference and base)
    config {"lstm1": "dyn"}     lstm1 ─► DynamicQuantizeLSTM, everything else FP32
    config {WEIGHTS: "plan"}    every weight on the grid its plan form stores, activations float

It answers the Evaluator's `run_batch(config, feeds, key)` as the segmented probe does.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Mapping

import onnx_graphsurgeon as gs

from dfq_onnx.backends.runtime import session
from dfq_onnx.core import ir

WEIGHTS = "__weights__"     # the configuration key of the all-weights reference


class RecurrentProbe:
    """Sessions over `variant(config)` graphs, one configuration at a time (module docstring)."""

    def __init__(self, graph: gs.Graph, variant: Callable[[Mapping[str, object]], gs.Graph]):
        self._graph, self._variant = graph, variant
        self._key: frozenset | None = None
        self._session = None
        self.sessions = 0
        self.probe = SimpleNamespace(model=self._export(graph), dither={})

    def _export(self, graph: gs.Graph):
        return ir.session_model(graph, ir_version=ir.min_ir_version(graph.opset))

    def run_batch(self, config: Mapping[str, object], feeds: dict, key=None) -> list:
        k = frozenset((g, v) for g, v in config.items() if v is not None)
        if k != self._key:
            self._session = None
            graph = self._variant(dict(k)) if k else self._graph
            self._session, self._key = session(self._export(graph)), k
            self.sessions += 1
        return self._session.run(None, feeds)

    def close(self) -> None:
        self._session, self._key = None, None
