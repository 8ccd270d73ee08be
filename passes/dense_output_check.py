"""A warning when a dense output's synthetic range is far below what its own last layer gives.

A graph output that is a raw convolution map -- the output of a Conv with constant weights, through
Transpose / Identity only (CRAFT's region / affinity scores: conv_cls.8, then a permute to [N, H, W, 2]),
not a pooled classifier (a Reshape / Flatten after a [N, K, 1, 1] conv) -- is read by thresholds
outside the graph, and nothing in the compile sees them. When the synthetic samples do not fire its
head, the compile reports a small output loss and writes a model that detects nothing (CRAFT on the
1/f prior: score span 0.055 where real scenes reach 1.1; BENCHMARKS.md, session 22). The honest check
needs no threshold: the layer's weights say what its output is made for. Per output channel k, the
row norm |W_k| is the output's change for a unit-norm input; the map is flagged when its calibrated span
(hi - lo, on synthetic samples) is below FRACTION x max_k |W_k|:

    CRAFT conv_cls.8 (2 x 16 x 1 x 1): row norms 1.09, 1.11; span on the 1/f prior 0.055 (5 %: flagged),
    on real scenes 1.10 (99 %), on the prior with line-drawing pages (synth/pages.py) 1.06 (96 %).

One warning line per flagged output (naming it, its layer, the two numbers, and `--calib`), and the
report's `dense_output_range` note. Analysis only: no range moves.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState

log = logging.getLogger(__name__)

FRACTION = 0.1
LAYOUT = ("Transpose", "Identity")


def raw_conv_maps(graph: gs.Graph) -> list[tuple[str, gs.Node]]:
    """(graph output, the Conv that writes it through layout ops only) for every raw conv map output."""
    found = []
    for out in graph.outputs:
        t = out
        while len(t.inputs) == 1 and t.inputs[0].op in LAYOUT:
            t = t.inputs[0].inputs[0]
        node = t.inputs[0] if len(t.inputs) == 1 else None
        if (node is None or node.op != "Conv" or len(node.inputs) < 2
                or not isinstance(node.inputs[1], gs.Constant) or node.inputs[1].values.ndim != 4):
            continue
        shape = node.outputs[0].shape
        cells = shape[2:] if shape is not None and len(shape) == 4 else None
        if cells and all(isinstance(d, (int, np.integer)) for d in cells) and int(np.prod(cells)) == 1:
            continue                           # a [N, K, 1, 1] classifier conv
        found.append((out.name, node))
    return found


class DenseOutputRange(Pass):
    """Analysis: warn when a raw conv map output's synthetic range is far below its weights' scale."""

    name = "DenseOutputRange"

    def run(self, state: CompileState) -> PassResult:
        flagged = {}
        for out, conv in raw_conv_maps(state.graph):
            r = state.ranges.get(conv.outputs[0].name)
            if r is None or not r.source.startswith("synthetic") or not np.isfinite(r.hi - r.lo):
                continue
            w = conv.inputs[1].values
            scale = float(np.sqrt((w.astype(np.float64) ** 2).reshape(len(w), -1).sum(axis=1)).max())
            span = float(r.hi - r.lo)
            if span < FRACTION * scale:
                flagged[out] = {"layer": conv.name, "range": [round(r.lo, 6), round(r.hi, 6)],
                                "span": round(span, 6), "weight_row_norm": round(scale, 6)}
                log.warning("output %s: its synthetic range [%.4g, %.4g] spans %.3g, %.0f %% of what its "
                            "last layer %s gives a unit-norm input (weight row norm %.3g): the synthetic "
                            "samples may not fire this head, and the quantized map may miss what it detects; "
                            "calibrate on real inputs (--calib FILE.npz) and check its task", out, r.lo, r.hi,
                            span, 100 * span / scale, conv.name, scale)
        if flagged:
            state.report.notes["dense_output_range"] = flagged
        return PassResult(False, f"{len(flagged)} dense output{'s' if len(flagged) != 1 else ''} far below "
                                 f"their weights' scale")
