"""ScoreSensitivity: the probe model computes what Emit writes, the terms, metrics, table, cache, options."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import pytest
from _util import compile_state, normal_feeds, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.sensitivity import (
    ScoreSensitivity,
    SensitivityOptions,
    assemble,
    near_pairs,
    score,
)
from onnx import TensorProto, helper, numpy_helper

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.core.errors import DfqError, PassError, UsageError
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan
from dfq_onnx.sensitivity import evaluator, probe
from dfq_onnx.sensitivity.table import SensitivityTable, output_loss, resolve_metrics

PROBED = ["conv_bn_relu_residual", "concat_branches", "conv_clip6", "gemm_bn", "matmul_bn", "shared_weight",
          "conv_silu"]


def _state(model, opset: int = 21, **options):
    return compile_state(model, [Normalize(opset), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(),
                                 Calibrate()], **options)


def _emit(state, plan: dict) -> onnx.ModelProto:
    """Emit's QDQ model for `plan` on a copy of the state."""
    s = copy.copy(state)
    s.graph, s.report = ir.copy_graph(state.graph), Report()
    s.plan = BitPlan({g.id: plan.get(g.id, (8, 8)) for g in state.groups})
    EmitQDQ().run(s)
    return state_model(s)


def _probe(state, bits=(4, 8), **kw):
    return probe.build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, bits, 8, **kw)


def _fp32(state) -> onnx.ModelProto:
    return ir.to_model(ir.copy_graph(state.graph), ir_version=ir.min_ir_version(state.graph.opset))


@pytest.mark.parametrize("name", PROBED)
def test_probe_equals_emitted_model_for_mixed_plans(name):
    model = builders.GOOD_BUILDERS[name]()
    state, feeds = _state(model), normal_feeds(model, n=16, seed=3)
    pm = _probe(state)
    groups = list(pm.selects)
    for config in ({g: 8 for g in groups}, {g: (4, 8)[i % 2] for i, g in enumerate(groups)},
                   {g: (8, 4)[i % 2] for i, g in enumerate(groups)}):
        emitted = _emit(state, {g: (b, 8) for g, b in config.items()})
        want = probe.session(emitted, optimize=False).run(None, feeds)
        got = probe.Probe(pm, optimize=False).run(config, feeds)
        for w, g in zip(want, got):     # same float ops on the same values: bit-exact
            np.testing.assert_array_equal(g, w, err_msg=f"{name} {config}")
        # with ORT's fusions (QLinearConv integer kernels in the emitted model): a few output steps
        fused = probe.session(emitted).run(None, feeds)[0]
        step = float(np.abs(want[0]).max()) / 127
        assert np.abs(probe.Probe(pm).run(config, feeds)[0] - fused).max() <= 4 * step


@pytest.mark.parametrize("bits", [8, 4])
def test_probe_equals_quantize_api_uniform(bits):
    model = builders.conv_bn_relu_residual()
    feeds = normal_feeds(model, n=16, seed=4)
    out, _ = dfq_onnx.quantize(model, weight_bits=bits, calib="analytic", progress=False,
                               bias_correction=False)      # the probe below scores uncorrected weights
    state = _state(model, opset=13 if bits == 8 else 21)
    pm = _probe(state)
    got = probe.Probe(pm, optimize=False).run({g: bits for g in pm.selects}, feeds)[0]
    np.testing.assert_array_equal(got, probe.session(out, optimize=False).run(None, feeds)[0])


def test_fp32_slot_without_activation_quantization_is_the_fp32_model():
    model = builders.conv_bn_relu_residual()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=5)
    p = probe.Probe(_probe(state, quantize_activations=False))
    fp32 = probe.session(_fp32(state)).run(None, feeds)[0]
    np.testing.assert_allclose(p.run({}, feeds)[0], fp32, rtol=1e-6, atol=1e-6)
    assert np.abs(p.run({"g0": 4}, feeds)[0] - fp32).max() > 1e-3     # the selection does something
    with pytest.raises(DfqError, match="not among"):
        p.run({"g0": 2}, feeds)


