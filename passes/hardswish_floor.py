"""The floor of a hard-swish's input range: below it every reader's output is exactly 0.

Hard-swish and its relatives, as exporters write them (PaddlePaddle's PP-OCR / PP-LCNet, MobileNetV3):

    x ──► Add(c) ──► Clip(0, M) | Relu ──► u ──┐
    └──────────────────────────────────────────► Mul(x, u) ──► y        y = 0 for x <= -c
    x ──► HardSigmoid(alpha, beta) ──► u ──► Mul(x, u)                  y = 0 for x <= -beta / alpha
    x ──► HardSwish                                                     y = 0 for x <= -3

(c > 0, alpha > 0). Clipping x at t = -c (-beta / alpha, -3) changes no reader's output at all: the Add
then gives at most 0, the Clip / Relu / HardSigmoid 0, the Mul 0. A pre-activation tensor's calibrated
range, though, reaches far below (PP-OCRv4 rec's first stage: [-34.8, 37.9] where the readers only tell
[-3, 37.9] apart), and an asymmetric 8-bit grid over it spends up to half its codes on values the
readers map to 0. So lo_x = max(lo_x, t): exact, no forward pass, any model. Only x whose readers are
exactly those nodes, and whose encoding class is x alone, moves; the top is kept. The report lists the
floors (`hardswish_floor`). SiluRangeFloor (passes/silu_floor.py) does the same where the readers are
flat only up to half a quantization step.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from dfq_onnx.passes.silu_floor import raise_floor

from dfq_onnx.core.graph_utils import const_values, is_const, scalar_value
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


def _zero_below(node: gs.Node) -> bool:
    """A Relu, or a Clip whose lower bound is the constant 0: 0 for every input <= 0."""
    if node.op == "Relu":
        return True
    if node.op != "Clip":
        return False
    if len(node.inputs) >= 2 and node.inputs[1].name:          # opset >= 11: min is an input
        low = node.inputs[1]
        return is_const(low) and const_values(low).size == 1 and float(const_values(low).reshape(-1)[0]) == 0

    return float(node.attrs.get("min", float("-inf"))) == 0.0


def _only_reader(t: gs.Tensor) -> gs.Node | None:
    return t.outputs[0] if len(t.outputs) == 1 else None


def _gate_floor(x: gs.Tensor, first: gs.Node) -> tuple[float, gs.Node] | None:
    """(t, gate output's Mul) when `first` starts a gate that is 0 for x <= t (module docstring)."""
    if first.op == "HardSigmoid":
        alpha, beta = float(first.attrs.get("alpha", 0.2)), float(first.attrs.get("beta", 0.5))
        gate, t = first, (-beta / alpha if alpha > 0 else None)
    elif first.op == "Add" and len(first.inputs) == 2:
        other = first.inputs[1] if first.inputs[0] is x else first.inputs[0]
        c = scalar_value(other)
        gate = _only_reader(first.outputs[0])
        if c is None or c <= 0 or gate is None or not _zero_below(gate):
            return None
        t = -c
    else:
        return None
    mul = _only_reader(gate.outputs[0]) if t is not None else None
    if mul is None or mul.op != "Mul" or {i.name for i in mul.inputs} != {x.name, gate.outputs[0].name}:
        return None
    return t, mul


def hardswish_floors(graph: gs.Graph) -> list[tuple[str, float]]:
    """(x, t) for every x read only by a hard-swish (module docstring), t the floor."""
    out = []
    for x in graph.tensors().values():
        if isinstance(x, gs.Constant) or any(o is x for o in graph.outputs):
            continue
        readers = list(x.outputs)
        if len(readers) == 1 and readers[0].op == "HardSwish":
            out.append((x.name, -3.0))
            continue
        if len(readers) != 2:
            continue
        for first in readers:
            found = _gate_floor(x, first)
            if found is not None and any(r is found[1] for r in readers if r is not first):
                out.append((x.name, found[0]))
                break
    return sorted(out)


class HardSwishRangeFloor(Pass):
    """Analysis: raise the bottom of each hard-swish input's range to where its readers give 0."""

    name = "HardSwishRangeFloor"

    def run(self, state: CompileState) -> PassResult:
        moved = {x: m for x, t in hardswish_floors(state.graph)
                 if (m := raise_floor(state, x, t, "hardswish_floor")) is not None}
        if moved:
            state.report.notes["hardswish_floor"] = moved
        return PassResult(False, f"{len(moved)} hard-swish input floors raised")
