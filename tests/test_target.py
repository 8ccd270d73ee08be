"""Target profiles: the bundled ort-cpu profile, and every way a user's TOML can be wrong."""

from __future__ import annotations

import re

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dfq_onnx.core.errors import TargetError, UsageError
from dfq_onnx.core.target import builtin_targets, load_target

ORT_CPU_TEXT = builtin_targets()["ort-cpu"].read_text()


def test_ort_cpu_loads():
    t = load_target("ort-cpu")
    assert t.name == "ort-cpu" and t.min_opset == 13
    assert (t.default_weight_bits, t.default_act_bits) == (8, 8)
    assert t.act_dtype(8) == "uint8" and t.weight_dtype(8) == "int8" and t.weight_dtype(4) == "int4"
    assert t.role("Conv") == "weighted" and t.role("MaxPool") == "passthrough"
    assert t.role("Relu") == "activation"
    assert t.role("ConvTranspose") is None
    assert t.opset_for(["int8", "uint8"]) == 13 and t.opset_for(["int4", "uint8"]) == 21
    assert (8, 8) in t.integer_kernels and t.cost[(8, 8)] == pytest.approx(0.58)


def test_profile_is_frozen():
    t = load_target("ort-cpu")
    with pytest.raises(AttributeError):
        t.name = "other"
    with pytest.raises(TypeError):
        t.ops["Conv"] = "elementwise"


def _write(tmp_path, text: str):
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, key", [
    (lambda s: s + '\nflavour = "spicy"\n', "flavour"),                                       # top level
    (lambda s: s.replace("[activation]\n", "[activation]\nsymetric = true\n"), "symetric"),   # typo
    (lambda s: s.replace("[weight]\n", "[weight]\nper_chanel = true\n"), "per_chanel"),
    (lambda s: s.replace("[candidates]\n", "[candidates]\npairz = []\n"), "pairz"),
])
def test_unknown_key_names_file_and_key(tmp_path, edit, key):
    path = _write(tmp_path, edit(ORT_CPU_TEXT))
    with pytest.raises(TargetError, match=re.escape(key)) as info:
        load_target(path)
    assert str(path) in str(info.value)


def test_unknown_role_names_file_op_and_role(tmp_path):
    path = _write(tmp_path, ORT_CPU_TEXT.replace('MaxPool = "passthrough"', 'MaxPool = "passthru"'))
    with pytest.raises(TargetError) as info:
        load_target(path)
    msg = str(info.value)
    assert str(path) in msg and "MaxPool" in msg and "passthru" in msg


def test_bad_cost_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, ORT_CPU_TEXT.replace('"8x8" = 0.58', '"8by8" = 0.58'))
    with pytest.raises(TargetError) as info:
        load_target(path)
    assert str(path) in str(info.value) and "8by8" in str(info.value)


@pytest.mark.parametrize("key", ["name", "min_opset", "ops"])
def test_missing_required_key(tmp_path, key):
    data = tomllib.loads(ORT_CPU_TEXT)
    lines = ORT_CPU_TEXT.splitlines()
    if key == "ops":   # drop the [ops] table (it is the last one in the file)
        text = "\n".join(lines[:lines.index("[ops]")])
    else:
        text = "\n".join(line for line in lines if not line.startswith(f"{key} ="))
    assert key in data and key not in tomllib.loads(text)
    path = _write(tmp_path, text)
    with pytest.raises(TargetError, match=f"missing required key '{key}'") as info:
        load_target(path)
    assert str(path) in str(info.value)


def test_invalid_toml_names_file(tmp_path):
    path = _write(tmp_path, ORT_CPU_TEXT + "\n[ops\n")
    with pytest.raises(TargetError, match="invalid TOML") as info:
        load_target(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("edit", [
    lambda s: "ops = 5\n" + s[:s.index("[ops]")],     # a table given as a scalar
    lambda s: s.replace("min_opset = 13", 'min_opset = "thirteen"'),
    lambda s: s.replace('"8x8" = 0.58', '"8x8" = "cheap"'),
], ids=["section-not-table", "min-opset-string", "cost-string"])
def test_wrongly_typed_value_is_target_error(tmp_path, edit):
    path = _write(tmp_path, edit(ORT_CPU_TEXT))
    with pytest.raises(TargetError) as info:
        load_target(path)
    assert str(path) in str(info.value)


def test_unknown_dtype_name_is_target_error(tmp_path):
    path = _write(tmp_path, ORT_CPU_TEXT.replace('8 = "int8", 6 = "int8"', '8 = "int7", 6 = "int8"'))
    with pytest.raises(TargetError, match="int7"):
        load_target(path)


def test_unknown_target_name_lists_available():
    with pytest.raises(TargetError) as info:
        load_target("tensorrt-but-misspelled")
    assert "ort-cpu" in str(info.value) and "tensorrt-but-misspelled" in str(info.value)
    assert isinstance(info.value, UsageError)        # CLI exit code 2


def test_missing_toml_path(tmp_path):
    with pytest.raises(TargetError, match="not found"):
        load_target(tmp_path / "nope.toml")


def test_check_pair():
    t = load_target("ort-cpu")
    t.check_pair(8, 8)
    t.check_pair(4, 8)
    t.check_pair(2, 8)            # a 2-bit grid stored as int4
    with pytest.raises(TargetError) as info:
        t.check_pair(4, 4)
    assert "W4A4" in str(info.value) and "W8A8" in str(info.value)   # names the legal pairs
    assert t.weight_dtype(3) == "int4"
    with pytest.raises(TargetError, match="no 7-bit weight type"):
        t.weight_dtype(7)


def test_every_builtin_profile_loads_and_quantizes_a_builder_model():
    from dfq_onnx.models import builders

    import dfq_onnx
    from dfq_onnx.core.target import builtin_targets

    for name in builtin_targets():
        model, report = dfq_onnx.quantize(builders.conv_bn_relu_residual(), target=name, progress=False)
        assert report.model["target"] == name and report.layers
