"""In-graph input preprocessing (Keras' Rescaling / Normalization layers, exported scale-and-shift):
synthetic samples are drawn after it and mapped back through it.

The samplers draw what a network's first layers read: standardized images (1/f fields, mean 0 and std
1 per channel; `synth.search`). A model that takes raw pixels and scales them itself -- x -> x / 255
-> (x - mean) / std -> Conv, as tf2onnx exports Keras applications -- would get standardized samples at
its pixel input, ~0 after the scaling: every activation range is then measured on a blank image
(EfficientNet-Lite0 behind such a prefix: 0.2 % top-1; BENCHMARKS.md, session 8).

An input whose only reader starts a chain of elementwise ops with a constant operand -- Mul, Div (by
the constant), Add, Sub (either side) -- is an affine map y = a x + b (a, b: the constants composed,
broadcast over one sample; a != 0 everywhere). Synthesis then runs on a copy of the graph whose input
of that name is y (the chain's readers read it), and the samples are mapped back, x = (y - b) / a, so
the model's own prefix turns them into the samples the network behind it would have been given. An
input with a `--input-range` keeps its samples in that range (the user said what the input reads).
Readers of a chain tensor's shape only (Shape, Size: exporters size a resize or a box decoder from the
image) are not readers of its values; the constants never grow the shape, so in the copy they read y.

An integer input read only through a Cast to float (8- or 16-bit pixels: TF detection exports) is the
same with the Cast first; its samples are rounded and clipped to the type, and when nothing scales it
after the Cast they are drawn in the type's range (as `--input-range` would). Token ids are integer
inputs that index a table (synth/tokens.py), not these.

A prefix is a standardization only if it can make standardized values out of pixels. Its raw input's
pixel range R is the integer type's for a Cast prefix, else the pixel convention its scale implies: of
[0, 1] and [0, 255] (255x apart) the one whose image width |a| (hi - lo) is nearest (in log) to the
standardized samples' 2 * BOUND = 5, none when both are over 16x away. On each channel the image of R
is [lo_c, hi_c]; values with mean 0 and std 1 fit in it only if lo_c < 0 < hi_c and -lo_c hi_c > 1
(Bhatia-Davis: var <= (hi - mean)(mean - lo); = 1 is the two-point +-1 law, no image). ImageNet's
(x / 255 - mean) / std gives [-2.1, 2.6] per channel (-lo hi ~ 5: the standardized prior holds).
Keras' x / 255 ([0, 1]) and x / 127.5 - 1 ([-1, 1]) cannot, nor a stale input BatchNormalization
(a captcha CRNN's x * 0.014 - 3.8: [-3.8, -0.17] on one channel, BENCHMARKS.md session 14): the samples
are then drawn in R itself (as `--input-range NAME:LO,HI` would) and the model's prefix makes them, so
no real pixel value falls outside the range the prefix's output is calibrated on (standardized
samples clipped the captcha's dark strokes at -2.4: 58 % agreement with FP32, 94 % with the input's
encoding alone from real images).

The prefix itself stays float (`prefix_nodes`, FindQuantGroups): its input arrives in float anyway, and
8-bit steps between its ops only add error (EfficientNet-Lite0 behind one: 95.8 -> 94.4 % agreement
with FP32 when they were quantized).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_pixel_dtype, reroute

AFFINE = frozenset({"Mul", "Div", "Add", "Sub"})
SHAPE_ONLY = frozenset({"Shape", "Size"})      # read a tensor's shape, never its values
FLOAT_TYPES = (1, 10, 11, 16)          # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
PIXEL_RANGES = ((0.0, 1.0), (0.0, 255.0))   # a float prefix's raw input: the pixel conventions
STANDARD_WIDTH = 5.0       # 2 * synth.search.BOUND: the standardized samples' width per channel
MAX_WIDTH_RATIO = 16.0     # no pixel convention when its image is this far (either way) from that width
FIT_TOLERANCE = 1e-3       # -lo hi = 1 within float32 rounding (x / 127.5 - 1) does not fit


@dataclass(frozen=True)
class Prefix:
    """y = a x + b on one sample (a, b broadcastable to [1, *shape]); `end`: the tensor y; `nodes`: the
    chain's nodes (ids, in order; `ops` their types); `integer`: the input's integer type when the
    prefix starts with a Cast to float (pixels), else None."""
    a: np.ndarray
    b: np.ndarray
    end: str
    ops: tuple[str, ...]
    nodes: tuple[int, ...]
    integer: np.dtype | None = None
    chain: tuple[str, ...] = ()       # the tensors from the input up to, not including, `end`

    def pixel_range(self) -> tuple[float, float] | None:
        """The integer type's range when nothing scales it after the Cast: the samples are drawn in it."""
        if self.integer is None or self.ops != ("Cast",):
            return None
        info = np.iinfo(self.integer)
        return float(info.min), float(info.max)

    def raw_range(self) -> tuple[float, float] | None:
        """R (module docstring): the integer type's range, else the pixel convention the scale implies."""
        if self.integer is not None:
            info = np.iinfo(self.integer)
            return float(info.min), float(info.max)
        scale = float(np.median(np.abs(self.a)))
        dist = {r: abs(np.log(scale * (r[1] - r[0]) / STANDARD_WIDTH)) for r in PIXEL_RANGES}
        best = min(dist, key=dist.get)
        return best if dist[best] <= np.log(MAX_WIDTH_RATIO) else None

    def standardizes(self, raw: tuple[float, float]) -> bool:
        """Whether values with mean 0 and std 1 fit in the image of `raw` on every channel (Bhatia-Davis)."""
        a, b = np.broadcast_arrays(self.a, self.b)
        ends = np.stack([a * raw[0] + b, a * raw[1] + b])
        lo, hi = ends.min(axis=0), ends.max(axis=0)
        return bool(np.all(lo < 0) and np.all(hi > 0) and np.all(-lo * hi > 1.0 + FIT_TOLERANCE))

    def cast_only(self) -> Prefix:
        """The Cast of an integer prefix alone: the ops after it stay in the graph (they read the samples)."""
        if self.integer is None or len(self.ops) == 1:
            return self
        one = np.ones_like(self.a)
        return Prefix(one, np.zeros_like(self.b), self.chain[1], ("Cast",), self.nodes[:1], self.integer,
                      self.chain[:1])


