"""Synthesize: objective values vs numpy on the raw tensors, search progress, determinism, cache, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders, recurrent_builders
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.synthesis_cache import cache_key as _key
from dfq_onnx.passes.synthesize import SynthesisOptions, Synthesize, synthesize

import dfq_onnx
from dfq_onnx.backends import chunks, runtime
from dfq_onnx.core import cache, ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.synth import runner as synth_runner
from dfq_onnx.synth.runner import build_objective
from dfq_onnx.synth.search import Stage, bilinear_matrix, centred_ranks, frequency_bands

SHAPES = {"input": (8, 8, 8)}
SHAPES_FREE = {"input": (3, 8, 8)}
FAST = dict(samples=8, steps=12, population=2, progress=False, use_cache=False)


@pytest.fixture(scope="module")
def bn_state():
    model = builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8, classes=10))
    return compile_state(model, [Normalize(), FoldBatchNorm()])


@pytest.fixture(scope="module")
def free_state():
    """A BN-free classifier (conv - relu - gap - fc, 5 classes)."""
    model = builders.constant_weights(c_in=3, c=8, classes=5, hw=8)
    return compile_state(model, [Normalize(), FoldBatchNorm()])


def _ref(rng, shape=(4, 8, 8, 8)):
    return {"input": rng.standard_normal(shape).astype(np.float32)}


def _numpy_bn_objective(state, x):
    """L_bn + 0.05 * P_in recomputed from the raw BN-output tensors (module docstring formula)."""
    stats = list(state.bn_stats.values())
    sess = runtime.session(runtime.observer_model(state.graph, [s.tensor for s in stats]))
    raw = sess.run(None, {"input": x})
    per_layer = []
    for s, t in zip(stats, raw):
        t = t.astype(np.float64)
        m, sd = t.mean(axis=(2, 3)), t.std(axis=(2, 3))
        err = ((m - s.beta) ** 2 + (sd - np.abs(s.gamma)) ** 2) / (s.gamma ** 2 + s.eps)
        per_layer.append(err.mean(axis=1))
    xd = x.astype(np.float64)
    prior = (xd.mean(axis=(2, 3)) ** 2 + (xd.std(axis=(2, 3)) - 1) ** 2).mean(axis=1)
    return np.mean(per_layer, axis=0) + 0.05 * prior


def test_bn_objective_matches_numpy_on_exposed_tensors(bn_state):
    rng = np.random.default_rng(0)
    objective, runner = build_objective("bn", bn_state.graph, bn_state.bn_stats, SHAPES, _ref(rng), rng)
    assert len(objective.bn) == 2 and all(t.spatial for t in objective.bn)
    x = (rng.standard_normal((6, 8, 8, 8)) * 1.3 + 0.2).astype(np.float32)
    engine = runner.losses(objective, {"input": x}, np.arange(6))
    np.testing.assert_allclose(engine, _numpy_bn_objective(bn_state, x), rtol=1e-4, atol=1e-6)


def test_label_objective_matches_numpy_on_exposed_tensors(free_state):
    rng = np.random.default_rng(1)
    ref = _ref(rng, (10, 3, 8, 8))
    objective, runner = build_objective("label", free_state.graph, {}, {"input": (3, 8, 8)}, ref, rng)
    spec = objective.label
    assert sorted(spec.labels[:5]) == [0, 1, 2, 3, 4]                    # round robin over 5 classes
    assert objective.act == ("conv_out",)                                 # fc's output is the logits
    x = (rng.standard_normal((10, 3, 8, 8)) * 2).astype(np.float32)
    sess = runtime.session(runtime.observer_model(free_state.graph, ["conv_out", "output"]))
    conv, logits = sess.run(None, {"input": x})
    rows, labels = np.arange(10), spec.labels
    other = np.where(np.arange(5)[None, :] == labels[:, None], -np.inf, logits).max(axis=1)
    margin = (logits[rows, labels] - other) / spec.sigma_ref
    np.testing.assert_allclose(objective.margin(runner.run({"input": x}), rows), margin, rtol=1e-5, atol=1e-6)
    xd = x.astype(np.float64)
    tv = sum(np.mean(np.diff(xd, axis=a) ** 2, axis=(1, 2, 3)) for a in (2, 3)) / 2
    peak = np.abs(conv).reshape(10, -1).max(axis=1)
    expected = (np.maximum(0, 3 - margin) + 0.1 * tv / 2
                + 10 * np.maximum(np.log(peak / spec.act_ref[0]), 0) ** 2)
    np.testing.assert_allclose(runner.losses(objective, {"input": x}, rows), expected, rtol=1e-4, atol=1e-6)


def test_search_lowers_bn_loss():
    # Random BN statistics (not fitted to N(0, 1) inputs), so the starting images are far from them.
    state = compile_state(builders.conv_bn_relu_residual(c=8, hw=8, seed=5), [Normalize(), FoldBatchNorm()])
    opts = SynthesisOptions(**{**FAST, "steps": 40, "population": 4}, objective="bn")
    result = synthesize(state.graph, state.bn_stats, opts, "m")
    assert result.objective == "bn" and result.labels is None
    assert result.loss_end < 0.8 * result.loss_start
    x = result.inputs["input"]
    assert x.shape == (8, 8, 8, 8) and x.dtype == np.float32 and np.all(np.abs(x) < 2.5)
    # the one-row probe, initial and final evaluation (8 rows each), 40 steps of 8 samples x 8 candidates:
    assert result.forward_passes == 1 + 1 + 40 + 1
    assert result.samples_evaluated == 1 + 8 + 40 * 8 * 8 + 8


def test_same_seed_same_arrays_other_seed_differs(bn_state):
    def run(seed):
        return synthesize(bn_state.graph, bn_state.bn_stats, SynthesisOptions(**FAST, seed=seed), "m")
    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a.inputs["input"], b.inputs["input"])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.loss_end == b.loss_end
    assert not np.array_equal(a.inputs["input"], c.inputs["input"])


def test_cache_hit_on_rerun_runs_nothing(bn_state, tmp_path, monkeypatch):
    opts = SynthesisOptions(**{**FAST, "use_cache": True}, cache_dir=str(tmp_path))
    first = synthesize(bn_state.graph, bn_state.bn_stats, opts, "hash-a")
    assert not first.cache_hit and len(list((tmp_path / "synthetic").glob("*.npz"))) == 1

    def no_session(*args, **kwargs):
        raise AssertionError("ORT session created on a cache hit")
    monkeypatch.setattr(runtime, "session", no_session)
    again = synthesize(bn_state.graph, bn_state.bn_stats, opts, "hash-a")
    assert again.cache_hit and again.forward_passes == 0 and again.samples_evaluated == 0
    np.testing.assert_array_equal(again.inputs["input"], first.inputs["input"])
    assert (again.loss_start, again.loss_end, again.objective) == (first.loss_start, first.loss_end,
                                                                    first.objective)
    monkeypatch.undo()
    other = synthesize(bn_state.graph, bn_state.bn_stats, opts, "hash-b")     # another model: a miss
    assert not other.cache_hit


def test_cache_key_covers_result_options_only(tmp_path):
    base = SynthesisOptions(steps=5)
    same = SynthesisOptions(steps=5, progress=False, cache_dir=str(tmp_path), use_cache=False)
    key = _key("m", base, "bn", SHAPES, 5)
    assert key == _key("m", same, "bn", SHAPES, 5)
    for other in (_key("m", SynthesisOptions(steps=6), "bn", SHAPES, 6),
                  _key("m", base, "bn+label", SHAPES, 5), _key("m2", base, "bn", SHAPES, 5),
                  _key("m", SynthesisOptions(steps=5, seed=1), "bn", SHAPES, 5),
                  _key("m", base, "bn", {"input": (8, 6, 6)}, 5)):
        assert cache.cache_path("synthetic", other, tmp_path) != cache.cache_path("synthetic", key, tmp_path)
    parts = {"model": "m", "steps": 3}
    path = cache.save_npz_atomic(cache.cache_path("synthetic", parts, tmp_path), {"a": np.arange(3)})
    np.testing.assert_array_equal(cache.load_npz(path)["a"], np.arange(3))
    path.write_bytes(b"not an npz")
    assert cache.load_npz(path) is None                                        # corrupt entry = miss


def test_label_objective_raises_target_margin(free_state):
    def run(steps):
        opts = SynthesisOptions(**{**FAST, "steps": steps, "population": 4})
        return synthesize(free_state.graph, {}, opts, "m")
    start, end = run(0), run(24)       # 0 steps: the prior's samples, the search's starting point
    assert end.objective == "label" and end.labels is not None and start.labels is None
    labels = end.labels

    def target_margin(result):
        logits = runtime.session(runtime.observer_model(free_state.graph, ["output"])).run(
            None, result.inputs)[0]
        rows = np.arange(len(logits))
        other = np.where(np.arange(5)[None, :] == labels[:, None], -np.inf, logits).max(axis=1)
        return logits[rows, labels] - other
    assert target_margin(end).mean() > target_margin(start).mean() + 0.1
    assert end.loss_end < end.loss_start


def test_label_objective_on_a_spatial_output():
    state = compile_state(builders.conv_silu(hw=8), [Normalize(), FoldBatchNorm()])
    result = synthesize(state.graph, {}, SynthesisOptions(**FAST), "m")
    assert result.objective == "label" and set(result.labels) <= set(range(4))
    assert result.loss_end < result.loss_start



def test_layers_not_kept_per_row_have_no_peak_term():
    """An LSTM run along the rows with its state internal, a layer on its final state ([1, 2H] for the
    T rows of a call): that layer has no per-row peak, so the label objective leaves it out (its
    [1, 1] peak beside the [T, 1] ones raised a raw numpy error) and the compile runs to the end."""
    model = recurrent_builders.framed_lstm(summary=True)
    state = compile_state(model, [Normalize(), FoldBatchNorm()])
    rng = np.random.default_rng(0)
    reference = {"frames": rng.standard_normal((6, 64)).astype(np.float32)}
    objective, runner = build_objective("label", state.graph, {}, {"frames": (64,)}, reference, rng)
    assert "conv_out" in objective.act and "head_out" not in objective.act
    _, peaks, _ = objective.split(runner.reference)
    assert peaks.shape == (6, len(objective.act))
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    want = runtime.session(model).run(None, {"frames": x})
    got = runtime.session(out).run(None, {"frames": x})
    assert [g.shape for g in got] == [(20, 1), (1, 32)]
    assert np.abs(got[0] - want[0]).max() < 0.05 * np.abs(want[0]).max()
    assert np.abs(got[1] - want[1]).max() < 0.25 * np.abs(want[1]).max()   # ranged on a call or two

def _held(objective) -> list[str]:
    output = [objective.output] if objective.output else []
    return [t.tensor for t in objective.bn] + list(objective.act) + output


def test_static_batch_and_memory_chunks_give_the_same_losses(bn_state, monkeypatch):
    rng = np.random.default_rng(2)
    x = {"input": rng.standard_normal((10, 8, 8, 8)).astype(np.float32)}
    objective, runner = build_objective("bn", bn_state.graph, bn_state.bn_stats, SHAPES, _ref(rng), rng)
    monkeypatch.setattr(chunks, "DEFAULT_BUDGET", 1)                       # one row per ORT call
    _, small = build_objective("bn", bn_state.graph, bn_state.bn_stats, SHAPES, _ref(rng), rng)
    assert small.rows_per_call == 1
    calls = small.calls
    np.testing.assert_allclose(small.losses(objective, x, np.arange(10)),
                               runner.losses(objective, x, np.arange(10)), rtol=1e-5)
    assert small.calls - calls == 10


def test_rows_per_call_leave_outputs_bitwise_equal_and_bound_memory(bn_state, monkeypatch):
    rng = np.random.default_rng(3)
    x = {"input": rng.standard_normal((10, 8, 8, 8)).astype(np.float32)}
    objective, runner = build_objective("bn", bn_state.graph, bn_state.bn_stats, SHAPES, _ref(rng), rng)
    assert runner.rows_per_call >= 10 and runner.static is None
    whole = runner.run(x)                                     # one call
    runner.rows_per_call = 3                                  # 3 + 3 + 3 + 1 rows
    assert all(np.array_equal(a, b) for a, b in zip(whole, runner.run(x)))
    # no memory pattern: ORT would plan and keep one block per chunk size (3 and 1 here)
    assert runner.session.get_session_options().enable_mem_pattern is False
    # a budget for 5 rows of the live tensors with every BN output held to the end of the call (its
    # statistics are appended to the graph) holds 5 rows; a byte less, 4
    live = chunks.live_bytes_per_row(bn_state.graph, SHAPES, _held(objective))
    for budget, rows in ((chunks.ARENA * live * 5, 5), (chunks.ARENA * live * 5 - 1, 4)):
        monkeypatch.setattr(chunks, "DEFAULT_BUDGET", budget)
        assert build_objective("bn", bn_state.graph, bn_state.bn_stats, SHAPES, _ref(rng), rng)[1] \
            .rows_per_call == rows


def test_search_calls_fit_the_budget_of_every_stage():
    """A label objective reads every conv / gemm output's per-row peak, and ORT keeps those tensors alive
    until it does, at the end of the call (ResNet-56: 577 MB for 256 rows against 65 MB plain). The
    search's calls take as many rows as a Calibrate chunk holding those tensors would (backends/chunks.py,
    the budget issue 14's memory line is read against); they had a budget of their own, 1 GiB, and took
    2.5x the rows here (16,358 for 6,433; ResNet-56 with its BN folded in the file peaked at 0.73 GB,
    its bound 0.68)."""
    from dfq_onnx.models import act_builders

    rng = np.random.default_rng(4)
    graph = compile_state(act_builders.outlier_residual(blocks=6), [Normalize(), FoldBatchNorm()]).graph
    objective, runner = build_objective("label", graph, {}, SHAPES_FREE, _ref(rng, (4, 3, 8, 8)), rng)
    assert len(objective.act) >= 12                             # the peaked conv / gemm outputs
    per_row = chunks.ARENA * chunks.live_bytes_per_row(graph, SHAPES_FREE, _held(objective))
    assert per_row > chunks.ARENA * chunks.live_bytes_per_row(graph, SHAPES_FREE)    # held: more alive
    assert runner.rows_per_call * per_row <= chunks.DEFAULT_BUDGET < (runner.rows_per_call + 1) * per_row


def test_dynamic_spatial_dims_need_input_shape():
    state = compile_state(builders.conv_bn_relu(hw=None), [Normalize(), FoldBatchNorm()])
    with pytest.raises(UsageError, match=r"'input'.*--input-shape input:") as err:
        synthesize(state.graph, state.bn_stats, SynthesisOptions(**FAST), "m")
    # the example names the dynamic sizes, never a size that would run (1 x 1 pixels)
    example = str(err.value).split("--input-shape input:")[1].split()[0]
    assert example.startswith("1,3,<") and example.count("<") == 2 and ",1," not in example + ",", example
    result = synthesize(state.graph, state.bn_stats, SynthesisOptions(**{**FAST, "steps": 2}), "m",
                        input_shapes={"input": (1, 3, 6, 6)})
    assert result.inputs["input"].shape == (8, 3, 6, 6)


def test_bad_inputs_and_options_are_usage_errors(bn_state, free_state):
    graph = ir.copy_graph(bn_state.graph)
    graph.inputs[0].dtype = np.int64
    with pytest.raises(UsageError, match="'input'.*not float32"):
        synthesize(graph, bn_state.bn_stats, SynthesisOptions(**FAST), "m")
    with pytest.raises(UsageError, match="BatchNormalization statistics"):
        synthesize(free_state.graph, {}, SynthesisOptions(**FAST, objective="bn"), "m")
    with pytest.raises(UsageError, match="synth-objective"):
        SynthesisOptions(objective="zeroq")
    with pytest.raises(UsageError):
        SynthesisOptions(samples=0)


def test_pass_sets_calibration_and_report(bn_state, tmp_path):
    state = compile_state(builders.with_data_bn_stats(builders.conv_bn_relu_residual(c=8, hw=8)),
                          [Normalize(), FoldBatchNorm()])
    before = state.forward_passes
    result = Synthesize(SynthesisOptions(**FAST)).run(state)
    assert result.modified is False and "8 samples" in result.summary
    assert state.calib["input"].shape == (8, 8, 8, 8) and state.synthetic.inputs is state.calib
    assert state.forward_passes - before == state.synthetic.forward_passes > 0
    notes = state.report.notes["synthesis"]
    assert notes["objective"] == state.synthetic.objective and notes["cache_hit"] is False


def test_search_helpers():
    u = np.random.default_rng(0).standard_normal((2, 3, 16, 12))
    np.testing.assert_allclose(frequency_bands(u).sum(axis=1), u, atol=1e-5)   # the bands add up
    stage = Stage({"input": u}, factor=4)
    assert stage.dims == 9 + 3 * 4 + 3 * 4 * 3                              # mix + band gains + latent
    np.testing.assert_allclose(stage(np.zeros((2, stage.dims)), np.arange(2))["input"], u, atol=1e-5)
    a = bilinear_matrix(8, 2)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)                         # interpolation rows sum to 1
    np.testing.assert_allclose(a @ np.array([1.0, 1.0]), 1.0)
    ranks = centred_ranks(np.array([[3.0, 1.0, 2.0, 1.0]]))
    np.testing.assert_allclose(ranks, [[0.5, -0.5, 1 / 6, -1 / 6]])         # ties: earlier is better


def _static_batch_graph(graph, hard_reshape: bool):
    """`graph` with input batch fixed to 1; optionally a head that hard-codes it (Reshape to [1, -1])."""
    import onnx_graphsurgeon as gs

    g = ir.copy_graph(graph)
    g.inputs[0].shape = [1] + list(g.inputs[0].shape[1:])
    if hard_reshape:
        out = g.outputs[0]
        flat = gs.Variable("flat_hard", dtype=np.float32)
        g.nodes.append(gs.Node("Reshape", inputs=[out, gs.Constant("hard_shape", np.array([1, -1]))],
                               outputs=[flat]))
        g.outputs = [flat]
    return g


@pytest.mark.parametrize("hard_reshape, rows_per_call", [(False, None), (True, 1)],
                         ids=["batch-freed", "batch-kept"])
def test_static_batch_models(bn_state, hard_reshape, rows_per_call):
    graph = _static_batch_graph(bn_state.graph, hard_reshape)
    rng = np.random.default_rng(3)
    objective, runner = build_objective("bn+label", graph, bn_state.bn_stats, SHAPES, _ref(rng), rng)
    if rows_per_call is None:
        assert runner.static is None and runner.rows_per_call > 100       # the batch axis was freed
    else:
        assert runner.static == 1 and runner.rows_per_call == 1           # Reshape [1, -1] forbids it
    x = {"input": rng.standard_normal((3, 8, 8, 8)).astype(np.float32)}
    calls = runner.calls
    losses = runner.losses(objective, x, np.arange(3))
    assert losses.shape == (3,) and np.all(np.isfinite(losses))
    assert runner.calls - calls == (1 if rows_per_call is None else 3)


def test_unwritable_cache_dir_only_warns(bn_state, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    opts = SynthesisOptions(**{**FAST, "steps": 2, "use_cache": True}, cache_dir=str(blocker))
    result = synthesize(bn_state.graph, bn_state.bn_stats, opts, "m")
    assert not result.cache_hit and "cannot write the synthesis cache" in caplog.text


def test_latent_size_and_step_budget_follow_the_model_size():
    from dfq_onnx.passes.synthesize import MAX_STEPS, MIN_STEPS, budgeted_steps

    from dfq_onnx.synth.search import stage_factors

    assert stage_factors((3, 32, 32), 3) == [8, 4, 2]                  # latent 4, 8, 16 pixels ...
    assert stage_factors((3, 224, 224), 3) == [56, 28, 14]             # ... whatever the input size
    assert stage_factors((3, 48, 192), 3) == [12, 6, 3]                # short side decides
    assert stage_factors((16,), 3) == [1]                              # non-images: the raw input
    calls = []

    def elements(n):
        return lambda: calls.append(n) or (n, 1)
    opts = SynthesisOptions(samples=64)
    assert budgeted_steps(opts, "bn", elements(530_000)) == (0, 0) and not calls   # BN: the prior only
    assert budgeted_steps(opts, "label", elements(100_000)) == (MAX_STEPS, 1)      # small model: all steps
    assert budgeted_steps(opts, "label", elements(1_000_000)) == (23, 1)           # 6e9 / (64 * 4 * 1e6)
    assert budgeted_steps(opts, "bn+label", elements(3_000_000)) == (0, 1)         # < MIN_STEPS: none
    assert MIN_STEPS == 12
    given = SynthesisOptions(samples=32, steps=5)
    assert budgeted_steps(given, "bn", elements(10 ** 9)) == (5, 0)                # given steps are kept


def test_row_elements_measures_shapes_inference_left_unknown(bn_state):
    from dfq_onnx.core import ir as core_ir

    graph = core_ir.copy_graph(bn_state.graph)
    known, passes = synth_runner.row_elements(graph, {"input": (8, 8, 8)})
    assert passes == 0 and known > 0
    for t in graph.tensors().values():
        if t.inputs and t.inputs[0].op in synth_runner.WEIGHTED_LAYERS and t.shape:
            t.shape = [t.shape[0]] + ["?"] * (len(t.shape) - 1)
    assert synth_runner.row_elements(graph, {"input": (8, 8, 8)}) == (known, 1)   # one ORT run, same


def test_default_calibration_is_synthetic_from_the_prior_with_no_ort_run(tmp_path):
    import dfq_onnx
    from dfq_onnx.core import ir

    model = builders.conv_bn_relu_residual(c=8, hw=8)
    first, r1 = dfq_onnx.quantize(model, cache_dir=str(tmp_path), progress=False)
    again, r2 = dfq_onnx.quantize(model, cache_dir=str(tmp_path), progress=False)
    assert r1.model["options"]["calib"] == "synthetic"
    notes = r1.notes["synthesis"]
    assert notes["objective"] == "bn" and notes["steps"] == 0 and notes["forward_passes"] == 0
    assert notes["loss_start"] is None and not list(tmp_path.rglob("*.npz"))      # nothing to cache
    assert ir.serialize(first) == ir.serialize(again)                  # same samples, same model bytes
