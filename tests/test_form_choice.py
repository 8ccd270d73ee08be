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


def _allowing(tmp_path, allowance: float = 100.0) -> str:
    """ort-cpu with a cost allowance that affords every float group the activation decision asks for."""
    text = open(load_target("ort-cpu").source).read()
    path = tmp_path / "ort_cpu_allow.toml"
    path.write_text(re.sub(r"(?m)^cost_allowance = .*$", f"cost_allowance = {allowance}", text))
    return str(path)


def _quantized_inputs(model) -> set[str]:
    return {n.input[0] for n in nodes_by_op(model, "QuantizeLinear")}


def test_matmuls_read_by_an_integer_region_are_static_by_default():
    """A conv stem read by MatMuls (rec's neck in miniature): no encoding is worth a float island on
    ort-cpu's cost, so every MatMul runs static Q/DQ, none dynamic int8 (before: all three dynamic)."""
    model = act_builders.conv_mixer(depth=8)
    out, report = _quantize(model)
    assert not nodes_by_op(out, "DynamicQuantizeLinear") and not nodes_by_op(out, "MatMulInteger")
    assert report.notes["form_options"] == {"form": [], "static": ["fc1", "fc2", "head"]}
    assert {"tokens", "fc1_relu_out", "res_out"} <= _quantized_inputs(out)
    assert "output" not in _quantized_inputs(out)          # the MatMul head's graph output stays float
    feeds = normal_feeds(model, n=16)
    want, got = run(model, feeds)[0], run(out, feeds)[0]
    assert 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)) > 25


def test_static_inputs_share_one_budget_of_damage():
    """The static encodings that replace forms may together cost the output at most what the W8 weights
    cost (L_w): with a shallow stem (little weight damage) the three inputs together exceed it, and the
    one that does not fit keeps its form; each alone would have passed the per-group outlier rule."""
    model = act_builders.conv_mixer(depth=4)
    out, report = _quantize(model)
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
    out, report = _quantize(model, target=_allowing(tmp_path))
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
