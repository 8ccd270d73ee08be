"""Tiny dense-map models without BN statistics, for the line-drawing pages (synth/pages.py).

    input [N, 3, H, W] ─ edges (3x3, 4 ch: Laplacian / oriented gradients of the grey level, bias -t)
        ─ Relu ─ conv2 (1x1, c ch) ─ Relu ─ head (1x1, 2 ch) ─ [Transpose to N, H, W, 2] ─ map

The edge layer's threshold t decides what fires it: a smooth 1/f field's local contrast stays under
t = `threshold`, a sharp stroke's does not (a stroke head, as a text detector's). threshold 0 fires on
anything. `classify` ends in a global average pool and a Gemm instead ([N, 2]: not a dense map).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _conv, _init, _model, _vi
from onnx import helper

EDGES = np.array([[[0, -1, 0], [-1, 4, -1], [0, -1, 0]], [[0, 0, 0], [-1, 0, 1], [0, 0, 0]],
                  [[0, -1, 0], [0, 0, 0], [0, 1, 0]], [[0, 1, 0], [1, -4, 1], [0, 1, 0]]], np.float32)


def stroke_map(hw: int = 32, c: int = 8, threshold: float = 1.5, channels_last: bool = True,
               classify: bool = False, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """The module docstring's graph (`channels_last`: the map transposed to [N, H, W, 2], as CRAFT's;
    `batch`: the batch axis declared, "N" dynamic, 1 as an export traced at one row)."""
    rng = np.random.default_rng(seed)
    w1 = np.repeat(EDGES[:, None], 3, axis=1) / 3.0
    inits = [_init("edges.weight", w1.astype(np.float32)),
             _init("edges.bias", np.full(4, -threshold, np.float32)),
             _init("conv2.weight", np.abs(rng.normal(0, 0.5, (c, 4, 1, 1))).astype(np.float32)),
             _init("conv2.bias", np.zeros(c, np.float32)),
             _init("head.weight", rng.normal(0, 0.5, (2, c, 1, 1)).astype(np.float32)),
             _init("head.bias", np.zeros(2, np.float32))]
    nodes = [_conv("edges", "input", "edges.weight", "e", "edges.bias"),
             helper.make_node("Relu", ["e"], ["e_relu"], name="edges_relu"),
             _conv("conv2", "e_relu", "conv2.weight", "h", "conv2.bias", pads=[0, 0, 0, 0]),
             helper.make_node("Relu", ["h"], ["h_relu"], name="conv2_relu"),
             _conv("head", "h_relu", "head.weight", "raw" if channels_last or classify else "map",
                   "head.bias", pads=[0, 0, 0, 0])]
    out = _vi("map", [batch, hw, hw, 2] if channels_last else [batch, 2, hw, hw])
    if classify:
        inits += [_init("fc.weight", rng.normal(0, 0.5, (2, 2)).astype(np.float32))]
        nodes += [helper.make_node("GlobalAveragePool", ["raw"], ["pool"], name="pool"),
                  helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "fc.weight"], ["map"], name="fc")]
        out = _vi("map", [batch, 2])
    elif channels_last:
        nodes.append(helper.make_node("Transpose", ["raw"], ["map"], name="to_nhwc", perm=[0, 2, 3, 1]))
    return _model(nodes, [_vi("input", [batch, 3, hw, hw])], [out], inits, name="stroke_map")
