"""Tiny models whose BatchNormalization follows the activation (Keras' Conv - Activation - BN blocks,
CREPE's Conv - Relu - BN), with statistics set as training on given inputs would leave them.

``image_classifier``: an image classifier of that form::

    image [N, C, H, W] ─ conv1 ─ Relu ─ bn1 ─ conv2 (stride 2) ─ Relu ─ bn2 ─ GAP ─ Flatten ─ fc

``with_bn_moments``: a copy of a model whose every BatchNormalization's running mean and variance are the
per-channel moments of its input over `feeds` (what the running statistics converge to on that data).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _conv, _conv_w, _init, _model, _vi
from onnx import helper, numpy_helper


def image_classifier(c_in: int = 3, c: int = 8, hw: int = 16, classes: int = 4, seed: int = 0
                     ) -> onnx.ModelProto:
    """The classifier of the module docstring (BN statistics 0 / 1: set them with `with_bn_moments`)."""
    rng = np.random.default_rng(seed)
    inits = [_init("conv1.weight", _conv_w(rng, c, c_in, 3)), _init("conv1.bias", rng.normal(0, 0.1, c)
                                                                     .astype(np.float32)),
             _init("conv2.weight", _conv_w(rng, c, c, 3)), _init("conv2.bias", rng.normal(0, 0.1, c)
                                                                 .astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32))]
    for i in (1, 2):
        inits += [_init(f"bn{i}.{k}", v.astype(np.float32)) for k, v in (
            ("scale", rng.uniform(0.5, 1.5, c)), ("bias", rng.normal(0, 0.1, c)),
            ("mean", np.zeros(c)), ("var", np.ones(c)))]
    nodes = [_conv("conv1", "image", "conv1.weight", "c1", "conv1.bias", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("BatchNormalization", ["r1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"],
                              ["b1"], name="bn1"),
             _conv("conv2", "b1", "conv2.weight", "c2", "conv2.bias", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("BatchNormalization", ["r2", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"],
                              ["b2"], name="bn2"),
             helper.make_node("GlobalAveragePool", ["b2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]
    return _model(nodes, [_vi("image", ["N", c_in, hw, hw])], [_vi("logits", ["N", classes])], inits,
                  name="post_bn_image_classifier")


def with_bn_moments(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with each BN's mean / var the moments of its input over `feeds`, set in graph
    order (a BN's input depends on the statistics of the BNs before it)."""
    import onnxruntime as ort

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in [n for n in out.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(out)
        seen = helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)
        probe.graph.output.extend([seen])
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        x = sess.run([node.input[0]], feeds)[0].astype(np.float64)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        for name, v in ((node.input[3], x.mean(axis=axes)), (node.input[4], x.var(axis=axes))):
            inits[name].CopyFrom(numpy_helper.from_array(v.astype(np.float32), name))
    return out
