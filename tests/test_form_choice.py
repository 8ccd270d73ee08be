"""Form or static per MatMul, and normalization statistics, as scored choices of the default plan
(passes/quant_groups.py `scored`, passes/act_precision.py, passes/settle_forms.py)."""

from __future__ import annotations

import re

import numpy as np
from _util import nodes_by_op, normal_feeds, run
from dfq_onnx.models import act_builders

import dfq_onnx
from dfq_onnx.core.target import load_target
from dfq_onnx.sensitivity.act_scoring import BROKEN, budget_screen, score_singles, screen


def _quantize(model, **options):
    options = {"calib": "noise", "progress": False, "use_cache": False, "latency_check": False, **options}
    return dfq_onnx.quantize(model, **options)


def _static_declared(tmp_path, allowance: float | None = None) -> str:
    """ort-cpu declaring the dynamic int8 form as dear per MAC as the static kernel (0.6 >= 0.58): the
    modeled rule (no timing) lets the options be static; `allowance`: a cost allowance that affords every
    float group the activation decision asks for."""
    text = open(load_target("ort-cpu").source).read()
    text = text.replace('"W8A8-dyn" = 0.37', '"W8A8-dyn" = 0.6')
    if allowance is not None:
        text = re.sub(r"(?m)^cost_allowance = .*$", f"cost_allowance = {allowance}", text)
    path = tmp_path / "ort_cpu_static.toml"
    path.write_text(text)
    return str(path)


def _quantized_inputs(model) -> set[str]:
    return {n.input[0] for n in nodes_by_op(model, "QuantizeLinear")}


def test_matmuls_read_by_an_integer_region_are_static_where_static_pays(tmp_path):
    """A conv stem read by MatMuls (rec's neck in miniature), on a target declaring static no dearer than
    the form: no encoding is worth a float island, so every MatMul runs static Q/DQ, none dynamic int8
    (before: all three dynamic)."""
    model = act_builders.conv_mixer(depth=8)
    out, report = _quantize(model, target=_static_declared(tmp_path))
    assert not nodes_by_op(out, "DynamicQuantizeLinear") and not nodes_by_op(out, "MatMulInteger")
    assert report.notes["form_options"] == {"form": [], "static": ["fc1", "fc2", "head"]}
    assert {"tokens", "fc1_relu_out", "res_out"} <= _quantized_inputs(out)
    assert "output" not in _quantized_inputs(out)          # the MatMul head's graph output stays float
    feeds = normal_feeds(model, n=16)
    want, got = run(model, feeds)[0], run(out, feeds)[0]
    assert 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)) > 25


def test_static_inputs_share_one_budget_of_damage(tmp_path):
    """The static encodings that replace forms may together cost the output at most what the W8 weights
    cost (L_w): with a shallow stem (little weight damage) the three inputs together exceed it, and the
    one that does not fit keeps its form; each alone would have passed the per-group outlier rule."""
    model = act_builders.conv_mixer(depth=4)
    out, report = _quantize(model, target=_static_declared(tmp_path))
    forms, acts = report.notes["form_options"], report.notes["activations"]
    assert forms["form"] and forms["static"]
    assert not acts["outliers"]                            # no group alone above L_w
    assert len(acts["form_option_groups"]["form"]) == len(forms["form"])
    assert len(nodes_by_op(out, "MatMulInteger")) == len(forms["form"])
    if forms["form"] == ["head"]:    # the spec is built again around the form: nothing static reads the
        assert "res_out" not in _quantized_inputs(out)     # residual sum, so it stays float (no Q/DQ)


def test_a_float_input_hands_its_matmul_to_its_form(tmp_path):
    """Where the decision leaves a MatMul's input float (the outlier channel), the MatMul takes its dynamic
    int8 form (it keeps an integer kernel), not a weight-only float MatMul."""
    model = act_builders.conv_mixer(scale=1000.0)
    out, report = _quantize(model, target=_static_declared(tmp_path, allowance=100.0))
    forms = report.notes["form_options"]
    assert "fc1" in forms["form"]
    dyn = nodes_by_op(out, "DynamicQuantizeLinear")
    assert "tokens" in {n.input[0] for n in dyn}
    assert "tokens" not in _quantized_inputs(out)
    assert len(nodes_by_op(out, "MatMulInteger")) == len(forms["form"])
    assert all(n.input[1] != "fc1.weight" for n in nodes_by_op(out, "MatMul"))   # no float fc1
    feeds = normal_feeds(model, n=16)
    want, got = run(model, feeds)[0], run(out, feeds)[0]
    assert 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)) > 20


