"""The written model is compiled by its target's runtime when that runtime is installed (OpenVINO): a model
it refuses is an error naming the runtime's message, and nothing is written (backends/target_check.py).
A stand-in `openvino` module plays the runtime, so these run without it installed."""

from __future__ import annotations

import sys
import types

import pytest
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.core.errors import TargetRuntimeError

GATHER = ("Exception from src/inference/src/cpp/core.cpp:117:\n"
          "Exception from src/core/src/pass/graph_rewrite.cpp:298:\n"
          "[GatherTransformation] END: node: opset8::Gather pooler CALLBACK HAS THROWN: Axis 1 out of range")


def _stand_in(monkeypatch, failure: str | None, float_too: bool = False) -> list:
    """An `openvino` whose compile fails with `failure` on quantized models (and float ones if
    `float_too`); returns the (bytes, device) of every model it compiled."""
    compiled: list = []

    class Core:
        def read_model(self, data, weights):
            return data

        def compile_model(self, model, device, config=None):
            if failure is not None and (float_too or b"QuantizeLinear" in model):
                raise RuntimeError(failure)
            compiled.append((len(model), device))

    module = types.SimpleNamespace(Core=Core, Tensor=lambda array: array,
                                   get_version=lambda: "2099.1.0-0-abc-releases/2099/1")
    monkeypatch.setitem(sys.modules, "openvino", module)
    return compiled


def test_a_model_openvino_cannot_compile_is_an_error_and_nothing_is_written(monkeypatch, tmp_path):
    _stand_in(monkeypatch, GATHER)
    out = tmp_path / "q.onnx"
    with pytest.raises(TargetRuntimeError) as err:
        dfq_onnx.quantize(builders.conv_bn_relu(), target="openvino", output=out,
                          report_path=tmp_path / "r.json", progress=False, use_cache=False)
    message = str(err.value)
    assert "OpenVINO 2099.1.0 CPU cannot compile the written model ([GatherTransformation]" in message
    assert "Exception from" not in message and "nothing was written" in message
    assert list(tmp_path.iterdir()) == []


def test_a_model_openvino_cannot_compile_before_quantization_either_is_written(monkeypatch, tmp_path,
                                                                              caplog):
    """PLCMOS v2: OpenVINO's CPU plugin takes neither the FP32 model nor its quantized one (a dynamic
    rank): the output is no worse than its input, and is written with a warning."""
    _stand_in(monkeypatch, "Check '!shape.rank().is_dynamic()' failed", float_too=True)
    out = tmp_path / "q.onnx"
    _, report = dfq_onnx.quantize(builders.conv_bn_relu(), target="openvino", output=out, progress=False,
                                  use_cache=False)
    assert out.exists() and report.notes["target_runtime"]["model_given_compiled"] is False
    assert any("nor the model given" in w for w in report.warnings)
    assert "cannot compile the written model (Check '!shape.rank().is_dynamic()' failed), nor the model " \
           "given" in caplog.text


def test_a_model_openvino_compiles_is_written(monkeypatch, tmp_path):
    compiled = _stand_in(monkeypatch, None)
    out = tmp_path / "q.onnx"
    _, report = dfq_onnx.quantize(builders.conv_bn_relu(), target="openvino", output=out, progress=False,
                                  use_cache=False)
    assert out.exists() and compiled[0] == (compiled[0][0], "CPU") and compiled[0][0] > 0
    note = report.notes["target_runtime"]
    assert (note["runtime"], note["compiled"]) == ("OpenVINO 2099.1.0 CPU", True)
    assert "skipped" in note["agreement"]          # the stand-in runs nothing: no comparison, no error


def test_onnx_runtime_targets_are_not_compiled_by_openvino(monkeypatch, tmp_path):
    _stand_in(monkeypatch, GATHER)
    out = tmp_path / "q.onnx"
    _, report = dfq_onnx.quantize(builders.conv_bn_relu(), target="ort-cpu", output=out, progress=False,
                                  use_cache=False)
    assert out.exists() and "target_runtime" not in report.notes


def test_openvino_computing_another_function_than_onnx_runtime_is_a_warning(tmp_path):
    """The written model runs on the compile's samples in OpenVINO and in ONNX Runtime: a Conv bias inside
    the Conv before a zero initial state read off the batch (a profile without [bias] separate) runs in
    OpenVINO 2026.4 with the first channel's bias for every channel -- 21.5 dB from ONNX Runtime while the
    quantization is at ~50 dB from FP32 -- and says so; the openvino profile's output agrees."""
    pytest.importorskip("openvino")
    from dfq_onnx.models.recurrent_builders import conv_zero_state

    from dfq_onnx.core.target import builtin_targets

    text = builtin_targets()["openvino"].read_text().replace('separate = ["Conv"]', "")
    (tmp_path / "ov_bias_inside.toml").write_text(text)
    notes = {}
    for name, target in (("bias inside", str(tmp_path / "ov_bias_inside.toml")), ("openvino", "openvino")):
        _, report = dfq_onnx.quantize(conv_zero_state(), target=target, calib="noise", progress=False,
                                      use_cache=False)
        notes[name] = (report.notes["target_runtime"]["agreement"], report.warnings)
    agreement, warnings = notes["bias inside"]
    assert agreement["departs"] and agreement["openvino_vs_onnxruntime_db"] < 30
    assert any("computes the written model differently from ONNX Runtime" in w for w in warnings)
    agreement, warnings = notes["openvino"]
    assert not agreement["departs"] and agreement["openvino_vs_onnxruntime_db"] > 40
    assert not any("differently" in w for w in warnings)
