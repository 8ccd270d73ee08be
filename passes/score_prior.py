"""The top of a classifier's score range from the BN-statistics prior, when calibrating on synthetic samples.

A classifier's scores (a graph output [N, K], K > 1, and the tensors it is computed from by Softmax,
LogSoftmax, Sigmoid or reshaping) are ranked, not averaged. Quantization maps every score above the
range's top to the same value, so an input whose two best scores both exceed it gets its class from
the clipping (the lowest class index wins), not from the model. Real inputs are class-like: one of
the K scores of a sample stands far above the other K - 1. Synthetic samples are not, so their top
scores stay low (about 0.6 of the real ones on EfficientNet-Lite0, 0.5 on ResNet-20; BENCHMARKS.md,
issues 3 and 13), while the bottom of the range, which K - 1 scores of every sample populate, is
measured as well as on real data.

Rule, for each score tensor whose range came from synthetic samples and that the BN statistics reach
(`core.moment_propagation.estimate`, at most MAX_UNANCHORED linear layers without BN since the last anchor):

    hi = max(hi_measured, max_c (mu_c + k sigma_c)),      lo = lo_measured

with mu_c, sigma_c the propagated moments of score c and k the activation bit-width's Laplace clipping
threshold (the `AnalyticRanges` rule: 6.99 at 8 bits). Only the top moves: clipping below the top
cannot change the argmax, and widening the bottom would only coarsen the step. The cost is a step
larger by (hi - hi_measured) / (2^bits - 1); nothing is measured, no forward pass.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.moment_propagation import MAX_UNANCHORED, estimate
from dfq_onnx.core.moments import laplace_clip_k
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range

SCORE_OPS = ("Softmax", "LogSoftmax", "Sigmoid", "Identity", "Reshape", "Flatten", "Squeeze")


def _is_scores(t: gs.Tensor) -> bool:
    shape = t.shape
    return shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1


def score_tensors(graph: gs.Graph) -> list[str]:
    """Graph outputs [N, K > 1] and the tensors they are computed from through SCORE_OPS alone."""
    names: list[str] = []
    for out in graph.outputs:
        t = out
        if not _is_scores(out):
            continue
        while t is not None and t.name not in names:
            names.append(t.name)
            node = t.inputs[0] if t.inputs else None
            t = node.inputs[0] if node is not None and node.op in SCORE_OPS and node.inputs else None
    return names


class ScoreTopPrior(Pass):
    """Analysis: raise the top of classifier score ranges measured on synthetic samples to the BN prior."""

    name = "ScoreTopPrior"

    def run(self, state: CompileState) -> PassResult:
        targets = [t for t in score_tensors(state.graph)
                   if t in state.ranges and state.ranges[t].source.startswith("synthetic")]
        if not targets:
            return PassResult(False, "no classifier score range from synthetic samples")
        k = laplace_clip_k(state.options.act_bits or state.target.default_act_bits)
        est, depth = estimate(state)
        notes = {}
        for name in targets:
            e, r = est.get(name), state.ranges[name]
            if e is None or depth.get(name, 0) > MAX_UNANCHORED or not np.all(np.isfinite(e.sigma)):
                notes[name] = "skipped: the BN statistics do not reach it"
                continue
            prior = e.range(k)[1]
            if prior > r.hi:
                state.ranges[name] = Range(r.lo, prior, f"{r.source}+bn-top")
            notes[name] = {"measured": [r.lo, r.hi], "prior_top": prior, "top": max(prior, r.hi)}
        state.report.notes["score_top_prior"] = notes
        raised = sum(1 for v in notes.values() if isinstance(v, dict) and v["prior_top"] > v["measured"][1])
        return PassResult(False, f"{raised}/{len(targets)} score ranges raised to the BN prior's top")
