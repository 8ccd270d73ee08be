"""dfq_onnx.core.ir: loading with external data (and refusing unsafe locations), atomic saving."""

from __future__ import annotations

import onnx
import pytest
from _util import point_external_data_to
from dfq_onnx.models import builders

from dfq_onnx.core import declared_io, ir, model_files
from dfq_onnx.core.errors import ModelLoadError


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


@pytest.mark.parametrize("location, words", [("../outside.bin", "escapes"), ("/etc/passwd", "escapes"),
                                             ("gone.bin", "not found")])
def test_unsafe_or_missing_external_data_is_refused(tmp_path, location, words):
    sub = tmp_path / "model"
    sub.mkdir()
    _save_external(builders.conv_bn_relu(), sub / "m.onnx")
    (tmp_path / "outside.bin").write_bytes((sub / "weights.bin").read_bytes())
    point_external_data_to(sub / "m.onnx", location)
    with pytest.raises(ModelLoadError, match=words) as info:
        ir.load_model(sub / "m.onnx")
    assert location.split("/")[-1] in str(info.value)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = ir.save_model(builders.conv_bn_relu(), tmp_path / "out" / "m.onnx")
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]
    onnx.checker.check_model(str(path), full_check=True)


def test_large_external_data_is_memory_mapped_and_quantizes_identically(tmp_path, monkeypatch):
    # Above ir.LAZY_BYTES the external data stays on disk (memory-mapped at import, never copied into
    # the proto); lower the threshold so a tiny model takes that path.
    import dfq_onnx

    model = builders.conv_bn_relu_residual()
    want, _ = dfq_onnx.quantize(model, progress=False)
    _save_external(model, tmp_path / "m.onnx")
    monkeypatch.setattr(ir, "LAZY_BYTES", 0)
    loaded = ir.load_model(tmp_path / "m.onnx")
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    assert loaded.ByteSize() < 4096                         # structure only, no weights
    graph = ir.to_graph(loaded)
    import numpy as np

    assert isinstance(graph.tensors()["conv1.weight"].values, np.memmap)
    got, _ = dfq_onnx.quantize(tmp_path / "m.onnx", progress=False)
    assert got.SerializeToString() == want.SerializeToString()
    assert ir.model_hash(loaded) == ir.model_hash(ir.load_model(tmp_path / "m.onnx"))


def test_save_above_two_gb_writes_external_data_and_keeps_the_proto(tmp_path, monkeypatch):
    model = builders.conv_bn_relu()
    before = model.SerializeToString()
    monkeypatch.setattr(model_files, "TWO_GB", 100)           # pretend the model is too large to inline
    paths = ir.save_model(model, tmp_path / "big.onnx", return_all=True)
    assert sorted(p.name for p in paths) == ["big.onnx", "big.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert model.SerializeToString() == before               # the caller's proto keeps its data
    ir.check_model(model)
    reloaded = onnx.load(tmp_path / "big.onnx")
    assert [onnx.numpy_helper.to_array(t).tolist() for t in reloaded.graph.initializer] == \
        [onnx.numpy_helper.to_array(t).tolist() for t in model.graph.initializer]


def test_written_files_get_the_usual_mode_not_mkstemp_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = ir.save_model(builders.conv_bn_relu(), tmp_path / "m.onnx")
        ir.write_bytes_atomic(tmp_path / "r.json", b"{}")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "r.json").stat().st_mode & 0o777) == oct(0o644)


def test_ort_sessions_of_models_above_two_gb_go_through_external_data(tmp_path, monkeypatch):
    # Calibration builds ORT sessions from in-memory models; above protobuf's 2 GB limit they are staged
    # with external data. Pretend the limit is tiny: noise calibration must give the same model.
    import dfq_onnx

    model = builders.conv_bn_relu_residual()
    want, _ = dfq_onnx.quantize(model, calib="noise", progress=False)
    monkeypatch.setattr(model_files, "TWO_GB", 1000)
    monkeypatch.setattr(ir, "LIGHT_BYTES", 0)                    # large: inferred without its weights
    real_copy, light = ir.copy_light, []
    monkeypatch.setattr(ir, "copy_light", lambda m, min_bytes: light.append(1) or real_copy(m, min_bytes=256))
    got, report = dfq_onnx.quantize(model, calib="noise", progress=False, output=tmp_path / "q.onnx")
    assert light
    assert report.forward_passes > 0
    assert got.SerializeToString() == want.SerializeToString()   # shape inference ran on a stripped copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]


