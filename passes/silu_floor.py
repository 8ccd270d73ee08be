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
        ranges, moved = state.ranges, {}
        for x, s, y in silu_pairs(state.graph):
            if not all(t in ranges for t in (x, s, y)):
                continue
            d_s = (ranges[s].hi - ranges[s].lo) / STEPS
            d_y = (ranges[y].hi - ranges[y].lo) / STEPS
            step = raise_floor(state, x, floor_for(d_s, d_y), "silu_floor")
            if step is not None:
                moved[x] = step
        if moved:
            state.report.notes["silu_floor"] = moved
        return PassResult(False, f"{len(moved)} SiLU input floors raised")


def raise_floor(state: CompileState, x: str, t: float, tag: str) -> list[float] | None:
    """Raise the bottom of x's range to t when x is quantized in an encoding class of its own and its
    range reaches below t; returns [old bottom, t] (rounded, for the report) or None."""
    spec, ranges = state.spec, state.ranges
    if x not in ranges or spec.encoding_of.get(x) != x or ranges[x].lo >= t:
        return None
    if sum(1 for m in spec.act_tensors if spec.encoding_of[m] == x) != 1:
        return None
    old = ranges[x]
    ranges[x] = Range(t, old.hi, f"{old.source}+{tag}")
    return [round(old.lo, 4), round(t, 4)]