def _fits(c: tuple, shape: tuple) -> bool:
    """A constant of shape `c` broadcasts into `shape` (a batch of one sample; a dimension that is not an
    int -- dynamic -- takes any size) without growing it."""
    if len(c) > len(shape):
        return False
    return all(d == 1 or (isinstance(s, int) and s == d) or not isinstance(s, int)
               for d, s in zip(reversed(c), reversed(shape)))


def _step(node: gs.Node, t: gs.Tensor, shape: tuple, a: np.ndarray, b: np.ndarray):
    """(a, b) after `node` applied to the tensor `t` = a x + b, or None when not affine in x."""
    if node.op not in AFFINE or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
    if other is t or not isinstance(other, gs.Constant):
        return None
    c = np.asarray(other.values, np.float64)
    if not _fits(c.shape, (1, *shape)):
        return None
    first = node.inputs[0] is t
    if node.op == "Mul":
        return a * c, b * c
    if node.op == "Div":
        return (a / c, b / c) if first and np.all(c != 0) else None
    if node.op == "Add":
        return a, b + c
    return (a, b - c) if first else (-a, c - b)


def _value_readers(t: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `t`'s values (not only its shape)."""
    return [n for n in t.outputs if n.op not in SHAPE_ONLY]


def _pixels(t: gs.Tensor) -> np.dtype | None:
    """The integer type of an input read only by one Cast to float (an image of 8- or 16-bit pixels)."""
    readers = _value_readers(t)
    if t.dtype is None or not is_pixel_dtype(t.dtype) or len(readers) != 1:
        return None
    node = readers[0]
    to = node.attrs.get("to") if node.op == "Cast" else None
    return np.dtype(t.dtype) if to in FLOAT_TYPES else None


def affine_prefix(graph: gs.Graph, t: gs.Tensor, shape: tuple) -> Prefix | None:
    """The chain of affine ops from graph input `t` (module docstring), or None; `shape`: one sample's
    (dimensions that are not ints: dynamic). An integer input starts with its Cast to float."""
    a, b, nodes = np.ones((1,) * (len(shape) + 1)), np.zeros((1,) * (len(shape) + 1)), []
    outputs = {o.name for o in graph.outputs}
    x, integer, chain = t, _pixels(t), [t.name]
    if integer is not None:
        nodes.append(_value_readers(t)[0])
        x = nodes[0].outputs[0]
        chain.append(x.name)
    elif t.dtype is None or np.dtype(t.dtype).kind != "f":
        return None
    while len(readers := _value_readers(x)) == 1 and x.name not in outputs:
        step = _step(readers[0], x, shape, a, b)
        if step is None:
            break
        (a, b), x = step, readers[0].outputs[0]
        nodes.append(readers[0])
        chain.append(x.name)
    if not nodes or not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)) or np.any(a == 0):
        return None
    return Prefix(a, b, x.name, tuple(n.op for n in nodes), tuple(id(n) for n in nodes), integer,
                  tuple(chain[:-1]))


