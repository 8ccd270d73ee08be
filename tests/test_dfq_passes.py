"""Data-free accuracy passes: CLE, high-bias absorption, analytic bias correction, DF-MPC (issue 7)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import compile_state, normal_feeds, run, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.absorb_bias import AbsorbHighBias
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.bias_correction import CorrectBias
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.dfmpc import CompensateDFMPC
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.equalize import CLIP_SIGMA, EqualizeCrossLayer
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.quant_groups import FindQuantGroups
from onnx import TensorProto, helper, numpy_helper

import dfq_onnx
from dfq_onnx.cli import _options, _parser
from dfq_onnx.core import ir, numerics
from dfq_onnx.core.state import BitPlan
from dfq_onnx.corrections import formulas as cm
from dfq_onnx.corrections.layer_pairs import find_pairs

RTOL = 1e-5


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _mlp(k: int = 16, h: int = 12, n: int = 6, beta_shift: float = 0.0, seed: int = 0,
         act: str = "Relu") -> onnx.ModelProto:
    """input [N, k] -> fc1 (Gemm) -> bn -> `act` -> fc2 (Gemm, transB=1) -> output: no padding anywhere."""
    rng = np.random.default_rng(seed)
    init = numpy_helper.from_array
    gamma = rng.uniform(0.5, 1.5, h).astype(np.float32)
    beta = (rng.normal(0.0, 0.3, h) + beta_shift * (np.arange(h) % 2)).astype(np.float32)
    inits = [init((rng.standard_normal((k, h)) * rng.uniform(0.05, 3.0, h) / np.sqrt(k)).astype(np.float32),
                  "fc1.weight"),
             init(rng.normal(0, 0.1, h).astype(np.float32), "fc1.bias"),
             init(gamma, "bn.scale"), init(beta, "bn.bias"), init(np.zeros(h, np.float32), "bn.mean"),
             init(np.ones(h, np.float32), "bn.var"),
             init((rng.standard_normal((n, h)) / np.sqrt(h)).astype(np.float32), "fc2.weight"),
             init(rng.normal(0, 0.1, n).astype(np.float32), "fc2.bias")]
    nodes = [helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1"),
             helper.make_node("BatchNormalization", ["fc1_out", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
                              ["bn_out"], name="bn"),
             helper.make_node(act, ["bn_out"], ["relu_out"], name="relu"),
             helper.make_node("Gemm", ["relu_out", "fc2.weight", "fc2.bias"], ["output"], name="fc2",
                              transB=1)]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "mlp", [vi("input", TensorProto.FLOAT, ["N", k])],
                              [vi("output", TensorProto.FLOAT, ["N", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return builders.with_data_bn_stats(model, n=4096)


FP32_MODELS = {name: build for name, build in builders.GOOD_BUILDERS.items()}


@pytest.mark.parametrize("name", sorted(FP32_MODELS))
@pytest.mark.parametrize("passes", ["cle", "cle-act", "absorb", "cle+absorb"])
def test_passes_preserve_fp32(name, passes):
    model = builders.with_data_bn_stats(FP32_MODELS[name]()) if name != "constant_weights" else \
        FP32_MODELS[name]()
    extra = {"cle": [EqualizeCrossLayer()], "cle-act": [EqualizeCrossLayer(criterion="activations")],
             "absorb": [AbsorbHighBias(padded=True)],
             "cle+absorb": [EqualizeCrossLayer(), AbsorbHighBias()]}[passes]
    ref = compile_state(model, [Normalize(), FoldBatchNorm()])
    state = compile_state(model, [Normalize(), FoldBatchNorm(), *extra])
    feeds = normal_feeds(model, n=8, seed=3)
    for a, b in zip(run(state_model(state), feeds), run(state_model(ref), feeds)):
        assert _rel_err(a, b) < RTOL, name


def test_cle_balances_ranges_as_the_formula_says():
    model = builders.conv_bn_relu(c_mid=8)
    ref = compile_state(model, [Normalize(), FoldBatchNorm()])
    w1 = ref.graph.nodes[0].inputs[1].values
    w2 = ref.graph.nodes[2].inputs[1].values
    r1, r2 = np.abs(w1).max(axis=(1, 2, 3)), np.abs(w2).max(axis=(0, 2, 3))
    assert np.max(r1 / r2) / np.min(r1 / r2) > 1.5            # unbalanced before
    state = compile_state(model, [Normalize(), FoldBatchNorm(), EqualizeCrossLayer()])
    conv1, _, conv2 = state.graph.nodes
    r1e = np.abs(conv1.inputs[1].values).max(axis=(1, 2, 3))
    r2e = np.abs(conv2.inputs[1].values).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1e, np.sqrt(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(r2e, np.sqrt(r1 * r2), rtol=1e-5)
    # BN statistics follow the rescaling: beta_i / s_i with s_i = sqrt(r1_i / r2_i)
    s = np.sqrt(r1 / r2)
    np.testing.assert_allclose(state.bn_stats["conv1"].beta, ref.bn_stats["conv1"].beta / s, rtol=1e-6)
    notes = state.report.notes["cross_layer_equalization"]
    assert [p["pair"] for p in notes["pairs"]] == ["conv1 -> conv2"]
    # a second run changes nothing
    again = EqualizeCrossLayer().run(state)
    assert again.modified is False


def test_cle_depthwise_chain_and_relu6_bound():
    model = builders.with_data_bn_stats(builders.conv_clip6(c=16), n=1024)
    ref = compile_state(model, [Normalize(), FoldBatchNorm()])
    sat = np.arange(16) % 3 == 0
    for layer in ("conv1", "dw"):   # channels sat reach the Clip bound of 6, the others stay far below
        st = ref.bn_stats[layer]
        ref.bn_stats[layer] = type(st)(**{**vars(st), "beta": st.beta + 5.0 * sat,
                                          "gamma": np.where(sat, st.gamma, 0.05 * st.gamma)})
    top = ref.bn_stats["conv1"].beta + CLIP_SIGMA * np.abs(ref.bn_stats["conv1"].gamma)
    before = ref.graph.nodes[0].inputs[1].values.copy()
    EqualizeCrossLayer().run(ref)
    pairs = [p["pair"] for p in ref.report.notes["cross_layer_equalization"]["pairs"]]
    assert pairs == ["conv1 -> dw", "dw -> pw"]
    s = np.abs(before).max(axis=(1, 2, 3)) / np.abs(ref.graph.nodes[0].inputs[1].values).max(axis=(1, 2, 3))
    assert np.all(top[sat] >= 6.0)
    np.testing.assert_allclose(s[sat], 1.0, rtol=1e-6)                # may reach the bound: never rescaled
    assert np.max(np.abs(np.log(s[~sat]))) > 0.05                      # the others are equalized ...
    assert np.all(top[~sat] / s[~sat] <= 6.0 + 1e-6)                   # ... without reaching the bound


def test_residual_pairs_skipped_with_reason():
    state = compile_state(builders.conv_bn_relu_residual(), [Normalize(), FoldBatchNorm()])
    pairs, skipped = find_pairs(state.graph)
    assert [p.label for p in pairs] == ["conv1 -> conv2"]
    reasons = {s["layer"]: s["reason"] for s in skipped}
    assert "(Add) is not per-channel scale-equivariant" in reasons["conv2"]   # the residual Add
    assert "graph output" in reasons["fc"]


def test_absorption_moves_bias_and_keeps_function():
    model = _mlp(beta_shift=6.0)
    ref = compile_state(model, [Normalize(), FoldBatchNorm()])
    state = compile_state(model, [Normalize(), FoldBatchNorm(), AbsorbHighBias(sigma=5.0)])
    (done,) = state.report.notes["bias_absorption"]["pairs"]
    assert done["pair"] == "fc1 -> fc2" and done["channels"] >= 4
    stats0, stats1 = ref.bn_stats["fc1"], state.bn_stats["fc1"]
    c = np.maximum(0, stats0.beta - 5 * np.abs(stats0.gamma))
    np.testing.assert_allclose(stats1.beta, stats0.beta - c)
    feeds = normal_feeds(model, n=64, seed=2)
    assert _rel_err(run(state_model(state), feeds)[0], run(state_model(ref), feeds)[0]) < RTOL
    assert AbsorbHighBias(sigma=5.0).run(state).modified is False


def test_absorption_skips_padded_conv():
    model = builders.with_data_bn_stats(builders.conv_bn_relu())
    state = compile_state(model, [Normalize(), FoldBatchNorm(), AbsorbHighBias()])
    (skip,) = [s for s in state.report.notes["bias_absorption"]["skipped"] if s["layer"] == "conv1"]
    assert "padding" in skip["reason"]


def test_mean_shift_matches_sampled_error():
    """(W_hat - W) E[x] is the mean output error of a fake-quantized layer on clipped-Gaussian inputs."""
    rng = np.random.default_rng(0)
    k, n = 24, 10
    w = rng.standard_normal((n, k)).astype(np.float32)      # Gemm transB=1 layout [N, K]
    kind = cm.Linear("Gemm", 1, 1)
    scale = numerics.weight_scales(w, 3, 0)
    w_hat = numerics.fake_quant(w, scale, 0, 3, True, 0, narrow=True)
    mu, sigma = rng.normal(0.5, 1.0, k), rng.uniform(0.5, 2.0, k)
    x = np.maximum(rng.normal(mu, sigma, (50_000, k)), 0.0)
    mean, _ = numerics.relu_normal_moments(mu, sigma)
    shift = cm.mean_shift(w_hat, w, mean, kind)
    err = x @ (w_hat - w).T
    np.testing.assert_allclose(err.mean(axis=0), shift, atol=0.02 * np.abs(shift).max())
    corrected = err - shift
    assert np.abs(corrected.mean(axis=0)).max() < 0.05 * np.abs(err.mean(axis=0)).max()


def _uniform(model, w_bits, extra):
    # opset 21: weights below 5 bits are stored as int4 (the pipeline's required_opset does the same)
    passes = [Normalize(21), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(), Calibrate(), UniformPlan()]
    return compile_state(model, passes + extra, weight_bits=w_bits, act_bits=8)


def test_bias_correction_zeroes_mean_output_error():
    model = _mlp(k=32, h=24)
    rng = np.random.default_rng(1)
    feeds = {"input": rng.standard_normal((4096, 32)).astype(np.float32)}
    fp32 = run(model, feeds)[0]
    errors = {}
    for name, extra in (("off", []), ("on", [CorrectBias()])):
        state = _uniform(model, 3, extra)
        EmitQDQ().run(state)
        errors[name] = np.abs((run(state_model(state), feeds)[0] - fp32).mean(axis=0)).max()
    notes = state.report.notes["bias_correction"]
    assert [d["layer"] for d in notes["layers"]] == ["fc2"]          # fc1 reads the graph input: E[x] = 0
    assert errors["on"] < 0.35 * errors["off"], errors


def _measured_correction(model, x: np.ndarray, tmp_path):
    """(max |mean output error| without / with CorrectBias at W3A8, calibrated on x[:512]; the corrected
    state), errors measured on all of x."""
    np.savez(tmp_path / "calib.npz", input=x[:512])
    fp32 = run(model, {"input": x})[0]
    errors = []
    for extra in ([], [CorrectBias()]):
        passes = [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate(), UniformPlan(), *extra]
        state = compile_state(model, passes, weight_bits=3, act_bits=8, calib=str(tmp_path / "calib.npz"))
        EmitQDQ().run(state)
        errors.append(np.abs((run(state_model(state), {"input": x})[0] - fp32).mean(axis=0)).max())
    return errors, state


def test_bias_correction_measures_moments_of_a_bn_free_model(tmp_path):
    """A model whose BN is folded in the file (as PyTorch exports write it) has no analytic estimate: E[x]
    per input channel is measured on the calibration samples and both layers are corrected."""
    folded = state_model(compile_state(_mlp(k=32, h=24), [Normalize(21), FoldBatchNorm()]))
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4096, 32)) + rng.uniform(-1.0, 2.0, 32)).astype(np.float32)   # E[x] != 0
    (off, on), state = _measured_correction(folded, x, tmp_path)
    notes = state.report.notes["bias_correction"]
    assert sorted(d["layer"] for d in notes["layers"]) == ["fc1", "fc2"], notes
    mean, var = state.input_means["fc1"]
    np.testing.assert_allclose(mean, x[:512].mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, x[:512].var(axis=0), rtol=1e-3)
    assert on < 0.35 * off, (off, on)


def test_bias_correction_measures_what_the_bn_statistics_do_not_reach(tmp_path):
    """fc2 reads a Softplus of BN's output: no analytic estimate, E[x] measured on the calibration
    samples; fc1 reads the standardized graph input (E[x] = 0, skipped)."""
    model = _mlp(k=32, h=24, beta_shift=1.0, act="Softplus")
    x = np.random.default_rng(1).standard_normal((4096, 32)).astype(np.float32)
    (off, on), state = _measured_correction(model, x, tmp_path)
    notes = state.report.notes["bias_correction"]
    assert [d["layer"] for d in notes["layers"]] == ["fc2"], notes
    assert list(state.input_means) == ["fc2"]
    assert on < 0.35 * off, (off, on)


def test_bias_correction_is_idempotent_and_reported():
    state = _uniform(_mlp(), 4, [CorrectBias()])
    assert CorrectBias().run(state).modified is False
    skipped = {s["layer"]: s["reason"] for s in state.report.notes["bias_correction"]["skipped"]}
    assert "graph input" in skipped["fc1"]


def test_dfmpc_gain_is_least_squares():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    kind = cm.Linear("Conv", 1)
    w_hat = numerics.fake_quant(w, numerics.weight_scales(w, 2, 0), 0, 2, True, 0, narrow=True)
    mu, var = rng.uniform(0, 1, 3), rng.uniform(0.5, 2, 3)
    c = cm.dfmpc_gains(w, w_hat, mu, var, kind)
    x = rng.normal(np.repeat(mu, 9), np.sqrt(np.repeat(var, 9)), (100_000, 27))   # independent taps
    a, b = x @ w_hat.reshape(5, -1).T, x @ w.reshape(5, -1).T
    sampled = (a * b).sum(axis=0) / (a * a).sum(axis=0)      # argmin_c sum (c a - b)^2 on the samples
    np.testing.assert_allclose(c, sampled, atol=0.01)
    assert np.max(np.abs(c - 1.0)) > 0.02                     # 2-bit codes: the gain is not trivially 1
    np.testing.assert_allclose(cm.dfmpc_gains(w, w, mu, var, kind), 1.0)   # no quantization: no change
    np.testing.assert_allclose(cm.mean_shift(w, w, mu, kind), 0.0)


def test_dfmpc_reduces_reconstruction_error_low_to_high():
    model = _mlp(k=32, h=24)
    rng = np.random.default_rng(1)
    feeds = {"input": rng.standard_normal((2048, 32)).astype(np.float32)}
    fp32 = run(model, feeds)[0]
    errs = {}
    for name, extra in (("off", []), ("on", [CompensateDFMPC()])):
        state = compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(),
                                      Calibrate()], act_bits=8)      # opset 21: fc1's W2 is int4
        g_of = {layer: g.id for g in state.groups for layer in g.layers}
        state.plan = BitPlan({g.id: (8, 8) for g in state.groups} | {g_of["fc1"]: (2, 8)})
        for p in extra:
            p.run(state)
        EmitQDQ().run(state)
        errs[name] = float(np.mean((run(state_model(state), feeds)[0] - fp32) ** 2))
    (pair,) = state.report.notes["dfmpc"]["pairs"]
    assert pair["pair"] == "fc1 -> fc2" and state.weight_gain["fc1"].shape == (24,)
    assert errs["on"] < errs["off"], errs


def test_dfmpc_skips_uniform_plans_with_reason():
    state = _uniform(_mlp(), 4, [CompensateDFMPC()])
    assert state.report.notes["dfmpc"]["pairs"] == []
    (skip,) = [s for s in state.report.notes["dfmpc"]["skipped"] if s["layer"] == "fc1"]
    assert "not above" in skip["reason"]


def test_cli_flags():
    args = _parser().parse_args(["quantize", "m.onnx", "-o", "q.onnx", "--cle", "--no-bias-correction",
                                 "--dfmpc", "--bias-absorption"])
    opts = _options(args)
    assert opts.cle and opts.dfmpc and opts.bias_absorption and not opts.bias_correction


def test_mixed_plan_end_to_end_with_all_passes(tmp_path):
    """Every pass on, mixed budget: the probe scores bias-corrected candidates, DF-MPC and CorrectBias
    see the final plan, and the output is a valid QDQ model that runs."""
    model = builders.with_data_bn_stats(builders.conv_bn_relu_residual())
    out, report = dfq_onnx.quantize(model, calib="noise", avg_weight_bits=3.0, progress=False,
                                    cache_dir=str(tmp_path), score_bits=(2, 4, 8), cle=True,
                                    bias_absorption=True, bias_correction=True, dfmpc=True)
    onnx.checker.check_model(out, full_check=True)
    names = [p["pass"] for p in report.passes]
    assert names.index("CrossLayerEqualization") < names.index("FindQuantGroups")
    assert names.index("AllocateBits") < names.index("DFMPC") < names.index("CorrectBias") < \
        names.index("EmitQDQ")
    for key in ("cross_layer_equalization", "bias_absorption", "bias_correction", "dfmpc"):
        assert key in report.notes
    feeds = normal_feeds(model, n=8)
    assert np.all(np.isfinite(run(out, feeds)[0]))


@pytest.mark.parametrize("name", ["conv_bn_relu_residual", "conv_clip6"])
def test_probe_with_bias_correction_equals_emitted_model(name):
    """The sensitivity probe's bias-corrected slots compute what CorrectBias + EmitQDQ write."""
    import copy

    from dfq_onnx.passes.bias_correction import input_moments

    from dfq_onnx.core.graph_utils import node_label
    from dfq_onnx.core.report import Report
    from dfq_onnx.corrections.layer_pairs import tap_fractions
    from dfq_onnx.sensitivity import probe

    model = builders.with_data_bn_stats(builders.GOOD_BUILDERS[name]())
    state = compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(),
                                  Calibrate()])
    nodes = {node_label(n): n for n in state.graph.nodes}
    means = {k: (m[0], tap_fractions(nodes[k])) for k, m in input_moments(state)[0].items()}
    assert means                                     # something to correct
    pm = probe.build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, (3, 8), 8,
                           input_means=means)
    feeds = normal_feeds(model, n=8, seed=5)
    config = {g: (3, 8)[i % 2] for i, g in enumerate(pm.selects)}
    s = copy.copy(state)
    s.graph, s.report, s.spec = ir.copy_graph(state.graph), Report(), copy.deepcopy(state.spec)
    s.plan = BitPlan({g.id: (config.get(g.id, 8), 8) for g in state.groups})
    CorrectBias().run(s)
    assert s.report.notes["bias_correction"]["layers"]
    EmitQDQ().run(s)
    want = probe.session(state_model(s), optimize=False).run(None, feeds)[0]
    got = probe.Probe(pm, optimize=False).run(config, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_cle_activation_criterion_balances_activation_and_weight_columns():
    """criterion="activations": a_i / s_i = r2_i s_i, a_i the channel's analytic activation range."""
    from dfq_onnx.core.moments import laplace_clip_k

    model = builders.with_data_bn_stats(builders.conv_bn_relu(c_mid=8))
    ref = compile_state(model, [Normalize(), FoldBatchNorm()])
    st = ref.bn_stats["conv1"]
    a = np.clip(st.beta + laplace_clip_k(8) * np.abs(st.gamma), 0, None)
    r2 = np.abs(ref.graph.nodes[2].inputs[1].values).max(axis=(0, 2, 3))
    state = compile_state(model, [Normalize(), FoldBatchNorm(), EqualizeCrossLayer(criterion="activations")])
    st2 = state.bn_stats["conv1"]
    a2 = np.clip(st2.beta + laplace_clip_k(8) * np.abs(st2.gamma), 0, None)
    r2e = np.abs(state.graph.nodes[2].inputs[1].values).max(axis=(0, 2, 3))
    np.testing.assert_allclose(a2, np.sqrt(a * r2), rtol=1e-5)
    np.testing.assert_allclose(r2e, np.sqrt(a * r2), rtol=1e-5)
    assert state.report.notes["cross_layer_equalization"]["criterion"] == "activations"
