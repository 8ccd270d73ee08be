"""An inferred input range's encoding covers the pick's offset twin too.

Without BN statistics, an image input's range is read off the model's first layer
(`synth/input_range.py`). That reading tells the input's scale but not its offset: [0, 1] and [-1, 1]
sit 0.3 decades apart in its score (the size of the prior it cannot remove), [0, 255] and
mean-subtracted 0..255 not at all. The samples take the pick; the input's own quantizer, though, is
where a wrong sign is lost for good -- a [-1, 1] input read as [0, 1] has every negative pixel clipped
to 0 before the first layer (MTCNN R/O-Net: 15-35 % of FP32's face windows kept). So the input's
encoding spans the hull of the pick and its twin (`input_range.encoding_hull`):

    input ──► Transpose / Reshape / Slice ... ──Q──DQ──► Conv        lo, hi = min(lo, -1), max(hi, 1)
                                              (the hull, e.g. [-1, 1] for an inferred [0, 1])

applied to the quantized tensors that carry the input's values unchanged (the input, and what layout
ops make of it: tf2onnx's channels-last Transpose). A right one-signed pick pays one bit of input
resolution ([0, 255]: 0.6 bit); everything after the first layer keeps the samples' ranges. A range
given by `--input-range` or read from an in-graph standardizing prefix is not inferred and never
widened. No forward pass; the report lists what moved (`inferred_input_hull`).

An input whose in-graph prefix y = a x + b cannot standardize the pixel range R its scale implies is
drawn in R (`synth/preprocess.py`); the encoding of the prefix's output (and of what layout ops make of
it) then spans the prefix's image of all of R, [min_c (a_c R + b_c), max_c (a_c R + b_c)]: the samples'
extremes stop short of R's ends (tanh-squashed draws: ~[10, 243] of [0, 255]) where real images sit
most (a captcha's white background at 255: 87.6 -> 92.6 % agreement with FP32 with the full span).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import LAYOUT_OPS, walk
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range
from dfq_onnx.synth.input_range import encoding_hull
from dfq_onnx.synth.preprocess import affine_prefix

LAYOUT = LAYOUT_OPS | {"Slice", "Split"}     # and parts of the input's values, unchanged


def carriers(graph: gs.Graph, name: str) -> list[str]:
    """The input `name` and every tensor layout ops make of it (its values, moved)."""
    tensors = graph.tensors()
    if name not in tensors:
        return []

    def moves(node: gs.Node, cur: gs.Tensor) -> bool:
        return node.op in LAYOUT and bool(node.inputs) and node.inputs[0] is cur
    return [name] + [o.name for node, cur in walk(tensors[name], moves) if moves(node, cur)
                     for o in node.outputs]


def prefix_hulls(state: CompileState) -> dict[str, tuple[float, float, str]]:
    """{input: (lo, hi, end)}: the prefix's image of the pixel range each drawn input was sampled in."""
    out = {}
    inputs = {t.name: t for t in state.graph.inputs}
    for name, (lo, hi) in sorted((getattr(state.synthetic, "pixel_drawn", None) or {}).items()):
        t = inputs.get(name)
        p = affine_prefix(state.graph, t, tuple(t.shape[1:])) if t is not None and t.shape else None
        if p is not None:
            ends = [p.a * lo + p.b, p.a * hi + p.b]
            out[name] = (float(min(e.min() for e in ends)), float(max(e.max() for e in ends)), p.end)
    return out


def _widen(state: CompileState, tensors: list[str], hull: tuple[float, float], tag: str) -> dict:
    """Widen the quantized `tensors`' ranges to `hull`; {tensor: (old, new)} of those that moved."""
    quantized, moved = set(state.spec.act_tensors) if state.spec else set(), {}
    for t in tensors:
        old = state.ranges.get(t)
        if t not in quantized or old is None or (old.lo <= hull[0] and old.hi >= hull[1]):
            continue
        state.ranges[t] = Range(min(old.lo, hull[0]), max(old.hi, hull[1]), f"{old.source}+{tag}")
        moved[t] = ([round(old.lo, 4), round(old.hi, 4)], [state.ranges[t].lo, state.ranges[t].hi])
    return moved


class CoverInferredInput(Pass):
    """Analysis: widen an inferred input range's encoding to the hull of the pick and its offset twin."""

    name = "CoverInferredInput"

    def run(self, state: CompileState) -> PassResult:
        inferred = getattr(state.synthetic, "inferred", None) or {}
        moved = {}
        for name, r in sorted(inferred.items()):
            hull = encoding_hull(r)
            if hull is None:
                continue
            for t, (old, new) in _widen(state, carriers(state.graph, name), hull, "inferred_hull").items():
                moved[t] = {"input": name, "inferred": r.convention, "to": new, "from": old}
        for name, (lo, hi, end) in prefix_hulls(state).items():
            for t, (old, new) in _widen(state, carriers(state.graph, end), (lo, hi), "pixel_hull").items():
                moved[t] = {"input": name, "drawn_in": list(state.synthetic.pixel_drawn[name]), "to": new,
                            "from": old}
        if moved:
            state.report.notes["inferred_input_hull"] = moved
        return PassResult(False, f"{len(moved)} input encodings widened to the inferred range's offset twin "
                                 "or the pixel range's image")
