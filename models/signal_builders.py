"""Tiny non-image float-input models (audio waveforms), for synthesis on inputs with no image layout.

``waveform_classifier``: a raw-audio classifier with no BatchNormalization (as openWakeWord's
melspectrogram front end and Silero-style models are exported)::

    audio [N, T] ─ Unsqueeze [N, 1, T] ─ conv1 (stride 4) ─ Relu ─ conv2 ─ Relu ─ GAP ─ Flatten ─ fc

``log_mel_classifier``: a log-mel front end as torch exports an STFT (openWakeWord's melspectrogram),
then a small classifier on the log-mel::

    audio [N, T] ─ Unsqueeze ─ conv_re / conv_im (windowed cos / sin, hop 64) ─ Pow 2 ─ Add ─ Transpose
                 ─ MatMul mel filterbank (>= 0) ─ Clip(1e-10) ─ Log ─ Mul 10 / ln 10 (dB)
                 ─ Unsqueeze ─ conv ─ Relu ─ GAP ─ Flatten ─ fc

Both pass the ONNX checker and run in ONNX Runtime (opset 17).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _init, _model, _vi
from onnx import helper

__all__ = ["log_mel_classifier", "waveform_classifier"]


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


def log_mel_classifier(samples: int = 1024, n_fft: int = 128, hop: int = 64, mels: int = 16, c: int = 4,
                       classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """The log-mel classifier of the module docstring; input audio [N, samples], outputs the log-mel
    `mel_db` [N, frames, mels] and `logits` [N, classes]."""
    rng = np.random.default_rng(seed)
    k = np.arange(n_fft // 2 + 1)[:, None]
    t = np.arange(n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * t / n_fft)
    bins = n_fft // 2 + 1
    edges = np.linspace(1, bins - 1, mels + 2)
    fb = np.maximum(0.0, 1 - np.abs(np.arange(bins)[:, None] - edges[None, 1:-1]) / (edges[1] - edges[0]))
    cos, sin = window * np.cos(2 * np.pi * k * t / n_fft), -window * np.sin(2 * np.pi * k * t / n_fft)
    inits = [_init("axes", np.array([1], np.int64)),
             _init("conv_re.weight", cos[:, None].astype(np.float32)),
             _init("conv_im.weight", sin[:, None].astype(np.float32)),
             _init("two", np.array(2.0, np.float32)), _init("melW", fb.astype(np.float32)),
             _init("floor", np.array(1e-10, np.float32)), _init("db", np.array(10 / np.log(10), np.float32)),
             _init("conv.weight", (rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32)),
             _init("conv.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32))]
    stft = [helper.make_node("Unsqueeze", ["audio", "axes"], ["x"], name="unsqueeze"),
            helper.make_node("Conv", ["x", "conv_re.weight"], ["re"], name="conv_re", strides=[hop]),
            helper.make_node("Conv", ["x", "conv_im.weight"], ["im"], name="conv_im", strides=[hop]),
            helper.make_node("Pow", ["re", "two"], ["re2"], name="pow_re"),
            helper.make_node("Pow", ["im", "two"], ["im2"], name="pow_im"),
            helper.make_node("Add", ["re2", "im2"], ["power"], name="power"),
            helper.make_node("Transpose", ["power"], ["power_t"], name="transpose", perm=[0, 2, 1]),
            helper.make_node("MatMul", ["power_t", "melW"], ["mel"], name="mel"),
            helper.make_node("Clip", ["mel", "floor", ""], ["mel_floor"], name="floor"),
            helper.make_node("Log", ["mel_floor"], ["log_mel"], name="log"),
            helper.make_node("Mul", ["log_mel", "db"], ["mel_db"], name="to_db")]
    head = [helper.make_node("Unsqueeze", ["mel_db", "axes"], ["img"], name="unsqueeze_img"),
            helper.make_node("Conv", ["img", "conv.weight", "conv.bias"], ["c1"], name="conv",
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r1"], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]
    frames = (samples - n_fft) // hop + 1
    return _model(stft + head, [_vi("audio", ["N", samples])],
                  [_vi("mel_db", ["N", frames, mels]), _vi("logits", ["N", classes])], inits,
                  name="log_mel_classifier")
