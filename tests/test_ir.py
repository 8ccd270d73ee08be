"""dfq_onnx.ir: loading with external data (and refusing unsafe locations), atomic saving."""

from __future__ import annotations

import onnx
import pytest
from dfq_onnx.models import builders

from dfq_onnx import ir
from dfq_onnx.errors import ModelLoadError


def _save_external(model, path):
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)


def test_external_data_loads(tmp_path):
    model = builders.conv_bn_relu()
    want = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    _save_external(model, tmp_path / "m.onnx")     # (onnx.save_model moves `model`'s data out in place)
    loaded = ir.load_model(tmp_path / "m.onnx")
    got = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in loaded.graph.initializer)


def _point_external_data_to(path, location):
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


@pytest.mark.parametrize("location, words", [("../outside.bin", "escapes"), ("/etc/passwd", "escapes"),
                                             ("gone.bin", "not found")])
def test_unsafe_or_missing_external_data_is_refused(tmp_path, location, words):
    sub = tmp_path / "model"
    sub.mkdir()
    _save_external(builders.conv_bn_relu(), sub / "m.onnx")
    (tmp_path / "outside.bin").write_bytes((sub / "weights.bin").read_bytes())
    _point_external_data_to(sub / "m.onnx", location)
    with pytest.raises(ModelLoadError, match=words) as info:
        ir.load_model(sub / "m.onnx")
    assert location.split("/")[-1] in str(info.value)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = ir.save_model(builders.conv_bn_relu(), tmp_path / "out" / "m.onnx")
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
