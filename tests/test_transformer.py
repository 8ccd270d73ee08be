"""Token models and the ORT CPU emit forms (issue 15): data-free compile, form numerics vs numpy in ONNX
Runtime, 4-bit storage, the clip search, the form probe against Emit."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from _util import compile_state, initializers, nodes_by_op, run, state_model
from dfq_onnx.models import token_builders
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_forms import EmitForms
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

import dfq_onnx
from dfq_onnx.backends import forms
from dfq_onnx.core import blockwise, candidates, ir
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan
from dfq_onnx.sensitivity import probe


def _token_feeds(model: onnx.ModelProto, n: int = 8, seed: int = 3) -> dict[str, np.ndarray]:
    """Token ids from the upper vocabulary (not the pad / unused rows), half the samples padded."""
    rng = np.random.default_rng(seed)
    seq = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    ids = rng.integers(64, 512, (n, seq)).astype(np.int64)
    mask = np.ones((n, seq), np.int64)
    mask[: n // 2, seq // 2:] = 0
    ids[mask == 0] = 0
    names = [i.name for i in model.graph.input]
    return {"input_ids": ids, **({"attention_mask": mask} if "attention_mask" in names else {})}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("build, objective", [(token_builders.token_encoder, "tokens"),
                                               (token_builders.token_lm, "tokens+lm")])   # LM head found
def test_token_model_compiles_with_no_data_to_the_fast_forms(build, objective):
    model = build()
    # latency_check off: these models sit at FP32's speed at batch 1 (~0.15 ms), where the whole-model
    # timing (passes/keep_float.py) may call either side slower from run to run; the forms are the subject
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    onnx.checker.check_model(out, full_check=True)
    ops = {n.op_type for n in out.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger", "GatherBlockQuantized"} <= ops
    # dynamic / weight-only forms need no calibration; the token samples serve ChooseInputForms' gate only
    # (the dynamic plan within 16x the exact form's loss: every MatMul stays dynamic int8)
    assert report.notes["synthesis"]["objective"] == objective and report.notes["forms"]["chosen"] == []
    feeds = _token_feeds(model)
    want, got = run(model, feeds)[-1], run(out, feeds)[-1]
    assert _cosine(want, got).min() > 0.99
    again, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    assert again.SerializeToString() == out.SerializeToString()
    mixed, report = dfq_onnx.quantize(model, progress=False, use_cache=False, avg_weight_bits=6)
    assert report.notes["synthesis"]["objective"] == objective     # scoring samples with no data
    assert report.notes["allocation"]["avg_weight_bits"] <= 6 + 1e-9
    # the default latency cap (allocation/form_cost.py) keeps the MatMuls on the int8 kernel: 4-bit
    # weights there are dynamic int8 (per-column asymmetric), not the slower, more exact MatMulNBits
    cap = report.notes["allocation"]["form_latency"]
    assert cap["plan"] <= cap["limit"]
    assert _cosine(want, run(mixed, feeds)[-1]).mean() > 0.98
    assert _cosine(want, run(mixed, feeds)[-1]).min() > 0.94
    skipped = {s["layer"]: s["reason"] for s in report.notes["bias_correction"]["skipped"]}
    assert all("target form" in skipped[g] for g in ("l0_q", "l0_f2"))      # says why, per layer


def _one_node(op: str, w: np.ndarray, x_shape: list) -> gs.Graph:
    """x -> MatMul(x, W) or Gather(W, ids) -> y, as a graph to emit into."""
    if op == "MatMul":
        x = gs.Variable("x", dtype=np.float32, shape=x_shape)
        ins, y_shape = [x, gs.Constant("w", w)], [*x_shape[:-1], w.shape[1]]
    else:
        x = gs.Variable("x", dtype=np.int64, shape=x_shape)
        ins, y_shape = [gs.Constant("w", w), x], [*x_shape, w.shape[1]]
    y = gs.Variable("y", dtype=np.float32, shape=y_shape)
    node = gs.Node(op, name="layer", inputs=ins, outputs=[y])
    return gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=21)


def _emitted(op: str, w: np.ndarray, cand, x_shape: list, accuracy: int = 0) -> onnx.ModelProto:
    graph = _one_node(op, w, x_shape)
    layer = type("Layer", (), {"weight_index": 1 if op == "MatMul" else 0})()
    forms.emit(graph, graph.nodes[0], layer, cand, {"accuracy_level": accuracy}, {})
    graph.cleanup().toposort()
    model = ir.to_model(graph, ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _dynamic_input(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear -> dequantize, in numpy (uint8, range widened to include 0)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = np.float32((hi - lo) / 255)
    z = np.clip(np.round(-lo / s), 0, 255)
    return ((np.clip(np.round(x / s) + z, 0, 255) - z) * s).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 4])
def test_dynamic_form_runs_in_ort_as_numpy_computes_it(bits):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    w[:, 3] *= 20.0                                      # one wide column
    x = rng.standard_normal((2, 5, 64)).astype(np.float32)
    model = _emitted("MatMul", w, (bits, 8, "dyn"), [2, 5, 64])
    want = _dynamic_input(x) @ forms.weight_hat("MatMul", w, (bits, 8, "dyn"))
    got = run(model, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    q = next(t for t in model.graph.initializer if t.name.endswith("_weight_quantized"))
    assert q.data_type == (onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8)
    zp = initializers(model)[nodes_by_op(model, "MatMulInteger")[0].input[3]]
    assert zp.shape == (() if bits == 8 else (48,))        # symmetric 8-bit: one scalar zero point
    widen = [n for n in nodes_by_op(model, "Cast") if n.input[0] == q.name]
    assert bool(widen) == (bits == 4)                            # int4 widened to int8 at load
    if bits == 4:
        assert len(q.raw_data) == 64 * 48 // 2                    # two values a byte
    err = np.abs(forms.weight_hat("MatMul", w, (bits, 8, "dyn")) - w).max(axis=0)
    assert err[3] > 5 * np.median(err)                  # per-column scales: the wide column alone is coarse


def test_block_forms_run_in_ort_as_numpy_computes_them():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    model = _emitted("MatMul", w, (4, 32, "b32"), [3, 64])
    assert nodes_by_op(model, "MatMulNBits")
    want = x @ blockwise.fake_quantize(w, 4, 32, 0)
    np.testing.assert_allclose(run(model, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    table = rng.standard_normal((100, 64)).astype(np.float32)
    ids = np.array([[0, 5, 99], [7, 7, 1]], np.int64)
    model = _emitted("Gather", table, (4, 32, "b32"), [2, 3])
    assert nodes_by_op(model, "GatherBlockQuantized")
    np.testing.assert_allclose(run(model, {"x": ids})[0], blockwise.fake_quantize(table, 4, 32, 1)[ids],
                               rtol=1e-5, atol=1e-6)


def test_clip_search_is_never_worse_and_helps_heavy_tails():
    rng = np.random.default_rng(2)
    x = rng.standard_t(3, (16, 256)).astype(np.float32)        # heavy-tailed rows
    for bits in (3, 4, 8):
        plain = blockwise.dequantize_blocks(*blockwise.quantize_blocks(x, bits, 256))
        clipped = blockwise.dequantize_blocks(*blockwise.quantize_blocks(x, bits, 256, clip=True))
        e_plain, e_clip = ((plain - x) ** 2).sum(1), ((clipped - x) ** 2).sum(1)
        assert np.all(e_clip <= e_plain + 1e-6)
        if bits <= 4:
            assert e_clip.sum() < 0.9 * e_plain.sum()


def test_int4_initializers_round_trip_packed():
    values = np.array([[-8, 7, 0], [3, -1, 5]], np.int64)
    g = gs.Graph(nodes=[], opset=21)
    c = ir.constant("w", values, "int4")
    y = gs.Variable("y", dtype=np.int8)
    g.nodes.append(gs.Node("Cast", inputs=[c], outputs=[y], attrs={"to": onnx.TensorProto.INT8}))
    g.outputs = [y]
    model = ir.to_model(g, ir_version=10)
    t = next(t for t in model.graph.initializer if t.name == "w")
    assert t.data_type == onnx.TensorProto.INT4 and len(t.raw_data) == 3
    np.testing.assert_array_equal(initializers(model)["w"].astype(np.int64), values)
    np.testing.assert_array_equal(run(model, {})[0], values)


def test_form_probe_scores_what_emit_writes():
    model = token_builders.token_encoder()
    state = compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate()])
    table = forms.group_forms(state.graph, state.spec, state.groups, state.target, (4, 8), 8)
    assert table, "the encoder's MatMuls / Gather are form groups on ort-cpu"
    keys = {g: cands for g, (cands, _) in table.items()}
    pm = probe.build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, (), 8,
                           form_keys=keys)
    feeds = _token_feeds(model)
    fp32 = run(model, feeds)[-1]
    p = probe.Probe(pm, optimize=False)
    np.testing.assert_allclose(p.run({}, feeds)[-1], fp32, rtol=1e-5, atol=1e-5)
    for pick in (lambda cs: cs[0], lambda cs: cs[-2]):     # dynamic int8 everywhere; 8-bit blocks of 128
        config = {g: pick([c for c in cs if candidates.form(c) != "float"]) for g, cs in keys.items()}
        s = copy.copy(state)
        s.graph, s.report, s.plan = ir.copy_graph(state.graph), Report(), BitPlan(dict(config))
        EmitForms().run(s)
        want = run(state_model(s), feeds)[-1]
        assert np.abs(want - fp32).max() > 1e-2 * float(np.abs(want).max())   # the forms change the output
        np.testing.assert_allclose(p.run(config, feeds)[-1], want, rtol=1e-3,
                                   atol=1e-3 * float(np.abs(want).max()))


def test_token_models_score_on_a_token_budget():
    from dfq_onnx.passes.sensitivity import MIN_TOKEN_ROWS, SCORE_TOKENS, SensitivityOptions, scoring_data

    for seq, want in ((16, 64), (128, SCORE_TOKENS // 128), (512, MIN_TOKEN_ROWS)):
        state = compile_state(token_builders.token_encoder(seq=seq, d=32, ffn=32), [Normalize(21)])
        state.calib = {k: np.ones((64, seq), np.int64) for k in ("input_ids", "attention_mask")}
        samples, _ = scoring_data(state, SensitivityOptions(samples=256, progress=False))
        assert len(samples["input_ids"]) == want
