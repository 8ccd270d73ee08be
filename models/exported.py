"""Tiny graphs written the way exporters write them (for Normalize's rewrites and ORT's fusions).

``same_pad_flatten``: TensorFlow-style "same" padding as explicit ``Pad`` nodes before a strided Conv
and an AveragePool, and PyTorch's ``x.view(x.size(0), -1)`` flatten (Shape -> Gather -> Unsqueeze ->
Concat -> Reshape) before the classifier, as EfficientNet-Lite's export has them::

    input ─ pad1 ─ conv1 (stride 2) ─ bn1 ─ relu1 ─ pad2 ─ pool (AveragePool) ─ conv2 ─ relu2 ─ gap
          ─ reshape(Concat(Unsqueeze(Gather(Shape(input), 0)), [-1])) ─ fc ─ output

``pad_value`` != 0 or ``pad_mode`` != "constant" make pads that must not be folded.
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _bn, _conv_w, _init, _model, _vi
from onnx import helper, numpy_helper

__all__ = ["same_pad_flatten"]


def same_pad_flatten(c_in: int = 3, c: int = 8, classes: int = 5, hw: int = 9, seed: int = 0,
                     pad_value: float = 0.0, pad_mode: str = "constant") -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)), _init("conv2.weight", _conv_w(rng, c, c, 1)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)),
             _init("fc.bias", rng.normal(0, 0.1, classes).astype(np.float32)),
             _init("pad1.pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)),
             _init("pad2.pads", np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64)),
             numpy_helper.from_array(np.array(pad_value, np.float32), "pad.value"),   # 0-d scalars
             numpy_helper.from_array(np.array(0, np.int64), "gather.index"),
             _init("unsqueeze.axes", np.array([0], np.int64)),
             _init("minus_one", np.array([-1], np.int64))]
    pad = {"mode": pad_mode}
    nodes = [helper.make_node("Pad", ["input", "pad1.pads", "pad.value"], ["pad1_out"], name="pad1", **pad),
             helper.make_node("Conv", ["pad1_out", "conv1.weight"], ["conv1_out"], name="conv1",
                              strides=[2, 2]),
             _bn(rng, "bn1", c, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("Pad", ["relu1_out", "pad2.pads", "pad.value"], ["pad2_out"], name="pad2",
                              **pad),
             helper.make_node("AveragePool", ["pad2_out"], ["pool_out"], name="pool", kernel_shape=[2, 2]),
             helper.make_node("Conv", ["pool_out", "conv2.weight"], ["conv2_out"], name="conv2"),
             helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["relu2_out"], ["gap_out"], name="gap"),
             helper.make_node("Shape", ["input"], ["shape_out"], name="shape"),
             helper.make_node("Gather", ["shape_out", "gather.index"], ["batch"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["batch", "unsqueeze.axes"], ["batch_1d"], name="unsqueeze"),
             helper.make_node("Concat", ["batch_1d", "minus_one"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["gap_out", "target"], ["flat_out"], name="reshape"),
             helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1)]
    return _model(nodes, [_vi("input", ["N", c_in, hw, hw])], [_vi("output", ["N", classes])], inits,
                  name="same_pad_flatten")
