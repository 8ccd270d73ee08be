"""The profile schema's placement / fixed-encoding / per-op / latency keys, and user TOML files."""

from __future__ import annotations

import re

import onnx
import pytest
from dfq_onnx.models import builders

from dfq_onnx.cli import main
from dfq_onnx.core.errors import TargetError
from dfq_onnx.core.target import builtin_targets, load_target

QNN = builtin_targets()["qnn-htp"].read_text()


def _write(tmp_path, text: str):
    path = tmp_path / "user.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.replace('Tanh = { min = -1.0, span = 2.0 }', 'Tanh = { min = -1.0 }'), ["Tanh", "span"]),
    (lambda s: s.replace('Tanh = { min = -1.0, span = 2.0 }', 'Tanh = { min = 0.5, span = 1.0 }'),
     ["Tanh", "contain 0"]),
    (lambda s: s.replace('Sigmoid = { min', 'HardSigmoid = { min'), ["HardSigmoid", "[ops]"]),
    (lambda s: s.replace('shared_encoding_ops = ["Concat"]', 'shared_encoding_ops = ["Concatenate"]'),
     ["Concatenate", "shared_encoding_ops"]),
    (lambda s: s.replace('shared_encoding_ops = ["Concat"]', 'shared_encoding_ops = "Concat"'),
     ["shared_encoding_ops", "list"]),
    (lambda s: s.replace('ConvTranspose = [[8, 8], [8, 16]]', 'ConvTranspose = [[2, 8]]'),
     ["ConvTranspose", "W2A8", "pairs"]),
    (lambda s: s.replace('runtime = "none"', 'runtime = "tensorrt"'), ["runtime", "tensorrt"]),
    (lambda s: s.replace('[placement]\n', '[placement]\nquantise_outputs = true\n'), ["quantise_outputs"]),
])
def test_user_profile_errors_name_file_and_key(tmp_path, edit, words):
    path = _write(tmp_path, edit(QNN))
    with pytest.raises(TargetError) as info:
        load_target(path)
    msg = str(info.value)
    assert str(path) in msg
    for w in words:
        assert re.search(re.escape(w), msg), (w, msg)


def test_user_profile_from_cli(tmp_path, capsys):
    """A user's edited copy (HTP without int4, Sigmoid pinned differently) is used as given."""
    text = QNN.replace('name = "qnn-htp"', 'name = "my-npu"').replace(
        "Sigmoid = { min = 0.0, span = 1.0 }", "Sigmoid = { min = 0.0, span = 2.0 }")
    path = _write(tmp_path, text)
    model = tmp_path / "m.onnx"
    onnx.save(builders.conv_silu(), model)
    out = tmp_path / "q.onnx"
    assert main(["-q", "quantize", str(model), "-o", str(out), "--target", str(path), "--calib", "noise",
                 "--report", str(tmp_path / "r.json")]) == 0
    q = onnx.load(out)
    sig = next(n for n in q.graph.node if n.op_type == "Sigmoid")
    quant = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == sig.output[0])
    scale = next(t for t in q.graph.initializer if t.name == quant.input[1])
    assert onnx.numpy_helper.to_array(scale) == pytest.approx(2.0 / 256)
    assert '"target": "my-npu"' in (tmp_path / "r.json").read_text()


def test_bad_user_profile_is_a_one_line_error(tmp_path, capsys):
    path = _write(tmp_path, QNN.replace('runtime = "none"', 'runtime = "tpu"'))
    model = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(), model)
    assert main(["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--target", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "runtime" in err[0]
    assert not (tmp_path / "q.onnx").exists()


def test_profiles_declare_their_rules():
    trt, htp, gen = load_target("tensorrt"), load_target("qnn-htp"), load_target("generic")
    assert trt.act_symmetric and trt.act_dtypes == {8: "int8"} and not trt.quantize_outputs
    assert trt.add_fuses_weighted_input and trt.pairs == ((8, 8),) and trt.bias_mode == "float"
    assert not htp.act_symmetric and set(htp.act_dtypes.values()) == {"uint8", "uint16"}
    assert set(htp.weight_dtypes.values()) == {"int8", "int4"} and not htp.blocked_weights
    assert htp.fixed_encoding("Sigmoid", 16) == (1 / 65536, 0)
    assert htp.fixed_encoding("Tanh", 8) == (1 / 128, 128)
    assert htp.pairs_for(["Conv"]) == htp.pairs and (4, 8) not in htp.pairs_for(["Conv", "ConvTranspose"])
    assert len(gen.pairs) > len(htp.pairs) and gen.runtime == "none"
    assert load_target("ort-cpu").runtime == "onnxruntime" and load_target("openvino").runtime == "openvino"
