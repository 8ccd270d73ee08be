"""Tiny non-image float-input models (audio waveforms), for synthesis on inputs with no image layout.

``waveform_classifier``: a raw-audio classifier with no BatchNormalization (as openWakeWord's
melspectrogram front end and Silero-style models are exported)::

    audio [N, T] ─ Unsqueeze [N, 1, T] ─ conv1 (stride 4) ─ Relu ─ conv2 ─ Relu ─ GAP ─ Flatten ─ fc

It passes the ONNX checker and runs in ONNX Runtime (opset 17).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _init, _model, _vi
from onnx import helper

__all__ = ["waveform_classifier"]


def waveform_classifier(samples: int = 256, c: int = 8, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """The classifier of the module docstring; input audio [N, samples], output [N, classes]."""
    rng = np.random.default_rng(seed)
    inits = [_init("axes", np.array([1], np.int64)),
             _init("conv1.weight", (rng.standard_normal((c, 1, 9)) / 3).astype(np.float32)),
             _init("conv1.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("conv2.weight", (rng.standard_normal((c, c, 3)) / np.sqrt(3 * c)).astype(np.float32)),
             _init("conv2.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32))]
    nodes = [helper.make_node("Unsqueeze", ["audio", "axes"], ["x"], name="unsqueeze"),
             helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", strides=[4]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                              pads=[1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]
    return _model(nodes, [_vi("audio", ["N", samples])], [_vi("logits", ["N", classes])], inits,
                  name="waveform_classifier")
