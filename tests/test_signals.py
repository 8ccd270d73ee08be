"""Multichannel 1-D signals [N, C, L] read by a 1-D Conv get the image prior restricted to a line (1/f
along L) instead of white noise (synth/signals.py)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
from _util import sqnr_db
from dfq_onnx.models import builders, signal_builders

import dfq_onnx
from dfq_onnx.synth.signals import pink_lines, signal_inputs

FAST = dict(synth_samples=16, synth_steps=0, use_cache=False, progress=False, latency_check=False)


def test_an_input_a_1d_conv_reads_is_a_signal():
    graph = gs.import_onnx(signal_builders.smoothing_signal_net())
    assert signal_inputs(graph, {"signal": (2, 256)}) == ["signal"]
    assert signal_inputs(gs.import_onnx(builders.conv_bn_relu()), {"input": (3, 8, 8)}) == []
    assert signal_inputs(gs.import_onnx(signal_builders.waveform_classifier()), {"audio": (256,)}) == []


def test_the_line_prior_is_correlated_along_the_signal():
    x = pink_lines(np.random.default_rng(0), 8, (3, 512))
    assert x.shape == (8, 3, 512) and np.allclose(x.std(axis=2), 1, atol=1e-4)
    lag1 = np.mean(x[..., 1:] * x[..., :-1])
    assert lag1 > 0.9                       # white noise: ~0


def test_a_smoothing_conv_is_calibrated_for_correlated_signals():
    model = signal_builders.smoothing_signal_net()
    out, _ = dfq_onnx.quantize(model, **FAST)
    rng = np.random.default_rng(5)           # test signals: slow sinusoids plus a little noise
    t = np.arange(256)
    x = np.stack([[np.sin(2 * np.pi * t / rng.uniform(20, 120) + rng.uniform(0, 6)) * rng.uniform(0.5, 1.5)
                   + 0.1 * rng.standard_normal(256) for _ in range(2)] for _ in range(16)]).astype(np.float32)
    x /= x.std(axis=2, keepdims=True)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"signal": x})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"signal": x})[0]
    assert sqnr_db(ref, got) > 25
