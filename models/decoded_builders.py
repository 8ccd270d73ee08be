"""A tiny convolutional CTC recognizer that decodes in the graph and takes each line's width (trueocr's
rec.onnx layout, a Vietnamese line recognizer: ink map [N, 1, 96, W] and widths [N] in, ids and confidence
out)::

    x [N, 1, h, W] ─ conv1 (3x3) ─ Relu ─ ReduceMean(H) [N, c, W] ─ Mul ─ head (1x1 Conv1d) [N, K, W]
    widths [N] ─ Unsqueeze ─ Less(Range(W), .) ─ Cast ─ Unsqueeze ─┘      ─ Transpose [N, W, K] = logits
                                                        logits ─┬─ ArgMax ─► ids [N, W] int64
                                                                └─ Softmax ─ ReduceMax ─► conf [N, W]

`widths=False` leaves the mask out (x alone in), `decode=False` writes the logits as the output,
`kernel` is the head's kernel width (1: a per-position linear layer), `weighted_after=True` puts a
Gemm-like MatMul after the ArgMax's scores (a decode that is not at the end).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _conv, _init, _model, _vi
from onnx import TensorProto, helper


def _mask(nodes: list, inits: list) -> None:
    inits += [_init("axis_w", np.array(3, np.int64)), _init("zero", np.array(0, np.int64)),
              _init("one", np.array(1, np.int64)), _init("ax1", np.array([1], np.int64)),
              _init("ax0", np.array([0], np.int64))]
    nodes += [helper.make_node("Shape", ["x"], ["x_shape"], name="x_shape"),
              helper.make_node("Gather", ["x_shape", "axis_w"], ["w"], name="width", axis=0),
              helper.make_node("Range", ["zero", "w", "one"], ["pos"], name="range"),
              helper.make_node("Unsqueeze", ["pos", "ax0"], ["pos_row"], name="pos_row"),
              helper.make_node("Unsqueeze", ["widths", "ax1"], ["w_col"], name="w_col"),
              helper.make_node("Less", ["pos_row", "w_col"], ["valid"], name="valid"),
              helper.make_node("Cast", ["valid"], ["valid_f"], name="valid_f", to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["valid_f", "ax1"], ["mask"], name="mask"),
              helper.make_node("Mul", ["cols", "mask"], ["masked"], name="apply_mask")]


def decoded_recognizer(c: int = 8, h: int = 8, classes: int = 6, widths: bool = True, decode: bool = True,
                       kernel: int = 1, weighted_after: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The module docstring's graph, width dynamic ("W")."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", rng.normal(0, 0.4, (c, 1, 3, 3)).astype(np.float32)),
             _init("conv1.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("head.weight", rng.normal(0, 0.5, (classes, c, kernel)).astype(np.float32)),
             _init("head.bias", rng.normal(0, 0.1, classes).astype(np.float32))]
    nodes = [_conv("conv1", "x", "conv1.weight", "c1", "conv1.bias"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("ReduceMean", ["r1"], ["cols"], name="pool_h", axes=[2], keepdims=0)]
    if widths:
        _mask(nodes, inits)
    feats = "masked" if widths else "cols"
    nodes += [helper.make_node("Conv", [feats, "head.weight", "head.bias"], ["head_out"], name="head",
                               kernel_shape=[kernel], pads=[kernel // 2, kernel // 2]),
              helper.make_node("Transpose", ["head_out"], ["logits"], name="to_ntc", perm=[0, 2, 1])]
    inputs = [_vi("x", ["N", 1, h, "W"])] + ([_vi("widths", ["N"], TensorProto.INT64)] if widths else [])
    if not decode:
        return _model(nodes, inputs, [_vi("logits", ["N", "W", classes])], inits, name="decoded_recognizer")
    nodes += [helper.make_node("ArgMax", ["logits"], ["ids"], name="argmax", axis=-1, keepdims=0),
              helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
              helper.make_node("ReduceMax", ["probs"], ["conf"], name="max_prob", axes=[-1], keepdims=0)]
    outputs = [_vi("ids", ["N", "W"], TensorProto.INT64), _vi("conf", ["N", "W"])]
    if weighted_after:
        inits.append(_init("after.weight", rng.normal(0, 0.5, (classes, 3)).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", ["logits", "after.weight"], ["after"], name="after"))
        outputs.append(_vi("after", ["N", "W", 3]))
    return _model(nodes, inputs, outputs, inits, name="decoded_recognizer")


def topk_detector(hw: int = 8, classes: int = 2, k: int = 5, seed: int = 0) -> onnx.ModelProto:
    """An NMS-free detector that picks its top-k anchors in the graph (YOLOv10 / YOLO26 end-to-end exports,
    isbnx's ISBN detector)::

        input ─ conv1 ─ Relu ─ head (1x1, 4+K) ─ Reshape, Transpose [N, HW, 4+K] ─ Split ─┬─ boxes [N, HW, 4]
                                                                  Sigmoid ─ scores [N, HW, K] ─┘
        scores ─ ReduceMax ─ best [N, HW] ─ TopK(k) ─┬─ values ─► det_scores [N, k]
                                      indices ─ Unsqueeze ─ Expand ─ GatherElements(boxes) ─► det_boxes
    """
    rng = np.random.default_rng(seed)
    c = 4 + classes
    inits = [_init("conv1.weight", rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)),
             _init("conv1.bias", rng.normal(0, 0.1, 8).astype(np.float32)),
             _init("head.weight", rng.normal(0, 0.4, (c, 8, 1, 1)).astype(np.float32)),
             _init("head.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("shape", np.array([0, c, -1], np.int64)), _init("split", np.array([4, classes], np.int64)),
             _init("k", np.array([k], np.int64)), _init("ax_last", np.array([-1], np.int64)),
             _init("box_shape", np.array([1, 1, 4], np.int64))]
    nodes = [_conv("conv1", "input", "conv1.weight", "c1", "conv1.bias"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             _conv("head", "r1", "head.weight", "h", "head.bias", pads=[0, 0, 0, 0]),
             helper.make_node("Reshape", ["h", "shape"], ["flat"], name="flat"),
             helper.make_node("Transpose", ["flat"], ["anchors"], name="anchors", perm=[0, 2, 1]),
             helper.make_node("Split", ["anchors", "split"], ["boxes", "raw_scores"], name="split", axis=2),
             helper.make_node("Sigmoid", ["raw_scores"], ["scores"], name="sigmoid"),
             helper.make_node("ReduceMax", ["scores"], ["best"], name="best", axes=[-1], keepdims=0),
             helper.make_node("TopK", ["best", "k"], ["det_scores", "top"], name="topk", axis=-1),
             helper.make_node("Unsqueeze", ["top", "ax_last"], ["top3"], name="top3"),
             helper.make_node("Shape", ["top3"], ["top3_shape"], name="top3_shape"),
             helper.make_node("Max", ["top3_shape", "box_shape"], ["pick_shape"], name="pick_shape"),
             helper.make_node("Expand", ["top3", "pick_shape"], ["pick"], name="pick"),
             helper.make_node("GatherElements", ["boxes", "pick"], ["det_boxes"], name="gather_boxes",
                              axis=1)]
    return _model(nodes, [_vi("input", ["N", 3, hw, hw])],
                  [_vi("det_boxes", ["N", k, 4]), _vi("det_scores", ["N", k])], inits, name="topk_detector")


def masked_set_encoder(d: int = 8, features: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A tiny encoder over a set of items with a boolean mask of valid ones (trueocr's reading-order
    transformer: `feats [1, N, 16]`, `mask [1, N]`)::

        feats [1, N, F] ─ MatMul (F x d) ─ Relu ─ Where(mask, ., 0) ─ MatMul (d x 3) ─► scores [1, N, 3]
        mask [1, N] ─ Unsqueeze ─────────────┘
    """
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.5, (features, d)).astype(np.float32)),
             _init("w2", rng.normal(0, 0.5, (d, 3)).astype(np.float32)),
             _init("zero", np.zeros(1, np.float32)), _init("ax_last", np.array([-1], np.int64))]
    nodes = [helper.make_node("MatMul", ["feats", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Unsqueeze", ["mask", "ax_last"], ["mask3"], name="mask3"),
             helper.make_node("Where", ["mask3", "hr", "zero"], ["hm"], name="apply_mask"),
             helper.make_node("MatMul", ["hm", "w2"], ["scores"], name="fc2")]
    inputs = [_vi("feats", [1, "N", features]), _vi("mask", [1, "N"], TensorProto.BOOL)]
    return _model(nodes, inputs, [_vi("scores", [1, "N", 3])], inits, name="masked_set_encoder")
