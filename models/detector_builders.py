"""Tiny detectors that end in their post-processing (NonMaxSuppression), for the data-dependent tail tests.

    input ─ conv1 ─ bn1 ─ relu ─ conv2 (6 ch) ─ Reshape [N, 6, HW] ─┬─ Slice, Transpose ─ boxes [N, HW, 4]
                                                                     └─ Slice, Sigmoid ─── scores [N, 2, HW]
    boxes, scores ─ NonMaxSuppression ─ selected [K, 3] ─ Gather ─ det_boxes [N, K, 4] (x scale), det_class
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _bn, _conv, _conv_w, _init, _model, _vi
from onnx import TensorProto, helper


def conv_nms(hw: int = 8, seed: int = 0, scale_input: bool = False, early: bool = False) -> onnx.ModelProto:
    """The module docstring's graph. `scale_input` adds an input `scale` [N, 4] the boxes are multiplied
    by after NMS (PaddleDetection's scale_factor); `early` puts a NonZero before conv2 (a data-dependent
    op ahead of a quantizable layer: the model cannot be split)."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, 8, 3, 3)), _init("conv2.weight", _conv_w(rng, 6, 8, 1)),
             _init("conv2.bias", rng.normal(0, 0.1, 6).astype(np.float32)),
             _init("shape", np.array([0, 6, -1], np.int64)), _init("s0", np.array([0], np.int64)),
             _init("s4", np.array([4], np.int64)), _init("s6", np.array([6], np.int64)),
             _init("ax1", np.array([1], np.int64)), _init("max_out", np.array([10], np.int64)),
             _init("iou", np.array([0.5], np.float32)), _init("score_th", np.array([0.3], np.float32)),
             helper.make_tensor("i1", TensorProto.INT64, [], [1]),
             helper.make_tensor("i2", TensorProto.INT64, [], [2])]
    nodes = [_conv("conv1", "input", "conv1.weight", "conv1_out", pads=[1, 1, 1, 1]),
             _bn(rng, "bn1", 8, "conv1_out", "bn1_out", inits),
             helper.make_node("Relu", ["bn1_out"], ["relu_out"], name="relu")]
    x = "relu_out"
    if early:
        nodes += [helper.make_node("NonZero", [x], ["nz"], name="nonzero"),
                  helper.make_node("Shape", ["nz"], ["nz_shape"], name="nz_shape"),
                  helper.make_node("Cast", ["nz_shape"], ["nz_count"], name="nz_cast", to=TensorProto.FLOAT),
                  helper.make_node("ReduceMax", ["nz_count"], ["nz_max"], name="nz_max", keepdims=0),
                  helper.make_node("Div", [x, "nz_max"], ["relu_scaled"], name="nz_div")]
        x = "relu_scaled"
    nodes += [_conv("conv2", x, "conv2.weight", "head", "conv2.bias"),
              helper.make_node("Reshape", ["head", "shape"], ["flat"], name="flatten"),
              helper.make_node("Slice", ["flat", "s0", "s4", "ax1"], ["boxes_t"], name="box_slice"),
              helper.make_node("Transpose", ["boxes_t"], ["boxes"], name="box_transpose", perm=[0, 2, 1]),
              helper.make_node("Slice", ["flat", "s4", "s6", "ax1"], ["logits"], name="score_slice"),
              helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
              helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_th"],
                               ["selected"], name="nms", center_point_box=1),
              helper.make_node("Gather", ["selected", "i2"], ["box_index"], name="box_index", axis=1),
              helper.make_node("Gather", ["selected", "i1"], ["det_class"], name="det_class", axis=1),
              helper.make_node("Gather", ["boxes", "box_index"], ["kept"], name="kept", axis=1)]
    inputs = [_vi("input", ["N", 3, hw, hw])]
    if scale_input:
        nodes += [helper.make_node("Unsqueeze", ["scale", "ax1"], ["scale_1"], name="scale_unsqueeze"),
                  helper.make_node("Mul", ["kept", "scale_1"], ["det_boxes"], name="scale_mul")]
        inputs.append(_vi("scale", ["N", 4]))
    else:
        nodes.append(helper.make_node("Identity", ["kept"], ["det_boxes"], name="det_identity"))
    outputs = [_vi("det_boxes", ["N", "K", 4]), _vi("det_class", ["K"], TensorProto.INT64)]
    return _model(nodes, inputs, outputs, inits, 17, "conv_nms")
