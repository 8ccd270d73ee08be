"""Tiny tabular classifiers as sklearn-onnx writes them (its converters' node layout, `ai.onnx.ml` ops).

``mlp_classifier`` (a StandardScaler + MLPClassifier pipeline):

    X [N, F] ─ Scaler (ai.onnx.ml) ─ Cast ─ fc1 MatMul ─ Add ─ Relu ─ fc2 MatMul ─ Add ─ Softmax ─ probs
    probs ─ ArgMax ─ ArrayFeatureExtractor (class labels) ─ Reshape ─ Cast ─ output_label [N] (int64)
    probs ─ ZipMap ─ output_probability: one {class: probability} map per row (zipmap=True)

The Scaler's output has no type ONNX shape inference can give (ONNX Runtime reports it with the
dimensions [] of a scalar), and ZipMap's output is a sequence of maps, not a tensor.

``tree_classifier`` (a one-tree DecisionTreeClassifier): TreeEnsembleClassifier + ZipMap, no layer at all.
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _init, _model, _vi
from onnx import TensorProto, helper

ML = {"ai.onnx.ml": 1}


def _labels_and_zipmap(probs: str, classes: int, zipmap: bool) -> tuple[list, list, list]:
    """(nodes, initializers, outputs) of sklearn-onnx's label and probability outputs."""
    inits = [_init("classes", np.arange(classes, dtype=np.int32)),
             _init("shape_label", np.array([-1], np.int64))]
    nodes = [helper.make_node("ArgMax", [probs], ["argmax"], name="ArgMax", axis=1),
             helper.make_node("ArrayFeatureExtractor", ["classes", "argmax"], ["label_i32"],
                              name="ArrayFeatureExtractor", domain="ai.onnx.ml"),
             helper.make_node("Reshape", ["label_i32", "shape_label"], ["label_flat"], name="Reshape"),
             helper.make_node("Cast", ["label_flat"], ["output_label"], name="Cast_label",
                              to=TensorProto.INT64)]
    outputs = [_vi("output_label", ["N"], TensorProto.INT64)]
    if zipmap:
        nodes.append(helper.make_node("ZipMap", [probs], ["output_probability"], name="ZipMap",
                                      domain="ai.onnx.ml", classlabels_int64s=list(range(classes))))
        seq = helper.make_sequence_type_proto(helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
        outputs.append(helper.make_value_info("output_probability", seq))
    else:
        outputs.append(_vi("probabilities", ["N", classes]))
    return nodes, inits, outputs


def mlp_classifier(features: int = 16, hidden: int = 32, classes: int = 4, zipmap: bool = True,
                   seed: int = 0) -> onnx.ModelProto:
    """The module docstring's MLP pipeline; the inputs are raw features of mean `offset`, scale 3."""
    rng = np.random.default_rng(seed)
    offset = rng.uniform(-5, 5, features).astype(np.float32)
    inits = [_init("fc1.weight", rng.normal(0, 1 / np.sqrt(features), (features, hidden)).astype(np.float32)),
             _init("fc1.bias", rng.normal(0, 0.1, hidden).astype(np.float32)),
             _init("fc2.weight", rng.normal(0, 1 / np.sqrt(hidden), (hidden, classes)).astype(np.float32)),
             _init("fc2.bias", rng.normal(0, 0.1, classes).astype(np.float32))]
    nodes = [helper.make_node("Scaler", ["X"], ["scaled"], name="Scaler", domain="ai.onnx.ml",
                              offset=offset.tolist(), scale=[1 / 3.0] * features),
             helper.make_node("Cast", ["scaled"], ["cast_input"], name="Cast", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["cast_input", "fc1.weight"], ["fc1_mm"], name="fc1"),
             helper.make_node("Add", ["fc1_mm", "fc1.bias"], ["fc1_out"], name="fc1_bias"),
             helper.make_node("Relu", ["fc1_out"], ["relu_out"], name="relu"),
             helper.make_node("MatMul", ["relu_out", "fc2.weight"], ["fc2_mm"], name="fc2"),
             helper.make_node("Add", ["fc2_mm", "fc2.bias"], ["logits"], name="fc2_bias"),
             helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1)]
    tail_nodes, tail_inits, outputs = _labels_and_zipmap("probabilities", classes, zipmap)
    return _model(nodes + tail_nodes, [_vi("X", ["N", features])], outputs, inits + tail_inits,
                  opset=17, name="sklearn_mlp", extra_opsets=ML)


def tree_classifier(features: int = 4) -> onnx.ModelProto:
    """One depth-1 tree on feature 0 (class 0 below 0.5, else class 1), then ZipMap: nothing to quantize."""
    tree = dict(nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.5, 0.0, 0.0],
                nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0], nodes_hitrates=[1.0] * 3,
                nodes_missing_value_tracks_true=[0] * 3, class_treeids=[0, 0], class_nodeids=[1, 2],
                class_ids=[0, 1], class_weights=[1.0, 1.0], classlabels_int64s=[0, 1])
    nodes = [helper.make_node("TreeEnsembleClassifier", ["X"], ["label", "probabilities"],
                              name="TreeEnsembleClassifier", domain="ai.onnx.ml", **tree),
             helper.make_node("ZipMap", ["probabilities"], ["output_probability"], name="ZipMap",
                              domain="ai.onnx.ml", classlabels_int64s=[0, 1])]
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    outputs = [_vi("label", ["N"], TensorProto.INT64), helper.make_value_info("output_probability", seq)]
    return _model(nodes, [_vi("X", ["N", features])], outputs, [], opset=17, name="sklearn_tree",
                  extra_opsets=ML)