def test_a_model_without_an_integer_region_keeps_its_forms():
    """Every weighted layer a form (a transformer block): no static layer to join, every MatMul dynamic."""
    model = act_builders.outlier_attention()
    out, report = _quantize(model)
    assert len(nodes_by_op(out, "MatMulInteger")) == 6            # q, k, v, o, f1, f2
    assert "form_options" not in report.notes
    out8, _ = _quantize(model, act_bits=8)
    assert out8.SerializeToString() == out.SerializeToString()    # the choice adds nothing here


def test_a_non_finite_output_counts_as_damage():
    """A quantizer that makes the output non-finite (var < 0 under a square root) is damage: NaN compares
    below every threshold, so screening used to clear it as harmless."""

    class Stub:
        evaluations = 0

        def relative(self, config):
            self.evaluations += 1
            broken = any(g == "b" for g in config)
            return np.full(3, np.nan if broken else 1e-9)

    tested: dict = {}
    assert screen(Stub(), ["a", "b", "c"], 8, 1e-6, tested) == ["b"]
    assert score_singles(Stub(), ["b"], (8,), 1.0)["b"][8] >= BROKEN / 2
    assert budget_screen(Stub(), ["a", "b", "c"], 8, 1e-6, {}) == ["a", "c"]


def _unscored(monkeypatch):
    """Compiles without the form choice (main before it): FindQuantGroups lays out no option."""
    from dfq_onnx.passes import quant_groups

    monkeypatch.setattr(quant_groups, "scored", lambda state: False)


def test_without_timing_the_target_tables_keep_the_forms(monkeypatch):
    """--no-latency-check: static only where the target declares it no dearer per MAC than the form;
    ort-cpu declares 0.58 vs 0.37, so every MatMul keeps its form and the output is byte-identical to a
    compile without the choice (before: all three static, whatever the target's latency)."""
    model = act_builders.conv_mixer(depth=8)
    out, report = _quantize(model)
    assert report.notes["form_latency"]["static_pays"] is False
    assert report.notes["form_latency"]["source"].startswith("modeled")
    assert "form_options" not in report.notes
    assert len(nodes_by_op(out, "MatMulInteger")) == 3
    _unscored(monkeypatch)
    plain, _ = _quantize(model)
    assert plain.SerializeToString() == out.SerializeToString()


def _timed(monkeypatch, static_over_form: float) -> list:
    """The timings stubbed: the form options' static model does `static_over_form` times the form model's
    work (backends/cpu_work.py); KeepFloat's integer model pays. Records whether the first model timed
    is the form's."""
    from dfq_onnx.passes import keep_float

    from dfq_onnx.backends import cpu_work, integer_pays

    timed = []

    def paired_cpu(first, second, **_):
        timed.append(any(n.op_type == "DynamicQuantizeLinear" for n in first.graph.node))
        return {"first_ms": 1.0, "second_ms": static_over_form, "ratios": [static_over_form] * 5,
                "rounds": 5, "calls": 2}

    def measure(runtime, fp32, quant, **_):
        return {"fp32_ms": 1.0, "int_ms": 0.5, "ratios": [0.5] * 3, "rounds": 3, "calls": 1,
                **integer_pays.decided([0.5] * 3)}

    monkeypatch.setattr(cpu_work, "paired_cpu", paired_cpu)
    monkeypatch.setattr(integer_pays, "measure", measure)
    monkeypatch.setattr(keep_float, "MIN_MACS", 0)
    return timed


