"""Usage errors come before any expensive work: with synthesis, calibration, analytic ranges and
sensitivity scoring made to fail when called, every case below must still give its one-line usage error
(exit code 2) naming the option, and leave no file behind. Before CheckUsage these cases all ran the
synthetic calibration (seconds to minutes) first."""

from __future__ import annotations

import json

import onnx
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.allocate import build_problem, cost_problem
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.sensitivity import ScoreSensitivity, SensitivityOptions
from dfq_onnx.passes.synthesize import Synthesize

from dfq_onnx.backends.latency import FORMAT
from dfq_onnx.cli import main


@pytest.fixture
def no_expensive_pass(monkeypatch):
    def ran(self, state):
        raise AssertionError(f"{self!r} ran before the usage error")

    for cls in (Synthesize, Calibrate, AnalyticRanges, ScoreSensitivity):
        monkeypatch.setattr(cls, "run", ran)


def _latency_table(d, target="ort-cpu", groups=None):
    groups = groups or {"elsewhere": {"ms": {"8x8": 1.0, "4x8": 0.9}, "layers": ["elsewhere"]}}
    path = d / "latency.json"
    path.write_text(json.dumps({"format": FORMAT, "target": target, "batch": 1, "base": "8x8",
                                "overhead_ms": 0.1, "groups": groups}))
    return str(path)


# (builder, extra args, words the one-line error must contain)
CASES = {
    "uniform-pair-not-legal": (builders.conv_bn_relu, ["--weight-bits", "5", "--act-bits", "16"],
                               ["UniformPlan", "W5A16 is not legal", "ort-cpu"]),
    "uniform-pair-not-legal-for-op": (builders.convtranspose_bn,
                                      ["--target", "qnn-htp", "--weight-bits", "4"],
                                      ["W4A8 is not legal for ConvTranspose", "node 'up'"]),
    "avg-bits-below-every-plan": (builders.conv_bn_relu_residual, ["--avg-weight-bits", "1.5"],
                                  ["--avg-weight-bits 1.5", "feasible range 2 .. 8"]),
    "avg-bits-outside-target-candidates": (builders.conv_bn_relu, ["--target", "tensorrt",
                                                                   "--avg-weight-bits", "4"],
                                           ["--avg-weight-bits 4", "feasible range 8 .. 8"]),
    "size-below-every-plan": (builders.conv_bn_relu_residual, ["--size-mb", "0.0000001"],
                              ["--size-mb 1e-07", "feasible range"]),
    "bops-below-every-plan": (builders.conv_bn_relu_residual, ["--bops-ratio", "0.01"],
                              ["--bops-ratio 0.01", "feasible range 0.25 .. 1"]),
    "mixed-act-bits-not-legal": (builders.conv_bn_relu, ["--act-bits", "4", "--avg-weight-bits", "4"],
                                 ["--act-bits 4", "W8A4 is not legal"]),
    "uniform-allocator-no-fit": (builders.conv_bn_relu,
                                 ["--allocator", "uniform", "--avg-weight-bits", "1.9"],
                                 ["--avg-weight-bits 1.9"]),
    "uniform-allocator-without-avg-bits": (builders.conv_bn_relu,
                                           ["--allocator", "uniform", "--size-mb", "1"],
                                           ["--allocator uniform needs --avg-weight-bits"]),
    "max-drop-with-greedy": (builders.conv_bn_relu, ["--allocator", "greedy", "--max-drop", "0.1"],
                             ["--max-drop needs an ILP allocator", "'greedy'"]),
    "latency-table-other-target": (builders.conv_bn_relu,
                                   ["--latency-ms", "1", "--latency-table", "{table:openvino}"],
                                   ["measured for target 'openvino'", "profile-target ort-cpu"]),
    "latency-table-other-model": (builders.conv_bn_relu, ["--latency-ms", "1", "--latency-table", "{table}"],
                                  ["latency table does not match this model"]),
    "one-scoring-sample": (builders.conv_bn_relu, ["--avg-weight-bits", "4", "--synth-samples", "1"],
                           ["--synth-samples 1", "at least 2 samples"]),
    "encodings-under-a-file": (builders.conv_bn_relu, ["--export-encodings", "{tmp}/m.onnx/enc.json"],
                               ["enc.json", "cannot write there"]),
    "encodings-equal-output": (builders.conv_bn_relu, ["--export-encodings", "{tmp}/out/q.onnx"],
                               ["q.onnx", "given twice", "must differ"]),
}