def _two_branches() -> onnx.ModelProto:
    """x1 -> a1 -> relu -> a2 -> y1 and x2 -> b1 -> relu -> b2 -> y2: no data path between branches."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for br in ("a", "b"):
        for i, (cin, cout) in enumerate(((3, 4), (4, 4)), start=1):
            w = (rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"{br}{i}.weight"))
        nodes += [helper.make_node("Conv", [f"x_{br}", f"{br}1.weight"], [f"{br}1_out"], name=f"{br}1",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{br}1_out"], [f"{br}_relu"], name=f"{br}_relu"),
                  helper.make_node("Conv", [f"{br}_relu", f"{br}2.weight"], [f"y_{br}"], name=f"{br}2",
                                   pads=[1, 1, 1, 1])]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "two_branches",
                              [vi(f"x_{b}", TensorProto.FLOAT, ["N", 3, 6, 6]) for b in "ab"],
                              [vi(f"y_{b}", TensorProto.FLOAT, ["N", 4, 6, 6]) for b in "ab"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pair_terms_of_independent_groups_vanish():
    state = _state(_two_branches())
    groups = {g.layers[0]: g.id for g in state.groups}
    assert set(near_pairs(state.graph, state.groups, hops=5)) == {(groups["a1"], groups["a2"]),
                                                                 (groups["b1"], groups["b2"])}
    samples = normal_feeds(_two_branches(), n=16, seed=6)
    ev = evaluator.Evaluator(probe.Probe(_probe(state)), _fp32(state), samples, None, "mse")
    a, b = groups["a2"], groups["b2"]
    terms = assemble(ev, [a, b], (4, 8), 8, [(a, b)], [4], 8, lam=0.0)
    single = terms["singles"][a][(4, 8)] + terms["singles"][b][(4, 8)]
    assert single > 1e-4 and abs(terms["pairs"][(a, b)][((4, 8), (4, 8))]) < 1e-9 * single
    # the other branch at base changes nothing on a's output: I_a(4) = L(a at 4) - L(a at 8)
    want = ev.loss({a: 4})[0] - ev.loss({a: 8})[0]
    assert terms["incontext"][a][(4, 8)] == pytest.approx(want, rel=1e-9)
    # singles are the damage on top of activation quantization: >= 0 and monotone in the bits
    for g in (a, b):
        assert terms["singles"][g][(4, 8)] >= terms["singles"][g][(8, 8)] >= 0.0


def test_hops_in_a_residual_block():
    state = _state(builders.conv_bn_relu_residual())
    by_layer = {layer: g.id for g in state.groups for layer in g.layers}
    conv1, conv2, fc = by_layer["conv1"], by_layer["conv2"], by_layer["fc"]
    # conv1 -> conv2 (1 hop); conv2 -> add (conv1's group, reads the block input) -> gap -> fc
    assert near_pairs(state.graph, state.groups, hops=1) == [(conv1, conv2)]
    assert set(near_pairs(state.graph, state.groups, hops=3)) == {(conv1, conv2), (conv1, fc), (conv2, fc)}


def test_metrics_against_numpy():
    rng = np.random.default_rng(7)
    ref, test = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, 6)
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    q = np.exp(test) / np.exp(test).sum(1, keepdims=True)
    assert output_loss("kl", ref, test) == pytest.approx(np.mean(np.sum(p * np.log(p / q), 1)))
    ce = -np.mean(np.log(q[np.arange(6), labels])) + np.mean(np.log(p[np.arange(6), labels]))
    assert output_loss("ce", ref, test, labels) == pytest.approx(ce)
    assert output_loss("mse", ref, test) == pytest.approx(np.mean((ref - test) ** 2))
    assert output_loss("sqnr", ref, test) == pytest.approx(np.sum((ref - test) ** 2) / np.sum(ref ** 2))
    assert output_loss("sqnr", ref, ref) == 0.0 and output_loss("kl", ref, ref) == pytest.approx(0.0)
    assert resolve_metrics("auto", [ref, rng.normal(size=(6, 3, 2))], None) == ("kl", "sqnr")
    with pytest.raises(UsageError, match="needs labels"):
        resolve_metrics("ce", [ref], None)
    with pytest.raises(UsageError, match="'box'"):
        resolve_metrics("kl", [rng.normal(size=(6, 4, 1))], None, ["box"])


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    model = builders.conv_bn_relu_residual()
    state = _state(model, calib_samples=32, act_bits=8)   # weights only (activations: test_act_precision)
    # W7 has no storage type on ort-cpu, so it is scored away as illegal: candidates W4A8, W8A8
    opts = SensitivityOptions(weight_bits=(4, 7, 8), cache_dir=str(tmp_path_factory.mktemp("cache")),
                              progress=False, hops=3)
    return state, opts


def test_pass_fills_state_and_report_then_hits_the_cache(scored):
    state, opts = scored
    before = state.forward_passes
    result = ScoreSensitivity(opts).run(state)
    table = state.sensitivity
    assert not result.modified and state.report.notes["sensitivity"]["cache_hit"] is False
    assert table.candidates == ((4, 8), (8, 8))          # W7A8 is not legal on ort-cpu
    assert len(table.groups) == 3 and len(table.pairs) == 3 and table.metric == "kl"
    # 1 FP32 + 1 reference + 3 groups x 2 (singles) + 1 all-base + 3 x 1 (in context) + 3 pairs x 1
    assert table.evaluations == 1 + 6 + 1 + 3 + 3 and table.forward_passes == table.evaluations + 1
    assert state.forward_passes - before == table.forward_passes
    ScoreSensitivity(opts).run(state)
    assert state.report.notes["sensitivity"]["cache_hit"] is True and state.sensitivity == table
    assert state.forward_passes - before == table.forward_passes   # the hit ran nothing


def test_json_round_trip_and_prediction(scored):
    state, opts = scored
    table, _ = score(state, opts)
    again = SensitivityTable.from_json(table.to_json())
    assert again == table
    g, h = table.groups[:2]
    assert table.predict({}) == table.reference_loss
    single = table.reference_loss + table.singles[g][(4, 8)] + table.singles[h][(4, 8)]
    assert table.predict({g: (4, 8), h: 4}, pairs=False) == pytest.approx(single)
    both = single + table.pairs[(g, h)][((4, 8), (4, 8))]
    assert again.predict(BitPlan({g: (4, 8), h: (4, 8)})) == pytest.approx(both)
    with pytest.raises(UsageError, match="W7A8"):
        table.predict({g: (7, 8)})


@pytest.mark.parametrize("kwargs, words", [
    ({"weight_bits": (4, 9)}, "distinct values"), ({"base_bits": 16}, "base bits"),
    ({"hops": -1}, "hops"), ({"pair_bits": (4, 8)}, "pair bits"), ({"pair_bits": (3,)}, "pair bits"),
    ({"metric": "top1"}, "metric"), ({"samples": 1}, "at least 2"),
    ({"shrink": -1.0}, "shrink"), ({"weight_bits": (4, 4, 8)}, "distinct"),
])
def test_bad_options_raise_usage_error(kwargs, words):
    with pytest.raises(UsageError, match=words):
        SensitivityOptions(**kwargs)


def test_base_illegal_on_target_and_ce_without_labels_raise(scored):
    state, _ = scored
    with pytest.raises(UsageError, match="W7A8 is not legal"):
        score(state, SensitivityOptions(weight_bits=(4, 7), base_bits=7, use_cache=False, progress=False))
    with pytest.raises(PassError, match="needs labels"):
        run_passes([ScoreSensitivity(SensitivityOptions(metric="ce", use_cache=False, progress=False))],
                   state)


def test_noise_is_shrunk_to_zero():
    from dfq_onnx.passes.sensitivity import shrink

    assert shrink(np.array([0.1, 0.3, -0.1]), 1.0) == 0.0            # sigma 0.2 > |T|
    assert shrink(np.array([10.0, 9.0, 11.0]), 1.0) == pytest.approx(9.0)
    assert shrink(np.array([-10.0, -9.0, -11.0]), 0.0) == -10.0


def test_static_batch_runs_in_chunks_of_it():
    model = builders.conv_bn_relu()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 2
    state = _state(model, act_bits=8)      # weight terms only: one reference run
    samples = {"input": np.random.default_rng(8).standard_normal((5, 3, 8, 8)).astype(np.float32)}
    opts = SensitivityOptions(weight_bits=(4, 8), use_cache=False, progress=False)
    table, _ = score(state, opts, samples=samples)
    assert table.samples == 4 and table.metric == "sqnr"       # trimmed to 2 runs of the static batch 2
    assert table.forward_passes == 2 * (table.evaluations + 1)


def test_pair_bits_bound_the_pair_candidates(scored):
    state, _ = scored
    opts = SensitivityOptions(weight_bits=(2, 4, 8), pair_bits=(2,), hops=1, use_cache=False, progress=False)
    table, _ = score(state, opts)
    assert table.candidates == ((2, 8), (4, 8), (8, 8))
    assert [list(t) for t in table.pairs.values()] == [[((2, 8), (2, 8))]]
    assert score(state, dataclasses.replace(opts, hops=0))[0].pairs == {}


@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "concat_branches", "conv_silu"])
def test_segmented_probe_equals_the_whole_probe(name):
    """Configurations run from the first changed segment give exactly the whole probe's outputs."""
    model = builders.GOOD_BUILDERS[name]()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=6)
    pm = _probe(state)
    whole, seg = probe.Probe(pm, optimize=False), probe.Probe(pm, optimize=False, segmented=True)
    groups = list(pm.selects)
    configs = [{}, *({g: 4} for g in groups), {g: (4, 8)[i % 2] for i, g in enumerate(groups)}]
    for config in configs:
        for w, g in zip(whole.run(config, feeds), seg.run_batch(config, feeds, key=0)):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} {config}")


def test_segmented_probe_reuses_the_cached_prefix():
    model = builders.conv_bn_relu_residual()
    state, feeds = _state(model), normal_feeds(model, n=4, seed=7)
    pm = _probe(state)
    seg = probe.Probe(pm, optimize=False, segmented=True)
    runner = seg.runner
    assert len(runner.segments) >= 2
    last = sorted(runner.segments[-1]["groups"])[0]
    seg.run_batch({}, feeds, key=0)                       # fills the cache: every segment once
    before = runner.segment_runs
    seg.run_batch({last: 4}, feeds, key=0)                # only the last segment runs
    assert runner.segment_runs - before == 1


def test_segment_cuts_respect_the_cache_bound():
    from dfq_onnx.sensitivity.segments import choose_cuts

    model = builders.conv_bn_relu_residual()
    state = _state(model)
    pm = _probe(state)
    nodes, layers = list(pm.fast_graph.nodes), set(pm.layer_group)
    assert choose_cuts(nodes, layers, set(pm.inputs), 12)      # unbounded: the model has cut points
    sizes = {t: 10**6 for t in pm.fast_graph.tensors()}
    assert choose_cuts(nodes, layers, set(pm.inputs), 12, sizes, max_cache=10**6 - 1) == []
