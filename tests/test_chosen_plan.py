"""The plan the activation decision writes: a "broken" all-A8 plan is read for the output's task where
the output is read by its argmax (sensitivity/decisions.py), and the chosen plan with float groups is
re-timed against FP32 (passes/keep_float.KeepFloatChosen)."""

from __future__ import annotations

import numpy as np
import pytest
from _util import nodes_by_op, stub_timings
from dfq_onnx.models import act_builders, builders
from dfq_onnx.passes import keep_float

import dfq_onnx
from dfq_onnx.backends import integer_pays
from dfq_onnx.core.state import ActGroup
from dfq_onnx.sensitivity import decisions
from dfq_onnx.sensitivity.act_scoring import score_activations


def _peaks(n=64, k=360, seed=0):
    """Sigmoid-like score rows with one clear peak each (a pitch salience: neighbours near the peak)."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(20, k - 20, n)
    bins = np.arange(k)[None]
    return np.exp(-0.5 * ((bins - centre[:, None]) / 1.5) ** 2) * 0.9 + rng.uniform(0, 0.01, (n, k))


def test_class_axis_of_each_metric():
    assert decisions.class_axis("kl", (8, 10)) == 1
    assert decisions.class_axis("kl@1", (8, 26, 40)) == 1
    assert decisions.class_axis("ce", (8, 10)) == 1
    assert decisions.class_axis("sqnr", (8, 360)) == 1
    assert decisions.class_axis("sqnr", (8, 4, 16, 16)) is None      # a map: no decision to read
    assert decisions.class_axis("sqnr", (8, 1)) is None
    assert decisions.class_axis("cosine", (8, 384)) is None


def test_a_pick_beside_the_peak_is_kept_a_swapped_class_is_not():
    ref = _peaks()
    beside = ref.copy()
    rows = np.arange(len(ref))
    top = ref.argmax(1)
    beside[rows, top + 1] = ref[rows, top] + 0.001      # the neighbour bin (0.8 of the peak) wins: same pitch
    assert decisions.kept_fraction(ref, beside, 1) == (1.0, 64)
    far = ref.copy()
    far[rows[:8], (top[:8] + 100) % 360] = 2.0           # 8 rows pick a bin far from FP32's peak
    frac, n = decisions.kept_fraction(ref, far, 1)
    assert n == 64 and frac == pytest.approx(56 / 64)
    assert decisions.keeps_decisions(decisions.decisions_kept(["sqnr"], [ref], [beside]))
    assert not decisions.keeps_decisions(decisions.decisions_kept(["sqnr"], [ref], [far]))


def test_a_classifier_is_read_in_probabilities():
    logits = np.zeros((2, 10))
    logits[:, :2] = [[8.0, 7.5], [8.0, 2.0]]
    swapped = logits[:, [1, 0, *range(2, 10)]]
    assert decisions.kept_fraction(logits, swapped, 1, probabilities=True) == (0.5, 2)   # 0.61 vs 0.0025
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert decisions.kept_fraction(probs, swapped, 1, probabilities=True) == (0.5, 2)


def test_flat_rows_are_not_read_and_maps_have_no_reading():
    ref = _peaks(n=32)
    ref[16:] = 0.5 + np.random.default_rng(1).uniform(0, 1e-3, (16, 360))     # undecided rows
    test = ref.copy()
    test[16:] = test[16:, ::-1]                       # their argmax moves anywhere: not counted
    assert decisions.kept_fraction(ref, test, 1) == (1.0, 16)
    maps = np.ones((4, 2, 8, 8))
    assert decisions.decisions_kept(["sqnr", "sqnr"], [ref, maps], [test, maps]) is None


class _Ev:
    """An evaluator stand-in: L_w 1e-4, every group at A8 adds 1e-3 (the all-A8 plan is 40x L_w, "broken"
    by the ratio); `outputs` of the all-A8 plan keep or move the argmax of a [N, 360] sigmoid output."""

    def __init__(self, keep: bool, groups: int = 4):
        self.kinds = ("sqnr",)
        self.reference = [_peaks(n=32)]
        self.evaluations = 0
        self.keep, self.groups = keep, groups

    def _l(self, config):
        self.evaluations += 1
        return np.full(3, 1e-4 + 1e-3 * sum(b == 8 for b in config.values()))

    def loss(self, config):
        return self._l(config)

    def relative(self, config):
        return self._l(config) - 1e-4

    def outputs(self, config):
        ref = self.reference[0]
        out = ref + np.random.default_rng(2).normal(0, 0.005, ref.shape)
        if not self.keep:
            out[:, ::7] += 1.0                          # every row's argmax far from its peak
        return [out]


def _groups(n=4):
    return [ActGroup(id=f"a{i}", rep=f"t{i}", tensors=(f"t{i}",), readers=(), writers=(), elements=10,
                     choices=(8, 32)) for i in range(n)]


@pytest.mark.parametrize("keep", [True, False])
def test_a_plan_broken_by_the_ratio_is_read_for_the_task(keep):
    """The ratio says broken (40x); the task reading decides: argmax kept -> no joint check (the plan is
    decided as any sound one), moved -> the joint check runs as before."""
    terms = score_activations(_Ev(keep), _groups(), 8, extra_evals=20)
    assert terms.act_loss > 16 * terms.weight_loss
    assert terms.decisions is not None and (terms.decisions["kept"] == 1.0) is keep
    assert bool(terms.joint) is (not keep)


def test_no_reading_without_a_class_axis():
    """A map output (PP-PicoDet's kind): the ratio decides alone, no forward pass for a reading."""
    model = act_builders.hardswish_disparity()
    _, report = dfq_onnx.quantize(model, calib="noise", progress=False, use_cache=False)
    notes = report.notes["activations"]
    assert notes["joint"]["applied"] and "decisions" not in notes


@pytest.mark.parametrize("second, float_out", [([2.0, 2.0, 2.0], True), ([0.6, 0.6, 0.6], False)])
def test_the_chosen_plan_with_float_groups_is_timed_again(tmp_path, monkeypatch, second, float_out):
    """The all-A8 plan pays (first timing); the decision floats groups of a broken plan; the plan with
    those float islands is timed again and written float when it is slower than FP32."""
    monkeypatch.setattr(keep_float, "MIN_MACS", 0)
    measure, calls = stub_timings([[0.5, 0.5, 0.5], second])
    monkeypatch.setattr(integer_pays, "measure", measure)
    out, report = dfq_onnx.quantize(act_builders.hardswish_disparity(), calib="noise",
                                    cache_dir=str(tmp_path), progress=False)
    note = report.notes["keep_float"]
    assert len(calls) == 2 and calls[1] < calls[0]          # the second timing has the float islands
    assert note["integer_pays"] and note["chosen_plan"]["float_groups"]
    assert note["chosen_plan"]["integer_pays"] is (not float_out)
    assert (not nodes_by_op(out, "QuantizeLinear")) is float_out


def test_a_plan_without_float_groups_is_timed_once(tmp_path, monkeypatch):
    monkeypatch.setattr(keep_float, "MIN_MACS", 0)
    measure, calls = stub_timings([[0.5, 0.5, 0.5]])
    monkeypatch.setattr(integer_pays, "measure", measure)
    out, report = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", cache_dir=str(tmp_path),
                                    progress=False)
    assert len(calls) == 1 and "chosen_plan" not in report.notes["keep_float"]
    assert nodes_by_op(out, "QuantizeLinear")


