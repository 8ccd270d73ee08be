"""Activation precision as an allocation decision: groups, the switch probe, the default rule, Emit."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import onnx
import pytest
from _util import (
    compile_state,
    nodes_by_op,
    normal_feeds,
    padded_token_feeds,
    run,
    sqnr_db,
    state_model,
    static_matmul_target,
)
from dfq_onnx.models import act_builders, builders, token_builders
from dfq_onnx.passes.act_precision import node_work
from dfq_onnx.passes.act_terms import act_evaluator
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.core.errors import DfqError, UsageError
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import FLOAT_BITS, BitPlan
from dfq_onnx.core.target import load_target
from dfq_onnx.sensitivity import probe
from dfq_onnx.sensitivity.act_scoring import scored_bits, switchable


def _state(model, target="ort-cpu", **options):
    options.setdefault("calib", "noise")
    return compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate()],
                         target=target, **options)


def _emit(state, acts: dict[str, int]) -> onnx.ModelProto:
    s = copy.copy(state)
    s.graph, s.report = ir.copy_graph(state.graph), Report()
    s.plan = BitPlan({g.id: (8, 8) for g in state.groups}, acts=acts)
    EmitQDQ().run(s)
    return state_model(s)


def _group_of(state, tensor: str) -> str:
    return next(ag.id for ag in state.act_groups if tensor in ag.tensors)


def test_act_groups_are_the_encoding_classes_with_readers_and_writers():
    state = _state(act_builders.outlier_attention(), target="generic")
    spec = state.spec
    assert sorted(t for ag in state.act_groups for t in ag.tensors) == sorted(spec.act_tensors)
    for ag in state.act_groups:
        assert {spec.encoding_of[t] for t in ag.tensors} == {ag.rep}
        assert ag.choices == (8, 16, 32)
    f2 = next(ag for ag in state.act_groups if "f2_out" in ag.tensors)
    assert f2.writers == ("f2",) and f2.elements == 8 * 16       # [N, 8, 16]
    probs = next(ag for ag in state.act_groups if "probs_out" in ag.tensors)   # Softmax output (generic)
    # the attention-context MatMul of two activations is quantized like an elementwise op (quant_groups)
    assert "ctx" in probs.readers and probs.writers == ("softmax",)
    # a shared Concat encoding (qnn-htp) is one group; its fixed outputs are not a decision
    htp = _state(builders.concat_branches(), target="qnn-htp")
    concat = next(ag for ag in htp.act_groups if "cat_out" in ag.tensors)
    assert {"relu_a_out", "relu_b_out", "cat_out", "pool_out"} <= set(concat.tensors)


@pytest.mark.parametrize("name", ["outlier_residual", "conv_bn_relu_residual", "concat_branches",
                                  "conv_clip6"])
def test_switch_probe_is_exact(name):
    model = getattr(act_builders, name, None) or builders.GOOD_BUILDERS[name]
    model = model()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=1)
    groups = switchable(state.act_groups)
    pm = probe.build_probe(state.graph, state.spec, [], state.ranges, state.target, (), 8,
                           act_groups=tuple(groups), act_choices=scored_bits(groups))
    fixed = probe.build_probe(state.graph, state.spec, [], state.ranges, state.target, (), 8)
    every8 = {ag.id: 8 for ag in groups}
    got = probe.Probe(pm, optimize=False).run(every8, feeds)
    want = probe.Probe(fixed, optimize=False).run({}, feeds)
    for g, w in zip(got, want):        # switches at A8 = Emit's fixed Q/DQ (absorbed Relu or not)
        np.testing.assert_array_equal(g, w)
    fp32 = probe.session(ir.to_model(ir.copy_graph(state.graph), ir_version=10), optimize=False)
    np.testing.assert_array_equal(probe.Probe(pm, optimize=False).run({}, feeds)[0], fp32.run(None, feeds)[0])
    seg = probe.Probe(pm, optimize=False, segmented=True)
    half = {ag.id: 8 for ag in groups[::2]}
    for config in ({}, every8, half):
        np.testing.assert_array_equal(seg.run_batch(config, feeds, key=0)[0],
                                      probe.Probe(pm, optimize=False).run(config, feeds)[0])


def test_emit_writes_the_chosen_precisions_and_matches_the_probe():
    model = act_builders.outlier_residual()
    state, feeds = _state(model, target="generic"), normal_feeds(model, n=8, seed=2)
    conv2, b0 = _group_of(state, "conv2_out"), _group_of(state, "b0out_out")
    emitted = _emit(state, {conv2: 16, b0: FLOAT_BITS})
    onnx.checker.check_model(emitted, full_check=True)
    q = {n.input[0]: n for n in nodes_by_op(emitted, "QuantizeLinear")}
    zp = {t.name: t for t in emitted.graph.initializer}
    assert zp[q["conv2_out"].input[2]].data_type == onnx.TensorProto.UINT16
    assert "b0out_out" not in q and "add_out" not in q              # float: no Q/DQ, Relu stays
    assert [n for n in emitted.graph.node if n.op_type == "Relu" and n.output[0] == "b0out_out"]
    dw_bias = next(n for n in emitted.graph.node if n.name == "dw").input[2]
    assert dw_bias in zp and zp[dw_bias].data_type == onnx.TensorProto.FLOAT   # float input: float bias
    groups = switchable(state.act_groups)
    pm = probe.build_probe(state.graph, state.spec, [], state.ranges, state.target, (), 8,
                           act_groups=tuple(groups), act_choices=scored_bits(groups), fixed_weight_bits=8)
    config = {**{ag.id: 8 for ag in groups}, conv2: 16, b0: None}
    got = probe.Probe(pm, optimize=False).run(config, feeds)[0]
    want = probe.session(emitted, optimize=False).run(None, feeds)[0]
    step = float(np.abs(want).max()) / 255     # int32-bias rounding of the probe at the A8 input scale
    assert np.abs(got - want).max() <= 2 * step


def test_default_leaves_the_outlier_tensor_float_on_ort_cpu(tmp_path):
    """The mechanism, under a permissive allowance (on this 6-node model a float group's elements are a
    large share of its cost: the 2 % of ort-cpu keeps it A8, next test)."""
    model = act_builders.outlier_attention()
    feeds = normal_feeds(model, n=16, seed=5)
    target = static_matmul_target(tmp_path, allowance=100.0)
    out, report = dfq_onnx.quantize(model, target=target, calib="noise", progress=False, use_cache=False)
    base, _ = dfq_onnx.quantize(model, target=target, calib="noise", progress=False, act_bits=8)
    notes = report.notes["activations"]
    chosen = {k: o["choice"] for k, o in notes["outliers"].items()}
    f2 = next(k for k, o in notes["outliers"].items() if o["tensors"] == ["f2_out"])
    assert chosen[f2] == FLOAT_BITS
    assert "f2_out" not in {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")}
    assert "f2_out" in {n.input[0] for n in nodes_by_op(base, "QuantizeLinear")}
    assert notes["measured"]["chosen"] < notes["measured"]["all_base"] / 2
    ref = run(model, feeds)[0]
    err = {k: float(np.mean((run(m, feeds)[0] - ref) ** 2)) for k, m in (("chosen", out), ("a8", base))}
    assert err["chosen"] < err["a8"] / 2, err                  # measured in ORT, fused kernels and all


def test_a_float_group_pays_for_its_elements_within_the_allowance(tmp_path):
    """ort-cpu prices a float group per element ([activation] element_cost: the elementwise kernels,
    layout changes and Q/DQ it adds) besides its weighted nodes' MACs; beyond the allowance it stays A8."""
    model = act_builders.outlier_attention()
    _, report = dfq_onnx.quantize(model, target=static_matmul_target(tmp_path), calib="noise",
                                  progress=False, use_cache=False)
    notes = report.notes["activations"]
    f2 = next(k for k, o in notes["outliers"].items() if o["tensors"] == ["f2_out"])
    assert notes["outliers"][f2]["choice"] == 8
    state = _state(model, target=static_matmul_target(tmp_path))
    ag = next(a for a in state.act_groups if a.tensors == ("f2_out",))
    assert ag.elements * state.target.act_element_cost[FLOAT_BITS] > notes["cost_allowance"] > 0