def is_pixel_input(t: gs.Tensor) -> bool:
    """An integer graph input read only through a Cast to float: image pixels, not token ids."""
    return _pixels(t) is not None


def input_prefixes(graph: gs.Graph, shapes: Mapping[str, tuple], skip: Collection[str] = ()
                   ) -> dict[str, Prefix]:
    """Graph inputs (not in `skip`) read through an affine prefix; `shapes`: per-sample shapes."""
    out = {}
    for t in graph.inputs:
        if t.name in skip or t.name not in shapes:
            continue
        prefix = affine_prefix(graph, t, tuple(shapes[t.name]))
        if prefix is not None:
            out[t.name] = prefix
    return out


def prefix_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes of every graph input's affine prefix (shapes from the graph)."""
    prefixes = (affine_prefix(graph, t, tuple(t.shape[1:])) for t in graph.inputs if t.shape)
    return {node for p in prefixes if p is not None for node in p.nodes}


def pixel_drawn(prefixes: Mapping[str, Prefix]) -> dict[str, tuple[float, float]]:
    """Inputs whose prefix cannot standardize their pixel range R (module docstring): name -> R."""
    out = {}
    for k, p in prefixes.items():
        raw = p.raw_range()
        if raw is not None and not p.standardizes(raw):
            out[k] = raw
    return out


def without_prefixes(graph: gs.Graph, prefixes: Mapping[str, Prefix]) -> gs.Graph:
    """A copy of `graph` whose inputs are the prefixes' ends (same names, shapes and types as before)."""
    g = graph.copy()
    tensors = g.tensors()
    for i, t in enumerate(g.inputs):
        if t.name in prefixes:
            end = tensors[prefixes[t.name].end]
            dtype = np.float32 if prefixes[t.name].integer is not None else t.dtype
            new = gs.Variable(t.name, dtype=dtype, shape=t.shape)
            chain = [tensors[name] for name in prefixes[t.name].chain]
            t.name = f"{t.name}/raw"
            reroute(end, new)
            for c in chain:
                reroute(c, new, [n for n in c.outputs if n.op in SHAPE_ONLY])
            g.inputs[i] = new
    return g.cleanup().toposort()


def to_inputs(samples: Mapping[str, np.ndarray], prefixes: Mapping[str, Prefix]) -> dict[str, np.ndarray]:
    """Samples y of the prefixes' ends -> the model inputs x = (y - b) / a (integer inputs: rounded and
    clipped to their type's range)."""
    out = dict(samples)
    for k, p in prefixes.items():
        y = samples[k]
        x = (y - p.b.astype(np.float32)) / p.a.astype(np.float32)
        if p.integer is not None:
            info = np.iinfo(p.integer)
            x = np.clip(np.rint(x), info.min, info.max).astype(p.integer)
        out[k] = x.astype(y.dtype, copy=False) if p.integer is None else x
    return out
