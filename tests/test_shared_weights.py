"""Compile memory on large models: sessions read the graph's arrays (no copy of the weights in a proto or
its bytes), Normalize keeps no reference into the loaded protos, and the per-pass peak RSS is reported."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from dfq_onnx.models import builders, token_builders
from dfq_onnx.passes.normalize import Normalize

from dfq_onnx.backends import observers, runtime
from dfq_onnx.core import ir, shared_weights
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.report import Report
from dfq_onnx.core.rss import PeakMeter
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.target import load_target


def _normalized(model: onnx.ModelProto) -> CompileState:
    state = CompileState(graph=None, target=load_target("ort-cpu"), options=QuantizeOptions(),
                         report=Report(), source=ir.load_model(model))
    Normalize().run(state)
    return state


def test_a_session_model_shares_the_graphs_arrays_and_computes_the_same(monkeypatch):
    monkeypatch.setattr(shared_weights, "SHARE_BYTES", 64)
    graph = _normalized(builders.conv_bn_relu_residual()).graph
    consts = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    tensors = [t.name for t in graph.outputs]
    shared = observers.range_model(graph, tensors)
    assert shared.arrays and all(a is consts[n]._values for n, a in shared.arrays.items())   # no copy
    inits = {t.name: t for t in shared.graph.initializer}
    assert all(not inits[n].raw_data and inits[n].data_location == onnx.TensorProto.EXTERNAL
               for n in shared.arrays)
    monkeypatch.setattr(shared_weights, "SHARE_BYTES", 1 << 62)
    inline = observers.range_model(graph, tensors)
    assert not inline.arrays and inline.ByteSize() > shared.ByteSize()
    x = {"input": np.random.default_rng(0).standard_normal((4, 8, 8, 8)).astype(np.float32)}
    for a, b in zip(runtime.session(shared).run(None, x), runtime.session(inline).run(None, x)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError):
        ir.serialize(shared)        # its bytes would not hold the weights


def test_the_exported_graph_is_left_as_it_was(monkeypatch):
    monkeypatch.setattr(shared_weights, "SHARE_BYTES", 64)
    graph = _normalized(builders.conv_bn_relu_residual()).graph
    before = ir.serialize(ir.to_model(ir.copy_graph(graph)))
    ir.session_model(graph)
    assert ir.serialize(ir.to_model(ir.copy_graph(graph))) == before


def test_normalize_keeps_no_proto_and_only_the_declarations():
    state = _normalized(builders.conv_bn_relu_residual())
    assert state.source is None and not state.declared.graph.initializer and not state.declared.graph.node
    assert [i.name for i in state.declared.graph.input] == ["input"]
    for t in state.graph.tensors().values():     # every plain constant is an array, not a view of a proto
        if isinstance(t, gs.Constant):
            assert isinstance(t._values, np.ndarray), t.name
    assert all(isinstance(d, onnx.OperatorSetIdProto) for d in state.graph.import_domains)


def test_the_peak_meter_sees_an_allocation_inside_the_stretch():
    with PeakMeter() as meter:
        block = np.ones(64 << 20, np.uint8)     # 64 MiB, touched
        del block
    with PeakMeter() as idle:
        pass
    if meter.peak is None:
        pytest.skip("no /proc and no resource module here")
    assert meter.peak - idle.peak > 0 or meter.peak >= 64 << 20


SCRIPT = """
import json, sys
from dfq_onnx.core.rss import current_rss
import dfq_onnx, onnx, onnxruntime, onnx_graphsurgeon
base = current_rss()
_, report = dfq_onnx.quantize(sys.argv[1], act_bits=8, use_cache=False, progress=False, synth_samples=8)
print(json.dumps({"base": base, "passes": {p["pass"]: p.get("peak_rss_mb") for p in report.passes}}))
"""


def test_after_normalize_the_compile_holds_the_weights_about_once(tmp_path):
    """A 96 MB token encoder: once Normalize returns, the process holds the graph's weights and no copy
    of the loaded model (main before this test held ~3.4x the weights there: the source proto, the
    shape-inferred proto kept alive by the graph's references into it, and the arrays)."""
    model = token_builders.token_encoder(vocab=8192, d=512, ffn=2048, layers=6)
    weights = sum(t.raw_data.__len__() for t in model.graph.initializer)
    path = tmp_path / "enc.onnx"
    onnx.save(model, path)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if got["base"] is None or got["passes"]["FoldBatchNorm"] is None:
        pytest.skip("no /proc here")
    held = got["passes"]["FoldBatchNorm"] * 2**20 - got["base"]
    assert held < 1.6 * weights, (held / weights, got)


def test_memory_mapped_weights_are_shared_with_sessions_too(tmp_path, monkeypatch):
    """Weights above ir.LAZY_BYTES stay memory-mapped in the graph; sessions read those maps in place."""
    import dfq_onnx

    model = builders.conv_bn_relu_residual()
    want, _ = dfq_onnx.quantize(model, progress=False, use_cache=False)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    monkeypatch.setattr(ir, "LAZY_BYTES", 0)
    monkeypatch.setattr(shared_weights, "SHARE_BYTES", 64)
    got, _ = dfq_onnx.quantize(tmp_path / "m.onnx", progress=False, use_cache=False)
    assert got.SerializeToString() == want.SerializeToString()


@pytest.mark.parametrize("options", [{}, {"avg_weight_bits": 5}], ids=["default", "mixed"])
def test_whole_compiles_are_the_same_with_every_constant_shared(monkeypatch, options):
    """The activation decision's probe and segments, the weight probe's If branches, synthesis and
    calibration sessions: the same output whether their constants are shared or serialized."""
    import dfq_onnx

    model = builders.with_data_bn_stats(builders.conv_bn_relu_residual())
    kw = {"progress": False, "use_cache": False, "synth_samples": 8, "synth_steps": 3, **options}
    monkeypatch.setattr(shared_weights, "SHARE_BYTES", 1 << 62)
    inline, _ = dfq_onnx.quantize(model, **kw)
    monkeypatch.setattr(shared_weights, "SHARE_BYTES", 16)
    shared, _ = dfq_onnx.quantize(model, **kw)
    assert shared.SerializeToString() == inline.SerializeToString()