def test_a_chosen_plan_that_measures_worse_than_all_a8_is_not_applied(tmp_path, monkeypatch):
    """The ILP adds per-group terms; when the measured plan is worse (groups interact), all-A8 stays."""
    import dfq_onnx.passes.act_precision as ap

    monkeypatch.setattr(ap, "measured", lambda state, ev, chosen: {"all_base": 0.1, "chosen": 0.2})
    model = act_builders.outlier_attention()
    target = static_matmul_target(tmp_path, allowance=100.0)
    out, report = dfq_onnx.quantize(model, target=target, calib="noise", progress=False, use_cache=False)
    base, _ = dfq_onnx.quantize(model, target=target, calib="noise", progress=False, act_bits=8)
    notes = report.notes["activations"]
    assert "measured worse" in notes["reverted"]
    assert all(o["choice"] == 8 for o in notes["outliers"].values())
    assert any(o["proposed"] == FLOAT_BITS for o in notes["outliers"].values())
    assert out.SerializeToString() == base.SerializeToString() or \
        {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")} == \
        {n.input[0] for n in nodes_by_op(base, "QuantizeLinear")}


def test_a16_where_float_does_not_fit_the_cost_allowance(tmp_path):
    """generic costs bit operations: A16 on conv2's output costs its MACs x 1, float x 3; an allowance
    between the two leaves A16 as the only fix of the outlier."""
    model = act_builders.outlier_residual()
    state = _state(model, target="generic")
    work = node_work(state)
    share = 2 * work["conv2"] / sum(work.values())
    path = tmp_path / "generic_a16.toml"
    path.write_text(open(load_target("generic").source).read().replace("cost_allowance = 0.1",
                                                                       f"cost_allowance = {share}"))
    out, report = dfq_onnx.quantize(model, target=str(path), calib="noise", progress=False, use_cache=False)
    chosen = {o["tensors"][0]: o["choice"] for o in report.notes["activations"]["outliers"].values()}
    assert chosen["conv2_out"] == 16
    assert any(o.domain in ("", "ai.onnx") and o.version >= 21 for o in out.opset_import)
    onnx.checker.check_model(out, full_check=True)
    run(out, normal_feeds(model, n=4))


def test_a_model_without_outliers_is_emitted_as_before():
    model = builders.conv_bn_relu_residual()
    out, report = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    base, _ = dfq_onnx.quantize(model, calib="noise", progress=False, act_bits=8)
    assert not report.notes["activations"]["outliers"]
    assert ir.serialize(out) == ir.serialize(base)


def test_default_is_deterministic():
    model = act_builders.outlier_attention()
    a, _ = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    b, _ = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    assert ir.serialize(a) == ir.serialize(b)


def test_act_bits_32_is_weight_only_quantization():
    model = act_builders.outlier_residual()
    out, report = dfq_onnx.quantize(model, calib="noise", progress=False, act_bits=32)
    assert not nodes_by_op(out, "QuantizeLinear")
    weighted = sum(n.op_type in ("Conv", "Gemm") for n in model.graph.node)
    assert len(nodes_by_op(out, "DequantizeLinear")) == weighted
    assert "activations" not in report.notes
    with pytest.raises(DfqError, match="no float activations"):
        dfq_onnx.quantize(model, target="qnn-htp", calib="noise", progress=False, act_bits=32)
    with pytest.raises(UsageError, match="32: float"):
        dfq_onnx.quantize(model, calib="noise", progress=False, act_bits=12)


def test_analytic_calibration_runs_no_activation_scoring():
    _, report = dfq_onnx.quantize(act_builders.outlier_residual(), calib="analytic", progress=False)
    assert "--calib analytic" in report.notes["activations"]["skipped"]


def test_activation_terms_are_cached(tmp_path):
    model, target = act_builders.outlier_attention(), static_matmul_target(tmp_path, allowance=100.0)
    opts = dict(target=target, calib="noise", progress=False, cache_dir=str(tmp_path))
    _, first = dfq_onnx.quantize(model, **opts)
    _, second = dfq_onnx.quantize(model, **opts)
    assert first.forward_passes > second.forward_passes
    assert first.notes["activations"]["outliers"] == second.notes["activations"]["outliers"]


def test_screening_finds_the_outlier_with_few_evaluations():
    model = act_builders.outlier_residual(blocks=4)
    state = _state(model)
    from dfq_onnx.passes.sensitivity import SensitivityOptions, scoring_data

    from dfq_onnx.sensitivity.act_scoring import score_activations

    samples, labels = scoring_data(state, SensitivityOptions(samples=32))
    ev = act_evaluator(state, samples, labels, "auto")
    terms = score_activations(ev, state.act_groups, 8)
    assert _group_of(state, "conv2_out") in terms.singles
    assert terms.evaluations < 2 * len(terms.groups)
    assert dataclasses.asdict(terms)["weight_loss"] == pytest.approx(float(ev.loss({})[0]))


@pytest.mark.parametrize("allocator", ["ilp", "ilp-pairs", "greedy"])
def test_mixed_budget_decides_activations_jointly(allocator, tmp_path):
    model, target = act_builders.outlier_attention(), static_matmul_target(tmp_path, allowance=100.0)
    out, report = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False, target=target,
                                    avg_weight_bits=6, allocator=allocator, score_bits=(2, 4, 6, 8))
    alloc = report.notes["allocation"]
    f2 = next(k for k, o in report.notes["activations"]["outliers"].items() if o["tensors"] == ["f2_out"])
    assert alloc["acts"][f2] == FLOAT_BITS and alloc["avg_weight_bits"] <= 6 + 1e-9
    assert "f2_out" not in {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")}
    # the written plan is measured on the probe with activation switches; it beats all-A8 at the same bits
    base, rep8 = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False, act_bits=8,
                                   target=target, avg_weight_bits=6, allocator=allocator,
                                   score_bits=(2, 4, 6, 8))
    assert alloc["measured_loss"] < rep8.notes["allocation"]["measured_loss"]
    feeds = normal_feeds(model, n=8, seed=9)
    ref = run(model, feeds)[0]
    assert np.mean((run(out, feeds)[0] - ref) ** 2) < np.mean((run(base, feeds)[0] - ref) ** 2)


