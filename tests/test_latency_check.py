"""The default plan's whole-model latency check (passes/keep_float.py, backends/integer_pays.py): a model
measured slower in integer form is written float; a tie or a faster one stays quantized; the cached
measurement reproduces the output."""

from __future__ import annotations

import numpy as np
import pytest
from _util import nodes_by_op
from dfq_onnx.models import builders
from dfq_onnx.passes import keep_float

import dfq_onnx
from dfq_onnx.backends import integer_pays


def _fake(ratios):
    def measure(runtime, fp32_model, int_model, **_):
        assert fp32_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1    # batch 1
        assert nodes_by_op(int_model, "QuantizeLinear") and not nodes_by_op(fp32_model, "QuantizeLinear")
        return {"fp32_ms": 1.0, "int_ms": float(np.median(ratios)), "ratios": list(ratios), "calls": 3,
                "rounds": len(ratios), "ratio": float(np.median(ratios)),
                "integer_slower": integer_pays.slower(ratios)}
    return measure


@pytest.fixture
def timed(monkeypatch):
    monkeypatch.setattr(keep_float, "MIN_MACS", 0)


@pytest.mark.parametrize("ratios, float_out", [([2.0, 1.6, 2.5], True), ([0.9, 1.03, 1.2], False),
                                               ([0.5, 0.6, 0.55], False)])
def test_a_model_measured_slower_is_written_float(tmp_path, monkeypatch, timed, ratios, float_out):
    monkeypatch.setattr(integer_pays, "measure", _fake(ratios))
    out, report = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", cache_dir=str(tmp_path),
                                    progress=False)
    note = report.notes["keep_float"]
    assert note["integer_pays"] is (not float_out) and note["source"] == "measured"
    assert (not nodes_by_op(out, "QuantizeLinear")) is float_out
    if float_out:          # the normalized FP32 graph: BN folded, nothing quantized
        assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv"]


def test_the_cached_measurement_reproduces_the_output(tmp_path, monkeypatch, timed):
    monkeypatch.setattr(integer_pays, "measure", _fake([2.0, 2.0, 2.0]))
    first, _ = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", cache_dir=str(tmp_path),
                                 progress=False)

    def must_not_run(*_, **__):
        raise AssertionError("measured again despite the cache")
    monkeypatch.setattr(integer_pays, "measure", must_not_run)
    again, report = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", cache_dir=str(tmp_path),
                                      progress=False)
    assert again.SerializeToString() == first.SerializeToString()
    assert report.notes["keep_float"]["source"] == "measured (cached)"


@pytest.mark.parametrize("options", [{"act_bits": 8}, {"weight_bits": 8}, {"avg_weight_bits": 6},
                                     {"latency_check": False}, {"calib": "analytic"}])
def test_explicit_bits_budgets_and_the_flag_skip_the_check(monkeypatch, timed, options):
    def must_not_run(*_, **__):
        raise AssertionError("timed although the plan is not the default")
    monkeypatch.setattr(integer_pays, "measure", must_not_run)
    opts = {"calib": "noise", **options}
    model = builders.with_data_bn_stats(builders.conv_bn_relu()) if "avg_weight_bits" in opts else \
        builders.conv_bn_relu()
    out, report = dfq_onnx.quantize(model, use_cache=False, progress=False, synth_samples=4, synth_steps=2,
                                    **opts)
    assert "keep_float" not in report.notes and nodes_by_op(out, "QuantizeLinear")


def test_small_models_are_not_timed():
    out, report = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", use_cache=False, progress=False)
    assert "not timed" in report.notes["keep_float"]["skipped"] and nodes_by_op(out, "QuantizeLinear")


def test_a_real_timing_decides_from_the_fastest_calls(timed):
    _, report = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", use_cache=False, progress=False)
    note = report.notes["keep_float"]
    assert note["source"] == "measured" and len(note["ratios"]) >= 3 and note["fp32_ms"] > 0
    assert note["integer_pays"] is not integer_pays.slower(note["ratios"])


def test_slower_needs_the_median_round_more_than_the_margin_above_one():
    assert integer_pays.slower([1.2, 1.3, 0.4, 1.5])             # one oddly fast round does not decide
    assert not integer_pays.slower([1.0 + integer_pays.MARGIN / 2] * 3)    # within the margin: integer
    assert not integer_pays.slower([0.8, 0.9, 1.4, 1.5, 0.7])


def test_the_decision_reads_cpu_work_rounds(monkeypatch):
    """Per round each model's least CPU time, the median over rounds of their ratio: one round in which
    the integer calls are oddly cheap does not decide; the integer model, otherwise 30 % more work, reads
    slower. On a fake process clock, so the test times nothing."""
    import time

    from dfq_onnx.backends import cpu_work

    clock = [0.0]
    monkeypatch.setattr(time, "process_time", lambda: clock[0])

    def model(ms, extra):
        count = [0]

        def call():
            count[0] += 1
            clock[0] += (ms + extra(count[0])) / 1e3
        return call

    fp32 = model(2.0, lambda i: 0.0)
    quant = model(2.6, lambda i: -1.0 if 12 <= i < 24 else 0.0)
    out = cpu_work.paired_calls(fp32, quant)
    assert len(out["ratios"]) >= 7 and min(out["ratios"]) < 1.0
    assert integer_pays.slower(out["ratios"]) and float(np.median(out["ratios"])) == pytest.approx(1.3)


