"""The floor of a SiLU's input range: values its readers cannot tell apart are not spent codes on.

SiLU is exported as a Sigmoid and a Mul reading the same tensor x (Ultralytics YOLO, EfficientNet-B,
many detectors):

    x ──► Sigmoid ──► s ──┐
    └────────────────────► Mul ──► y = x * sigmoid(x)

Below a few units both readers are flat: sigmoid(x) -> 0 and x sigmoid(x) -> 0. A pre-activation
tensor's calibrated range, though, can reach far down (YOLOv8n's second C2f input: [-346, 57]), and an
asymmetric 8-bit grid over it spends 6/7 of its codes on values both readers map to ~0 (step 1.58, where
[-8, 57] would give 0.26). Clipping x at t changes the readers' outputs by less than half their own
quantization steps (d_s, d_y from the calibrated ranges of s and y, 255 steps) when

    sigmoid(t) <= d_s / 2          t_s = logit(d_s / 2)
    |t sigmoid(t)| <= d_y / 2      t_y on the branch t < -1.28 where |x sigmoid(x)| falls as x falls
                                   (so every x < t moves y by at most |t sigmoid(t)|)
    t = min(t_s, t_y),   lo_x = max(lo_x, t)

so after the readers' own output quantization the clip is invisible (up to rounding ties). Only x
whose readers are exactly that Sigmoid and that Mul, and whose encoding class is x alone, moves; the top
is kept. No forward pass; the report lists the floors (`silu_floor`).
"""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range

STEPS = 255
KNEE = -1.2785     # argmin of x sigmoid(x): |x sigmoid(x)| falls as x falls below it


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def floor_for(d_s: float, d_y: float) -> float:
    """t = min(t_s, t_y) of the module docstring (a negative number)."""
    half_s = min(max(d_s / 2, 1e-12), 0.25)
    t_s = math.log(half_s / (1 - half_s))
    lo, hi = -200.0, KNEE                          # bisection on the falling branch: |t sigmoid(t)| = d_y / 2
    if abs(hi * _sigmoid(hi)) <= d_y / 2:
        return min(t_s, hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if abs(mid * _sigmoid(mid)) <= d_y / 2 else (lo, mid)
    return min(t_s, lo)


def silu_pairs(graph: gs.Graph) -> list[tuple[str, str, str]]:
    """(x, s, y) of every SiLU spelled Sigmoid(x) -> s, Mul(x, s) -> y whose x has no other reader."""
    out = []
    for node in graph.nodes:
        if node.op != "Sigmoid" or not node.inputs or not node.outputs:
            continue
        x, s = node.inputs[0], node.outputs[0]
        muls = [m for m in s.outputs if m.op == "Mul" and {t.name for t in m.inputs} == {x.name, s.name}]
        if len(muls) != 1 or len(s.outputs) != 1 or len(x.outputs) != 2 or x in graph.outputs:
            continue
        out.append((x.name, s.name, muls[0].outputs[0].name))
    return out


class SiluRangeFloor(Pass):
    """Analysis: raise the bottom of each SiLU input's range to where its readers are flat."""

    name = "SiluRangeFloor"

    def run(self, state: CompileState) -> PassResult:
        spec, ranges, moved = state.spec, state.ranges, {}
        classes: dict[str, int] = {}
        for t in spec.act_tensors:
            classes[spec.encoding_of[t]] = classes.get(spec.encoding_of[t], 0) + 1
        for x, s, y in silu_pairs(state.graph):
            if not all(t in ranges for t in (x, s, y)) or classes.get(spec.encoding_of.get(x, ""), 0) != 1:
                continue
            if spec.encoding_of[x] != x:
                continue
            d_s = (ranges[s].hi - ranges[s].lo) / STEPS
            d_y = (ranges[y].hi - ranges[y].lo) / STEPS
            t = floor_for(d_s, d_y)
            if ranges[x].lo < t:
                moved[x] = [ranges[x].lo, t]
                ranges[x] = Range(t, ranges[x].hi, ranges[x].source + "+silu_floor")
        if moved:
            state.report.notes["silu_floor"] = {k: [round(a, 4) for a in v] for k, v in moved.items()}
        return PassResult(False, f"{len(moved)} SiLU input floors raised")