def test_cli_and_report_say_what_was_decided(tmp_path, capsys):
    from dfq_onnx.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(act_builders.outlier_attention(), src)
    argv = ["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", "noise", "--no-cache",
            "--target", static_matmul_target(tmp_path, allowance=100.0)]
    assert main(argv + ["--report", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"activations: [1-9]\d* outlier groups of \d+ \([1-9]\d* float\)", out), out
    assert "output loss" in out
    html = (tmp_path / "r.html").read_text()
    assert "Activation precision" in html and "f2_out" in html and "left float by the plan" in html
    assert main(argv + ["--act-bits", "8"]) == 0
    assert "activations:" not in capsys.readouterr().out      # --act-bits: a uniform plan, nothing decided


@pytest.mark.parametrize("name", ["outlier_attention", "outlier_residual"])
def test_scoring_terms_do_not_depend_on_the_chunk_size(name, tmp_path):
    """Rows are independent: the weight and activation terms are identical in any chunking (static
    MatMuls: a dynamic int8 form quantizes each run's tensor as a whole, as ORT does at deployment)."""
    from dfq_onnx.passes.sensitivity import SensitivityOptions, score

    model = getattr(act_builders, name)()
    tables = []
    for batch in (1, 7, None):
        state = _state(model, target=static_matmul_target(tmp_path), calib_samples=24)
        opts = SensitivityOptions(weight_bits=(4, 8), batch=batch, use_cache=False, progress=False, hops=1)
        tables.append(score(state, opts)[0])
    for t in tables[1:]:
        assert t.singles == tables[0].singles and t.pairs == tables[0].pairs
        assert t.activations["singles"] == tables[0].activations["singles"]
        assert t.activations["screened"] == tables[0].activations["screened"]


def test_the_openvino_target_keeps_a_transformers_outlier_group_float():
    """OpenVINO runs a group without FakeQuantize in f32: the profile offers float per activation group
    (every activation was A8: MiniLM cosine 0.727 to FP32, 0.975 with the choice; builder 11.0 dB)."""
    model = token_builders.token_classifier()
    out, report = dfq_onnx.quantize(model, target="openvino", progress=False, use_cache=False)
    assert 32 in {o["choice"] for o in report.notes["activations"]["outliers"].values()}
    feeds = padded_token_feeds()
    assert sqnr_db(run(model, feeds)[0], run(out, feeds)[0]) > 12.5
    # MatMul + constant bias Add is one OpenVINO layer: no quantizer between them, the bias float
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert "l0_relu_out" in quantized and not {"l0_f1_out", "l0_f1_add_out"} & quantized
    assert not {n.input[0] for n in out.graph.node if n.op_type == "DequantizeLinear"} & {"l0_f1.bias"}
    # an output no quantized op reads stays f32 (f2 feeds the float bias Add and residual)
    assert "l0_f2_out" not in quantized and "l0_f2_add_out" not in quantized
    # attention's products stay f32, and what only feeds them (scores, scale, mask, q / k / v)
    assert "l0_ctx_out" in quantized     # read by the output projection
    assert not {"l0_kT_out", "l0_probs_out", "l0_scores_out", "l0_scaled_out", "mask_bias",
                "l0_q_add_out", "l0_k_add_out", "l0_v_add_out"} & quantized


def test_a_broken_all_a8_plan_puts_its_worst_groups_back_to_float():
    """hard-swish outputs with 500x channel disparity into depthwise convs: the all-A8 plan costs the
    output far more than 16x the W8 weights; the allowance keeps every outlier A8, the joint check floats
    the worst until the plan fits (act_scoring's module docstring), and ORT confirms the gain."""
    model = act_builders.hardswish_disparity()
    feeds = normal_feeds(model, n=16, seed=5)
    out, report = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    base, _ = dfq_onnx.quantize(model, calib="noise", progress=False, act_bits=8)
    notes = report.notes["activations"]
    assert notes["act_loss"] > 16 * notes["weight_loss"]
    joint = notes["joint"]
    assert joint["applied"] and joint["measured"][-1]["loss"] <= joint["bound"]
    assert all(notes["outliers"][k]["choice"] == FLOAT_BITS for k in joint["applied"])
    assert notes["cost"] > notes["cost_allowance"]              # beyond the allowance: accuracy first
    assert notes["measured"]["chosen"] < notes["measured"]["all_base"] / 10
    ref = run(model, feeds)[0]
    err = {k: float(np.sum((run(m, feeds)[0] - ref) ** 2) / np.sum(ref ** 2)) for k, m in (("chosen", out),
                                                                                          ("a8", base))}
    assert err["chosen"] < err["a8"] / 10, err


def test_the_joint_check_resumes_a_capped_screen_and_leaves_sound_plans_alone():
    from dfq_onnx.passes.sensitivity import SensitivityOptions, scoring_data

    from dfq_onnx.sensitivity.act_scoring import score_activations

    def terms(model, **kw):
        state = _state(model)
        samples, labels = scoring_data(state, SensitivityOptions(samples=32))
        return score_activations(act_evaluator(state, samples, labels, "auto"), state.act_groups, 8, **kw)

    capped = terms(act_builders.hardswish_disparity(), max_evals=3)
    assert capped.undecided > 0 and not capped.singles and not capped.joint
    resumed = terms(act_builders.hardswish_disparity(), max_evals=3, extra_evals=60)
    assert resumed.singles and resumed.joint and resumed.evaluations > capped.evaluations
    assert [k for k, _, _ in resumed.joint] == sorted(resumed.joint and [k for k, _, _ in resumed.joint],
                                                      key=lambda k: -resumed.singles[k][8])
    sound = terms(builders.conv_bn_relu_residual(), extra_evals=60)
    assert sound.act_loss <= 16 * sound.weight_loss and not sound.joint
    assert dataclasses.asdict(sound) | {"seconds": 0} == \
        dataclasses.asdict(terms(builders.conv_bn_relu_residual())) | {"seconds": 0}


def test_a_broken_plan_the_budget_leaves_unsearched_is_said(monkeypatch):
    """Where one evaluation of the scoring rows is past the work budget (the cap at its floor: ISNet at
    1024 x 1024 on real photos, 577x), a broken plan gets no extended screen; the compile says so in one
    warning instead of keeping a broken all-A8 plan silently. A plan the budget searched says nothing."""
    from dfq_onnx.passes import act_precision, act_terms

    model = act_builders.hardswish_disparity()
    for module in (act_precision, act_terms):
        monkeypatch.setattr(module, "evaluations", lambda rows, elements: 3)
    monkeypatch.setattr(act_terms, "broken_evaluations", lambda rows, elements, factor: 0)
    _, report = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    notes = report.notes["activations"]
    assert notes["act_loss"] > 16 * notes["weight_loss"] and "joint" not in notes
    assert any("outlier groups were not searched" in w for w in report.warnings)
    monkeypatch.undo()
    _, searched = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    assert searched.notes["activations"]["joint"]["applied"]
    assert not any("not searched" in w for w in searched.warnings)
