"""The command line, in-process: success paths print, failures print one line and exit 1 or 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from dfq_onnx.models import builders

from dfq_onnx.cli import main


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "residual.onnx"
    onnx.save(builders.conv_bn_relu_residual(), path)
    return path


def test_quantize_end_to_end(model_path, tmp_path, capsys):
    out, report = tmp_path / "q.onnx", tmp_path / "report.json"
    assert main(["-q", "quantize", str(model_path), "-o", str(out), "--report", str(report),
                 "--calib", "analytic"]) == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    data = json.loads(report.read_text())
    assert len(data["layers"]) == 3                      # conv1, conv2, fc
    names = [p["pass"] for p in data["passes"]]
    assert names[0] == "Normalize"
    assert names[-4:] == ["EmitQDQ", "ResidualSum", "AttachTail", "RestoreInterface"]     # ort-cpu's list
    assert data["forward_passes"] == 0                   # all ranges analytic
    assert capsys.readouterr().out.startswith(f"wrote {out}: 3 weighted layers quantized")


def test_quantize_with_noise_and_npz(model_path, tmp_path):
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 8, 8, 8), np.float32))
    for calib in ("noise", str(tmp_path / "calib.npz")):
        out = tmp_path / "q.onnx"
        assert main(["-q", "quantize", str(model_path), "-o", str(out), "--calib", calib,
                     "--calib-samples", "8", "--weight-bits", "4"]) == 0
        assert out.is_file()


def test_metric_option_reaches_the_scorer(model_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    argv = ["-q", "quantize", str(model_path), "-o", str(out), "--avg-weight-bits", "6", "--calib", "noise",
            "--cache-dir", str(tmp_path / "cache"), "--report", str(report)]
    assert main([*argv, "--metric", "mse"]) == 0
    assert json.loads(report.read_text())["notes"]["sensitivity"]["metric"] == "mse"
    assert main(argv) == 0                                     # auto: KL on the classifier output
    assert json.loads(report.read_text())["notes"]["sensitivity"]["metric"] == "kl"


def test_inspect_prints_groups(model_path, capsys):
    assert main(["-q", "inspect", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "BatchNormalization 2 (foldable 2)" in out and "groups 4" in out and "conv1, add" in out
    assert main(["-q", "inspect", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["batchnorm"] == 2 and len(info["groups"]) == 4 and info["opset"] == 17


def test_targets_lists_every_profile(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert names == ["generic", "openvino", "ort-cpu", "qnn-htp", "tensorrt"]
    assert "W8A8" in out and "W4A8" in out


def _fails(argv, tmp_path, capsys, code):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfq-onnx: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # nothing written, no temp file left
    return lines[0]


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda d: _write(d, "notes.onnx", b"this is a text file, not a model\n"), ["not a valid ONNX model"]),
    (lambda d: _write(d, "cut.onnx", builders.conv_bn_relu().SerializeToString()[:1500]), ["truncated"]),
    (lambda d: _write(d, "empty.onnx", b""), ["empty file"]),
    (lambda d: d / "missing.onnx", ["no such file"]),
    (lambda d: _write(d, "bf16.onnx", builders.bad_bf16().SerializeToString()), ["'input'", "bfloat16"]),
    (lambda d: _write(d, "custom.onnx", builders.bad_custom_domain().SerializeToString()), ["com.example"]),
], ids=["text", "truncated", "empty", "missing", "bf16", "custom-domain"])
def test_model_problems_exit_1(tmp_path, capsys, make, words):
    path = make(tmp_path)
    line = _fails(["-q", "quantize", str(path), "-o", str(tmp_path / "out.onnx")], tmp_path, capsys, 1)
    for word in words:
        assert word in line


def test_truncated_half_of_a_real_model_is_refused(tmp_path, capsys):
    data = builders.conv_bn_relu_residual().SerializeToString()
    path = _write(tmp_path, "half.onnx", data[: len(data) // 2])
    _fails(["-q", "quantize", str(path), "-o", str(tmp_path / "out.onnx")], tmp_path, capsys, 1)


def test_output_equal_to_input_is_refused(model_path, tmp_path, capsys):
    before = model_path.read_bytes()
    line = _fails(["-q", "quantize", str(model_path), "-o", str(model_path)], tmp_path, capsys, 2)
    assert "--output" in line and model_path.read_bytes() == before


@pytest.mark.parametrize("extra, words", [
    (["--target", "no-such-target"], ["no-such-target", "ort-cpu"]),
    (["--weight-bits", "9"], ["--weight-bits 9"]),
    (["--act-bits", "4"], ["no 4-bit activation type"]),              # activations are 8/16-bit only
    (["--weight-bits", "16"], ["W16A8", "not legal"]),                # int16 exists, W16A8 is not a pair
    (["--calib", "missing.npz"], ["missing.npz", "not found"]),
], ids=["unknown-target", "bad-weight-bits", "no-4-bit-act-type", "illegal-pair", "missing-npz"])
def test_usage_problems_exit_2(model_path, tmp_path, capsys, extra, words):
    argv = ["-q", "quantize", str(model_path), "-o", str(tmp_path / "out.onnx"), *extra]
    line = _fails(argv, tmp_path, capsys, 2)
    for word in words:
        assert word in line


@pytest.mark.parametrize("extra", [["--weight-bits", "eight"], ["--input-shape", "input:1,x,8"],
                                   ["--input-shape", "1,3,8,8"], ["--act-range", "max"],
                                   ["--metric", "psnr"]])
def test_argparse_errors_exit_2(model_path, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as info:
        main(["-q", "quantize", str(model_path), "-o", str(tmp_path / "out.onnx"), *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("hint", ["images:1,3,8,8", "input:1,8,8", "input:1,8,16,16"],
                         ids=["unknown-input", "wrong-rank", "fixed-size"])
def test_bad_input_shape_hint_exits_2(model_path, tmp_path, capsys, hint):
    """A size the graph fixes (CenterFace ships [10, 3, 32, 32]) failed in Synthesize's first ORT call."""
    argv = ["-q", "quantize", str(model_path), "-o", str(tmp_path / "out.onnx"), "--input-shape", hint]
    line = _fails(argv, tmp_path, capsys, 2)
    assert "--input-shape" in line
    if hint.endswith("16,16"):
        assert "axis 2 is 16, but the model fixes it at 8" in line and "dynamic" in line


def test_malformed_target_file_is_a_usage_error(model_path, tmp_path, capsys):
    from dfq_onnx.core.target import builtin_targets

    toml = tmp_path / "bad.toml"
    text = builtin_targets()["ort-cpu"].read_text()
    toml.write_text(text.replace("min_opset = 13", 'min_opset = "thirteen"'))
    _fails(["-q", "quantize", str(model_path), "-o", str(tmp_path / "out.onnx"), "--target", str(toml)],
           tmp_path, capsys, 2)


def test_debug_shows_the_exception(tmp_path):
    from dfq_onnx.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        main(["--debug", "-q", "quantize", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")])
