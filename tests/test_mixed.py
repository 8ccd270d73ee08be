"""Mixed precision end to end: ScoreSensitivity + AllocateBits + EmitQDQ on a builder model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import normal_feeds, run
from dfq_onnx.models import builders
from onnx import numpy_helper

import dfq_onnx
from dfq_onnx.cli import main

STORAGE = {onnx.TensorProto.INT4: 4, onnx.TensorProto.INT8: 8}


def _weight_bits_from_model(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """(storage bits, params) of every weight DequantizeLinear, read back from the emitted file."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized") and \
                inits.get(node.input[0]) is not None and inits[node.input[0]].data_type in STORAGE:
            t = inits[node.input[0]]
            values = numpy_helper.to_array(t)
            out[node.input[0]] = (STORAGE[t.data_type], values.size, int(np.abs(values).max()))
    return out


@pytest.mark.parametrize("budget", [3.0, 5.0])
def test_plan_respects_the_budget_as_read_from_the_emitted_initializers(tmp_path, budget):
    model = builders.conv_bn_relu_residual()
    out, report = dfq_onnx.quantize(model, calib="noise", avg_weight_bits=budget, progress=False,
                                    cache_dir=str(tmp_path), score_bits=(2, 4, 8))
    onnx.checker.check_model(out, full_check=True)
    layers = {layer["weight"]: layer for layer in report.layers}
    total = sum(layer["params"] for layer in report.layers)
    avg = sum(layer["weight_bits"] * layer["params"] for layer in report.layers) / total
    assert avg <= budget + 1e-9
    assert report.notes["allocation"]["avg_weight_bits"] == pytest.approx(avg)
    for name, (storage, _size, peak) in _weight_bits_from_model(out).items():
        bits = layers[name.removesuffix("_quantized")]["weight_bits"]
        assert storage == (4 if bits <= 4 else 8)
        assert peak <= 2 ** (bits - 1) - 1          # values use only the chosen grid
    feeds = normal_feeds(model, n=8)
    assert np.all(np.isfinite(run(out, feeds)[0]))


def test_infeasible_budget_is_a_one_line_usage_error(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu_residual(), path)
    code = main(["-q", "quantize", str(path), "-o", str(tmp_path / "o.onnx"), "--calib", "noise",
                 "--avg-weight-bits", "1", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--avg-weight-bits 1" in err and "feasible range" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


def test_weight_bits_with_budget_is_rejected():
    with pytest.raises(dfq_onnx.UsageError, match="--weight-bits"):
        dfq_onnx.QuantizeOptions(weight_bits=4, avg_weight_bits=4.0)


def test_synthesize_command_writes_samples_for_each_input(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(), path)
    out = tmp_path / "samples.npz"
    assert main(["-q", "synthesize", str(path), "-o", str(out), "--synth-samples", "4", "--synth-steps", "2",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    with np.load(out) as data:
        assert data["input"].shape[0] == 4 and data["input"].dtype == np.float32
    assert "4 samples" in capsys.readouterr().out