def test_the_schedule_bounds_the_timing():
    from dfq_onnx.backends import cpu_work

    assert cpu_work.schedule(0.5) == (15, 10)                 # fast model: 10 calls a round, 15 rounds
    assert cpu_work.schedule(100.0) == (7, 3)                 # 7 rounds of 3 calls
    assert cpu_work.schedule(1000.0) == (7, 1)                # a 1 s forward: 7 rounds of 1 call


def test_a_long_call_is_timed_once_a_round(monkeypatch):
    """A forward of seconds (ISNet at 1024 x 1024: 5 s) pays a floor in seconds, not calls: its first call
    sets the schedule, each round times one call of each model with no untimed call before it, so a
    settled timing is 2 + 2 x EARLY calls (it was 5 + 8 x EARLY = 29). Fake clock."""
    import time

    from dfq_onnx.backends import cpu_work, integer_pays

    clock, count = [0.0], [0, 0]
    monkeypatch.setattr(time, "process_time", lambda: clock[0])

    def model(ms, j):
        def call():
            clock[0] += ms / 1e3
            count[j] += 1
        return call

    out = cpu_work.paired_calls(model(5000.0, 0), model(1500.0, 1), settled=integer_pays.settled)
    assert out["rounds"] == cpu_work.EARLY and out["calls"] == 1
    assert count == [1 + cpu_work.EARLY, 1 + cpu_work.EARLY]
    assert out["ratios"] == [pytest.approx(0.3)] * cpu_work.EARLY
    fast = cpu_work.paired_calls(model(2.0, 0), model(1.0, 1), settled=integer_pays.settled)
    assert fast["calls"] == 10 and count[0] == 1 + cpu_work.EARLY + 1 + 3 + cpu_work.EARLY * 11


def test_the_timing_is_single_thread_cpu_work(monkeypatch, timed):
    """KeepFloat's timing is ONNX Runtime CPU time at one thread (cpu_work.paired_cpu), keyed so."""
    from dfq_onnx.backends import cpu_work

    seen = []
    real = cpu_work.paired_cpu

    def spy(first, second, seconds=cpu_work.SECONDS, settled=None):
        seen.append((first, second))
        return real(first, second, seconds=0.05, settled=settled)
    monkeypatch.setattr(cpu_work, "paired_cpu", spy)
    _, report = dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", use_cache=False, progress=False)
    assert len(seen) == 1 and report.notes["keep_float"]["source"] == "measured"
    assert integer_pays.THREADS == 1


def test_a_dynamic_dimension_is_named_not_counted_as_zero_macs(monkeypatch):
    from dfq_onnx.models import token_builders
    model = token_builders.token_lm_cache()      # [N, S] ids and no position table: S stays free
    monkeypatch.setattr(keep_float, "MIN_MACS", 5_000)              # above 0, below one position's MACs
    _, report = dfq_onnx.quantize(model, use_cache=False, progress=False)
    note = report.notes["keep_float"]
    assert "dynamic dimensions" in note["skipped"] and note["macs"] >= 5_000


def test_a_settled_timing_stops_after_three_rounds(monkeypatch):
    """Every round far on one side of 1 + MARGIN: the timing stops after cpu_work.EARLY rounds (a 5 s
    forward paid the 7-round floor: five minutes); near the line it runs its schedule. Fake clock."""
    import time

    from dfq_onnx.backends import cpu_work, integer_pays

    clock = [0.0]
    monkeypatch.setattr(time, "process_time", lambda: clock[0])

    def model(ms):
        def call():
            clock[0] += ms / 1e3
        return call

    out = cpu_work.paired_calls(model(2.0), model(1.0), settled=integer_pays.settled)
    assert out["rounds"] == cpu_work.EARLY == len(out["ratios"]) and not integer_pays.slower(out["ratios"])
    assert integer_pays.settled([0.5, 0.6, 0.55]) and integer_pays.settled([1.9, 5.0, 2.2])
    assert not integer_pays.settled([0.5, 0.6, 1.0]) and not integer_pays.settled([1.05, 1.1, 1.2])
    near = cpu_work.paired_calls(model(2.0), model(2.1), settled=integer_pays.settled)
    assert near["rounds"] >= 7


def test_the_timed_sessions_heap_is_released_before_the_next_pass(tmp_path, monkeypatch, timed):
    """The two timed sessions free their memory when the measurement returns, but glibc keeps the heap
    (backends/memory.py): a 224 x 224 ResNet-50 with its BN folded carried 0.73 GB out of KeepFloat
    into the activation decision (0.24 GB with the release; its peak 1.22 -> 1.06 GB, the bound 1.14)."""
    events = []
    fake = _fake([0.5, 0.5, 0.5])
    monkeypatch.setattr(integer_pays, "measure", lambda *a, **k: events.append("measure") or fake(*a, **k))
    monkeypatch.setattr(keep_float, "release", lambda: events.append("release"))
    dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", cache_dir=str(tmp_path), progress=False)
    assert events == ["measure", "release"]
    events.clear()
    dfq_onnx.quantize(builders.conv_bn_relu(), calib="noise", cache_dir=str(tmp_path), progress=False)
    assert events == []             # a cached decision opens no session: nothing to release