def _snapshot(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _one_line_usage_error(capsys, rc, words):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("dfq-onnx: error: "), captured.err
    assert "Traceback" not in captured.err and "ran before" not in captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_usage_error_before_expensive_passes(case, tmp_path, capsys, no_expensive_pass):
    build, extra, words = CASES[case]
    src = tmp_path / "m.onnx"
    src.write_bytes(build().SerializeToString())
    subs = {"{tmp}": str(tmp_path), "{table}": _latency_table(tmp_path)}
    if "{table:openvino}" in extra:
        subs["{table:openvino}"] = _latency_table(tmp_path, target="openvino")
    for key, value in subs.items():
        extra = [a.replace(key, value) for a in extra]
    before = _snapshot(tmp_path)
    rc = main(["-q", "quantize", str(src), "-o", str(tmp_path / "out" / "q.onnx"), "--no-cache", *extra])
    _one_line_usage_error(capsys, rc, words)
    assert _snapshot(tmp_path) == before


def test_a_legal_budget_still_reaches_the_expensive_passes(tmp_path, capsys, no_expensive_pass):
    # the guard itself: a valid command gets past CheckUsage and into synthesis (which here fails)
    src = tmp_path / "m.onnx"
    src.write_bytes(builders.conv_bn_relu_residual().SerializeToString())
    rc = main(["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--avg-weight-bits", "4",
               "--no-cache"])
    assert rc == 1 and "Synthesize ran before the usage error" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["synthesize", "profile-target"])
def test_other_commands_check_the_output_path_first(command, tmp_path, capsys, no_expensive_pass):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(), src)
    out = str(tmp_path / "m.onnx" / ("s.npz" if command == "synthesize" else "t.json"))
    args = ([str(src), "-o", out, "--no-cache"] if command == "synthesize"
            else ["ort-cpu", str(src), "-o", out])
    before = _snapshot(tmp_path)
    rc = main(["-q", command, *args])
    _one_line_usage_error(capsys, rc, ["cannot write there"])
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("build,target", [(builders.conv_bn_relu_residual, "ort-cpu"),
                                          (builders.convtranspose_bn, "qnn-htp")])
def test_the_up_front_problem_is_the_scored_one_without_losses(build, target, tmp_path):
    # CheckUsage judges the budget on cost_problem; AllocateBits later solves build_problem: they must
    # agree on groups, per-group candidates ([candidates.ops] narrowing) and costs, or the check would
    # refuse budgets the allocator can meet (or let through ones it cannot)
    opts = SensitivityOptions(weight_bits=(2, 3, 4, 8), samples=8, incontext=False, pairs=False,
                              use_cache=False, progress=False)
    state = compile_state(build(), [Normalize(21), FoldBatchNorm(), FindQuantGroups(), Calibrate(),
                                    ScoreSensitivity(opts)], target=target, calib="noise", calib_samples=8,
                          avg_weight_bits=4, score_bits=(2, 3, 4, 8))
    scored, early = build_problem(state), cost_problem(state)
    assert early.groups == scored.groups and early.groups
    assert early.candidates == scored.candidates
    assert early.params == scored.params and early.macs == scored.macs
    # ort-cpu: W2, W3, W4, W8 at A8 for every group; qnn-htp's ConvTranspose: only W8A8 of them
    want = ((8, 8),) if target == "qnn-htp" else ((2, 8), (3, 8), (4, 8), (8, 8))
    assert set(early.candidates.values()) == {want}
