"""Random small graphs for property tests: a recipe (a list of op names) and a seed make one model.

    input [N, C, H, W] -> op_1 -> ... -> op_k (each reading one or two earlier tensors) [-> head]

Ops: conv (1x1 or 3x3, optional bias, optional groups), bn, relu, clip, add, concat, maxpool,
avgpool, reshape (to [N, C, H*W, 1] or back), gemm (a head: GlobalAveragePool -> Flatten -> Gemm,
then the graph ends). Operands are drawn by the seed among the tensors made so far; an op with no
valid operand (add without a same-shape partner, pool on a 1x1 map) falls back to relu, so every
recipe gives a valid model. Shapes are tracked here, so no shape inference or ORT run is needed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPS = ("conv", "bn", "relu", "clip", "add", "concat", "maxpool", "avgpool", "reshape", "gemm")


class _Builder:
    def __init__(self, seed: int, c: int, hw: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": (c, hw, hw)}   # per-sample shapes
        self.order = ["input"]

    def const(self, name: str, values: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        name = f"{op.lower()}{len(self.nodes)}"
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.shapes[out] = shape
        self.order.append(out)
        return out

    def pick(self, ok=lambda s: True) -> str | None:
        cands = [t for t in self.order if ok(self.shapes[t])]
        if not cands:
            return None
        recent = cands[-3:]    # prefer recent tensors: deeper graphs, fewer dangling branches
        return recent[int(self.rng.integers(len(recent)))]

    def conv(self, x: str) -> str:
        c, h, w = self.shapes[x]
        k = int(self.rng.choice([1, 3]))
        group = c if c > 1 and self.rng.random() < 0.2 else 1
        c_out = c if group > 1 else int(self.rng.integers(1, 7))
        std = np.sqrt(2.0 / (c // group * k * k))
        wts = (self.rng.standard_normal((c_out, c // group, k, k)) * std).astype(np.float32)
        ins = [x, self.const(f"w{len(self.nodes)}", wts)]
        if self.rng.random() < 0.5:
            ins.append(self.const(f"b{len(self.nodes)}", self.rng.normal(0, 0.1, c_out).astype(np.float32)))
        pad = k // 2
        return self.node("Conv", ins, (c_out, h, w), pads=[pad] * 4, kernel_shape=[k, k], group=group)

    def bn(self, x: str) -> str:
        c = self.shapes[x][0]
        i = len(self.nodes)
        vals = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.3, c), self.rng.normal(0, 0.3, c),
                self.rng.uniform(0.5, 2.0, c)]
        ins = [self.const(f"bn{i}.{p}", v.astype(np.float32)) for p, v in zip(("g", "b", "m", "v"), vals)]
        return self.node("BatchNormalization", [x, *ins], self.shapes[x], epsilon=1e-5)

    def apply(self, op: str) -> bool:
        """Add `op`; returns False when the graph is finished (a gemm head)."""
        four_d = lambda s: len(s) == 3   # noqa: E731 - per-sample rank 3 is [C, H, W]
        x = self.pick(four_d)
        if op == "conv":
            self.conv(x)
        elif op == "bn":
            self.bn(x)
        elif op == "clip":
            lo, hi = (0.0, 6.0) if self.rng.random() < 0.5 else (-1.0, 1.0)
            self.node("Clip", [x, self.const(f"lo{len(self.nodes)}", np.array(lo, np.float32)),
                               self.const(f"hi{len(self.nodes)}", np.array(hi, np.float32))], self.shapes[x])
        elif op == "add":
            ys = [t for t in self.order if self.shapes[t] == self.shapes[x] and t != x]
            if not ys:
                return self._relu(x)
            y = ys[int(self.rng.integers(len(ys)))]
            self.node("Add", [x, y], self.shapes[x])
        elif op == "concat":
            hw = self.shapes[x][1:]
            ys = [t for t in self.order if four_d(self.shapes[t]) and self.shapes[t][1:] == hw]
            y = ys[int(self.rng.integers(len(ys)))]
            c = self.shapes[x][0] + self.shapes[y][0]
            self.node("Concat", [x, y], (c, *self.shapes[x][1:]), axis=1)
        elif op in ("maxpool", "avgpool"):
            c, h, w = self.shapes[x]
            if h < 2 or w < 2:
                return self._relu(x)
            kind = "MaxPool" if op == "maxpool" else "AveragePool"
            self.node(kind, [x], (c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
        elif op == "reshape":
            c, h, w = self.shapes[x]
            a = max(d for d in range(1, int(np.sqrt(h)) + 1) if h % d == 0)
            shape = (c, h * w, 1) if w > 1 else (c, a, h // a)
            target = self.const(f"shape{len(self.nodes)}", np.array([0, *shape], np.int64))
            self.node("Reshape", [x, target], shape)
        elif op == "gemm":
            self.head(x)
            return False
        else:
            self._relu(x)
        return True

    def _relu(self, x: str) -> bool:
        self.node("Relu", [x], self.shapes[x])
        return True

    def head(self, x: str) -> None:
        c = self.shapes[x][0]
        pooled = self.node("GlobalAveragePool", [x], (c, 1, 1))
        flat = self.node("Flatten", [pooled], (c,), axis=1)
        n = int(self.rng.integers(2, 9))
        w = (self.rng.standard_normal((n, c)) * np.sqrt(2.0 / c)).astype(np.float32)
        i = len(self.nodes)
        self.node("Gemm", [flat, self.const(f"fc{i}.w", w),
                           self.const(f"fc{i}.b", self.rng.normal(0, 0.1, n).astype(np.float32))], (n,),
                  transB=1)


def random_model(ops: list[str] | tuple[str, ...], seed: int = 0, c: int = 3, hw: int = 6) -> onnx.ModelProto:
    """The model of recipe `ops` (see module docstring); opset 17, batch dimension 'N'."""
    b = _Builder(seed, c, hw)
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown op '{op}' (known: {', '.join(OPS)})")
        if not b.apply(op):
            break
    out = b.order[-1]
    if out == "input":
        out = b.node("Relu", ["input"], b.shapes["input"])
    b.nodes[-1].output[0] = "output"   # the last node made `out`: no node reads it yet
    shape = b.shapes.pop(out)
    graph = helper.make_graph(b.nodes, "random", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["N", c, hw, hw])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *shape])],
                              initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="dfq-onnx-tests")
    model.ir_version = 8
    return model