def _int4_graph():
    """y = x + DequantizeLinear(w: int4, scale 0.5), w = [[-8, -1], [3, 7]]."""
    import numpy as np
    import onnx_graphsurgeon as gs

    w = ir.constant("w", np.array([[-8, -1], [3, 7]]), "int4")
    x, y, dq = (gs.Variable(n, np.float32, [2, 2]) for n in ("x", "y", "dq"))
    nodes = [gs.Node("DequantizeLinear", inputs=[w, ir.constant("s", np.float32(0.5))], outputs=[dq]),
             gs.Node("Add", inputs=[x, dq], outputs=[y])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=21)


@pytest.mark.parametrize("how", ["copy", "reimport", "reimport+copy", "copy+cleanup"])
def test_int4_weight_survives_copy_and_export(how):
    import numpy as np
    import onnxruntime as ort

    graph = _int4_graph()
    if how.startswith("reimport"):
        graph = ir.to_graph(ir.to_model(graph, ir_version=10))
    if "copy" in how:
        graph = ir.copy_graph(graph)
    if how.endswith("cleanup"):
        graph.cleanup().toposort()
    model = ir.to_model(graph, ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    (w,) = [t for t in model.graph.initializer if t.name == "w"]
    assert w.data_type == onnx.TensorProto.INT4           # not widened to INT8
    assert ir.tensor_to_array(w).astype(np.int8).tolist() == [[-8, -1], [3, 7]]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x + 0.5 * np.array([[-8, -1], [3, 7]]))
    assert ir.copy_graph(graph) is not graph and graph.nodes[0].inputs[0].packed_dtype == "int4"


def test_a_stale_output_declaration_gives_way_to_the_inferred_shape(tmp_path):
    """An exporter declared the output with another rank than the graph computes ([N, k] for a 4-D
    map): the graph's passes see the inferred shape -- an activation switch on the output (an If,
    which ORT type-checks against it) loads -- and the written model keeps the source's declaration."""
    import numpy as np
    from _util import compile_state
    from dfq_onnx.passes.normalize import Normalize

    import dfq_onnx
    from dfq_onnx.backends import runtime
    from dfq_onnx.backends.qdq import Encoding
    from dfq_onnx.core.state import ActGroup
    from dfq_onnx.sensitivity.act_switch import insert_act_switches

    model = builders.with_data_bn_stats(builders.conv_bn_relu(hw=8))
    name = model.graph.output[0].name
    declared = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", "k"])
    model.graph.output[0].CopyFrom(declared)
    assert not declared_io.contradicts(["N", "k"], ["N", 7]) and declared_io.contradicts(["N", 3], ["N", 7])
    graph = compile_state(model, [Normalize()]).graph
    assert len(graph.outputs[0].shape) == 4
    enc = Encoding(np.float32(0.05), np.uint8(0), "uint8", 8)
    group = ActGroup(id="a0", rep=name, tensors=(name,), readers=(), writers=(), elements=0, choices=(8,))
    insert_act_switches(graph, [group], {"a0": {8: enc}}, (8,))
    sess = runtime.session(ir.to_model(graph.cleanup().toposort()))
    feeds = {"input": np.ones((2, 3, 8, 8), np.float32), "select_a0": np.array(1, np.int64)}
    assert sess.run(None, feeds)[0].shape[0] == 2
    q, _ = dfq_onnx.quantize(model, output=tmp_path / "q.onnx", progress=False, use_cache=False,
                             latency_check=False)
    assert q.graph.output[0].name == name and declared_io.value_info_shape(q.graph.output[0]) == [None] * 4