@pytest.mark.parametrize("second, dropped", [([150.0] * 3, True), ([90.0] * 3, False)])
def test_floats_within_the_allowance_are_timed_against_the_all_a8_plan(tmp_path, monkeypatch, second,
                                                                        dropped):
    """A float group the ILP took within the cost allowance: the chosen plan is timed against the all-A8
    plan and the group goes back to A8 when it costs more than the allowance (+ the margin) measured
    (this target's allowance is 100x the all-A8 cost: the line is 101.05)."""
    from _util import static_matmul_target

    monkeypatch.setattr(keep_float, "MIN_MACS", 0)
    measure, calls = stub_timings([[0.5, 0.5, 0.5], second])
    monkeypatch.setattr(integer_pays, "measure", measure)
    out, report = dfq_onnx.quantize(act_builders.outlier_attention(),
                                    target=static_matmul_target(tmp_path, allowance=100.0), calib="noise",
                                    cache_dir=str(tmp_path), progress=False)
    notes = report.notes["activations"]
    assert "joint" not in notes and len(calls) == 2
    assert report.notes["keep_float"]["chosen_plan"]["floats_dropped"] is dropped
    f2 = next(k for k, o in notes["outliers"].items() if o["tensors"] == ["f2_out"])
    assert (notes["outliers"][f2]["choice"] == 8) is dropped
    assert ("f2_out" in {n.input[0] for n in nodes_by_op(out, "QuantizeLinear")}) is dropped


def test_the_cli_line_says_a_kept_plan_is_not_broken():
    from dfq_onnx.report.activations import decided_line

    line = decided_line({"activations": {"outliers": {}, "base": 8, "groups": 14,
                                         "decisions": {"kept": 1.0, "positions": [17], "factor": 16.0}}})
    assert "above 16x the weights' loss but keeps FP32's decisions at 100.0 %" in line
    assert "not broken" in line