def test_static_only_where_measured_not_slower(monkeypatch):
    """With the latency check the default plan times every option static against every option in its form
    (whole models, batch 1) before calibrating: static measured slower -> the options are dropped (the
    output of a compile without the choice); measured faster -> they stay static."""
    model = act_builders.conv_mixer(depth=8)
    timed = _timed(monkeypatch, 1.3)
    out, report = _quantize(model, latency_check=True)
    assert timed == [True] and report.notes["form_latency"]["static_pays"] is False
    assert report.notes["form_latency"]["source"] == "measured"
    assert len(nodes_by_op(out, "MatMulInteger")) == 3 and "form_options" not in report.notes
    timed = _timed(monkeypatch, 0.8)
    out, report = _quantize(model, latency_check=True)
    assert report.notes["form_latency"]["static_pays"] is True
    assert report.notes["form_options"]["static"] == ["fc1", "fc2", "head"]
    assert not nodes_by_op(out, "MatMulInteger")
    _timed(monkeypatch, 1.3)
    _unscored(monkeypatch)
    plain, _ = _quantize(model, latency_check=True)
    slow, _ = _quantize(model, latency_check=True)
    assert plain.SerializeToString() == slow.SerializeToString()


def _neginf_mask(model):
    """The token classifier's additive mask as Hugging Face exports it: Where(mask, 0, -inf)."""
    import onnx

    g = model.graph
    i = next(k for k, n in enumerate(g.node) if n.name == "mask_neg")
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
                          onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "neginf")])
    where = [onnx.helper.make_node("Cast", ["attention_mask"], ["mask_b"], name="mask_b", to=9),
             onnx.helper.make_node("Where", ["mask_b", "zero_f", "neginf"], ["mask_neg"], name="mask_neg")]
    del g.node[i]
    for k, n in enumerate(where):
        g.node.insert(i + k, n)
    return model


def test_a_non_finite_range_keeps_its_options_in_their_form(tmp_path):
    """A static head behind a BERT (options on every MatMul): the attention products laid out static would
    quantize the masked scores, -inf where the mask is 0. Calibrate gives the options whose static layout
    reaches those tensors their form (before: 'tensor ... is not finite'); the rest may stay static."""
    from dfq_onnx.models import token_builders

    model = _neginf_mask(token_builders.token_classifier())
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False,
                                    target=_static_declared(tmp_path))
    bad = report.notes["form_options_nonfinite"]
    assert bad["form"] == ["l0_o", "l1_o"]         # the first options after the masked scores
    assert {"l0_masked_out", "l1_masked_out"} <= set(bad["tensors"])
    assert not set(bad["tensors"]) & _quantized_inputs(out)
    rng = np.random.default_rng(1)
    mask = np.ones((64, 16), np.int64)
    mask[::2, 10:] = 0
    feeds = {"input_ids": rng.integers(1, 512, (64, 16)), "attention_mask": mask}
    assert np.isfinite(run(out, feeds)[0]).all()    # (its SQNR is not the point: the target forces static)


def test_static_options_reach_through_a_layernorm(tmp_path):
    """With its MatMuls static, the residual sum before a LayerNorm sits between static layers (ORT's own
    output runs it as QLinearAdd): the reach passes the normalization, so the sum is quantized; without
    options (ort-cpu's tables, no timing) it stops there and the sum stays float, as before."""
    model = act_builders.conv_mixer(depth=8, norm=True)
    out, report = _quantize(model, target=_static_declared(tmp_path))
    assert report.notes["form_options"]["static"] == ["fc1", "fc2", "head"]
    assert {"res_out", "norm_out"} <= _quantized_inputs(out)
    plain, report = _quantize(model)
    assert "form_options" not in report.notes and "res_out" not in _quantized_inputs(plain)


def test_a_residual_stream_from_an_embedding_stays_float_with_static_options(tmp_path):
    """A BERT's stream starts at its float embedding (a Gather): with its MatMuls static, the reach still
    stops at its LayerNorms (an 8-bit grid on that stream costs a small transformer 3-20 dB), where
    rec's stream, which starts at a convolution, passes them."""
    from dfq_onnx.models import token_builders

    out, report = dfq_onnx.quantize(token_builders.token_classifier(), progress=False, use_cache=False,
                                    latency_check=False, target=_static_declared(tmp_path))
    assert report.notes["form_options"]["static"]
    assert not {t for t in _quantized_inputs(out) if any(k in t for k in ("res", "embed"))}
