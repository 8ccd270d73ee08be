"""profile-target latency tables and --latency-ms budgets in the ILP."""

from __future__ import annotations

import json

import onnx
import pytest
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.cli import main
from dfq_onnx.core.errors import DfqError


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lat")
    model = tmp / "m.onnx"
    onnx.save(builders.conv_bn_relu_residual(), model)
    out = tmp / "latency.json"
    assert main(["-q", "profile-target", "ort-cpu", str(model), "-o", str(out), "--batch", "2",
                 "--rounds", "1", "--runs", "2", "--threads", "1"]) == 0
    return model, out, str(tmp / "cache")


def test_profile_target_table(table_path):
    _, path, _ = table_path
    t = json.loads(path.read_text())
    assert t["target"] == "ort-cpu" and t["batch"] == 2 and t["base"] == "8x8"
    assert sorted(t["groups"]) == ["g0", "g1", "g3"]          # conv1, conv2, fc (the Add has no weights)
    legal = {"8x8", "6x8", "5x8", "4x8", "3x8", "2x8", "8x16", "4x16", "16x16"}
    for row in t["groups"].values():
        assert set(row["ms"]) == legal and all(v > 0 for v in row["ms"].values())
        assert row["ms"]["5x8"] == row["ms"]["8x8"] and row["ms"]["2x8"] == row["ms"]["4x8"]  # storage
    base_sum = sum(row["ms"]["8x8"] for row in t["groups"].values())
    assert t["overhead_ms"] == pytest.approx(t["model_ms"]["8x8"] - base_sum)
    assert t["predicted_model_ms"]["8x8"] == pytest.approx(t["model_ms"]["8x8"])


def test_profile_target_without_runtime_is_a_usage_error(table_path, tmp_path, capsys):
    model, _, _ = table_path
    assert main(["profile-target", "tensorrt", str(model), "-o", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime" in err[0] and not (tmp_path / "t.json").exists()


def _crafted(path, tmp_path, slow: str) -> str:
    """The measured table with controlled numbers: every class 1 ms, except `slow` (3 ms)."""
    t = json.loads(path.read_text())
    t["overhead_ms"] = 0.5
    for row in t["groups"].values():
        row["ms"] = {k: (3.0 if k == slow else 1.0) for k in row["ms"]}
    out = tmp_path / "crafted.json"
    out.write_text(json.dumps(t))
    return str(out)


def test_binding_latency_budget_changes_the_plan(table_path, tmp_path):
    """avg 5 bits over {2, 4, 8} needs low-bit convs; W4 is the slow class here, so a budget only
    all-fast plans meet moves every layer off W4 (to the lossier W2 or back to W8)."""
    model, path, cache = table_path
    table = _crafted(path, tmp_path, slow="4x8")
    common = dict(calib="noise", avg_weight_bits=5.0, score_bits=(2, 4, 8), hops=0, progress=False,
                  cache_dir=cache, latency_table=table)
    _, free = dfq_onnx.quantize(str(model), **common)
    _, bound = dfq_onnx.quantize(str(model), latency_ms=3.5, **common)
    bits = {r["node"]: r["weight_bits"] for r in free.layers}
    bits_bound = {r["node"]: r["weight_bits"] for r in bound.layers}
    assert bits["conv1"] == 4 and bits["conv2"] == 4
    assert 4 not in bits_bound.values() and bits_bound != bits
    assert free.notes["allocation"]["predicted_latency_ms"] == pytest.approx(0.5 + 3 + 3 + 1)
    assert bound.notes["allocation"]["predicted_latency_ms"] <= 3.5
    with pytest.raises(DfqError, match=r"--latency-ms 3.4 is below .*feasible range 3.5 "):
        dfq_onnx.quantize(str(model), latency_ms=3.4, **common)


def test_latency_table_for_another_target_or_model(table_path, tmp_path):
    model, path, cache = table_path
    with pytest.raises(DfqError, match="measured for target 'ort-cpu'"):
        dfq_onnx.quantize(str(model), target="openvino", calib="noise", avg_weight_bits=5.0,
                          score_bits=(2, 4, 8), hops=0, progress=False, cache_dir=cache,
                          latency_table=str(path), latency_ms=100.0)
    with pytest.raises(DfqError, match="does not match this model"):
        dfq_onnx.quantize(builders.concat_branches(), calib="noise", avg_weight_bits=5.0,
                          score_bits=(2, 4, 8), hops=0, progress=False, cache_dir=cache,
                          latency_table=str(path), latency_ms=100.0)


def test_latency_ms_needs_a_table(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(), path)
    assert main(["quantize", str(path), "-o", str(tmp_path / "o.onnx"), "--latency-ms", "3"]) == 2
    assert "--latency-table" in capsys.readouterr().err


def test_profiled_models_keep_int4_storage():
    """The timed models must store 4-bit weights as INT4 (through copies and a re-import)."""
    from dfq_onnx.passes.emit_qdq import emitted_graph

    from dfq_onnx.backends.latency import concrete, cut_group
    from dfq_onnx.commands.profile_target import _prepared
    from dfq_onnx.core.state import BitPlan
    from dfq_onnx.core.target import load_target

    state = _prepared(builders.conv_bn_relu_residual(), load_target("ort-cpu"), {})
    emitted = emitted_graph(state, BitPlan({g.id: (4, 8) for g in state.groups}))
    graph = concrete(emitted, 2)          # exported and re-imported
    cut = cut_group(graph, state.groups[0].ops)
    full = dfq_onnx.core.ir.to_model(dfq_onnx.core.ir.copy_graph(graph))
    for model in (cut, full):
        assert onnx.TensorProto.INT4 in {t.data_type for t in model.graph.initializer}


def test_profile_target_openvino(table_path, tmp_path):
    pytest.importorskip("openvino")
    from dfq_onnx.commands.profile_target import profile_target

    model, _, _ = table_path
    t = profile_target(model, "openvino", batch=2, rounds=1, runs=1, threads=1)
    assert t["runtime"].startswith("openvino") and sorted(t["groups"]) == ["g0", "g1", "g3"]
    assert t["predicted_model_ms"]["8x8"] == pytest.approx(t["model_ms"]["8x8"])


def test_interleaved_medians_times_every_callable_once_per_round(monkeypatch):
    # a fake clock: each call of a callable advances it by its next duration (ms); the first call of
    # each round is the warm-up, which must not count
    from dfq_onnx.backends import latency

    clock = [0.0]
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    durations = {"a": iter([50, 1, 3, 2, 50, 4, 4, 9]), "b": iter([50, 7, 5, 6, 50, 1, 2, 3])}
    order = []

    def call(k):
        order.append(k)
        clock[0] += next(durations[k]) / 1e3

    fns = {k: (lambda k=k: call(k)) for k in durations}
    out = latency.interleaved_medians(fns, rounds=2, runs=3, warmup=1)
    assert order == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4      # interleaved, whole rounds
    assert {k: [round(ms, 6) for ms in v] for k, v in out.items()} == {"a": [2.0, 4.0], "b": [6.0, 2.0]}



def _spin_entry(sess):
    try:
        return sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:           # not set: ORT's default (spinning)
        return None


def test_timed_onnxruntime_sessions_do_not_spin(monkeypatch):
    """Sessions timed in turn: the idle threads of one must not spin on the cores of the next."""
    from dfq_onnx.backends import runtime
    from dfq_onnx.backends.latency import Timer

    model = builders.conv_bn_relu_residual()
    assert _spin_entry(runtime.session(model)) is None
    made = []
    real = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    Timer("onnxruntime", 1).compile(model)
    assert [_spin_entry(s) for s in made] == ["0"]
