"""Determinism across processes: the same model, options and seed give a byte-identical model and the
same report (wall-clock entries removed), in two fresh interpreters with different hash seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.core.report import _without_timings

MIXED = ["--avg-weight-bits", "5", "--synth-samples", "8", "--synth-steps", "3", "--no-cache"]


def _run(tmp_path, tag: str, hash_seed: str, seed: int = 3):
    out, rep = tmp_path / f"{tag}.onnx", tmp_path / f"{tag}.json"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    cmd = [sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(tmp_path / "m.onnx"), "-o", str(out),
           "--report", str(rep), "--seed", str(seed), *MIXED]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes(), json.loads(rep.read_text())


def test_mixed_precision_is_byte_identical_across_processes(tmp_path):
    onnx.save(builders.with_data_bn_stats(builders.conv_bn_relu_residual()), tmp_path / "m.onnx")
    model_a, report_a = _run(tmp_path, "a", "1")
    model_b, report_b = _run(tmp_path, "b", "12345")
    assert model_a == model_b
    assert _without_timings(report_a) == _without_timings(report_b)
    assert report_a["comparison"]["samples"] == 8                     # compared on the synthetic samples
    assert "seconds" in report_a["passes"][0] and "seconds" not in _without_timings(report_a)["passes"][0]
    # another seed gives other synthetic samples, hence other ranges: the comparison can tell runs apart
    other, _ = dfq_onnx.quantize(str(tmp_path / "m.onnx"), avg_weight_bits=5, synth_samples=8, synth_steps=3,
                                 use_cache=False, seed=4, progress=False)
    assert other.SerializeToString() != model_a
