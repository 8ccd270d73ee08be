"""The bad-input corpus, through the command line: every case is generated here by a builder (no
committed binaries) and must give one line `dfq-onnx: error: ...` naming the problem and the fix, exit
code 2 (usage) or 1 (model), no traceback, and leave no file behind (output, report or temporary)."""

from __future__ import annotations

import functools

import onnx
import pytest
from _util import point_external_data_to
from dfq_onnx.models import builders, signal_builders

from dfq_onnx.cli import main


def _save(model: onnx.ModelProto, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _external(path, location=None):
    """conv_bn_relu with its weights in `weights.bin`; `location` rewrites the recorded location."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(builders.conv_bn_relu(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location is not None:
        point_external_data_to(path, location)
    return path


def _traversal(d):
    path = _external(d / "model" / "m.onnx", "../secret.bin")
    (d / "secret.bin").write_bytes((d / "model" / "weights.bin").read_bytes())
    return path


def _missing_external(d):
    path = _external(d / "model" / "m.onnx")
    (d / "model" / "weights.bin").unlink()
    return path


def _bytes(name, data):
    def make(d):
        (d / name).write_bytes(data)
        return d / name
    return make


def _model(build, name="m.onnx"):
    return lambda d: _save(build(), d / name)


# (make input, extra args, exit code, words naming the problem, words naming the fix)
CASES = {
    "not-onnx": (_bytes("notes.onnx", b"hello, this is text\n"), [], 1, ["not a valid ONNX model"],
                 ["truncated or of another format"]),
    "truncated": (_bytes("cut.onnx", builders.conv_bn_relu_residual().SerializeToString()[:700]), [], 1,
                  ["protobuf parse failed"], ["truncated"]),
    "empty-file": (_bytes("empty.onnx", b""), [], 1, ["empty file"], ["re-export"]),
    "missing-file": (lambda d: d / "nowhere.onnx", [], 1, ["no such file"], ["check the model path"]),
    "empty-graph": (_model(builders.bad_empty_graph), [], 1, ["no nodes"], ["export"]),
    "old-opset": (_model(lambda: builders.bad_old_opset(op="ImageScaler")), [], 1,
                  ["'legacy'", "ImageScaler", "opset 7"], ["re-export it with opset >= 13"]),
    "custom-domain": (_model(builders.bad_custom_domain), [], 1, ["'custom'", "com.example"],
                      ["standard ops"]),
    "if-around-conv": (_model(builders.bad_if_conv), [], 1,
                       ["'branch'", "(If)", "Conv", "scalar input 'flag'"], ["--input-value flag:VALUE"]),
    "merged-models": (_model(lambda: builders.bad_if_conv(merged=True, after=True)), [], 1,
                      ["'branch'", "'flag'"], ["decoder_model.onnx and decoder_with_past_model.onnx"]),
    "loop-around-conv": (_model(builders.bad_loop_conv), [], 1, ["'loop'", "(Loop)", "Conv"],
                         ["without control flow"]),
    "if-on-scalar-input": (_model(functools.partial(signal_builders.rate_switched_vad, after=True)), [], 1,
                           ["'rate'", "(If)", "Conv", "scalar input 'sr'", "16000 at node 'is16k'"],
                           ["--input-value sr:16000"]),
    "input-value-unknown": (_model(signal_builders.rate_switched_vad), ["--input-value", "rate:16000"], 2,
                            ["'rate'"], ["audio, state, sr"]),
    "already-quantized": (_model(builders.bad_already_quantized), [], 1, ["'q_in'", "already quantized"],
                          ["pass the FP32 model"]),
    "bf16": (_model(builders.bad_bf16), [], 1, ["'input'", "bfloat16"], ["convert the model to float32"]),
    "dynamic-no-hint": (_model(lambda: builders.conv_bn_relu(hw=None)), ["--calib", "noise"], 2,
                        ["'input'", "dynamic dimension"], ["--input-shape input:"]),
    "dynamic-no-hint-synthetic": (_model(lambda: builders.conv_bn_relu(hw=None)),
                                  ["--calib", "synthetic", "--no-cache"], 2, ["'input'", "dynamic"],
                                  ["--input-shape input:"]),
    "external-traversal": (_traversal, [], 1, ["'../secret.bin'", "escapes the model directory"],
                           ["next to the model"]),
    "external-missing": (_missing_external, [], 1, ["'weights.bin'", "not found"], ["copy it there"]),
    "infeasible-budget": (_model(builders.conv_bn_relu_residual),
                          ["--avg-weight-bits", "1.5", "--no-cache", "--synth-steps", "1",
                           "--synth-samples", "4"],
                          2, ["--avg-weight-bits 1.5"], ["feasible range"]),
    "unknown-target": (_model(builders.conv_bn_relu), ["--target", "tpu-9000"], 2, ["'tpu-9000'"],
                       ["available: ", "ort-cpu"]),
    "unknown-option": (_model(builders.conv_bn_relu), ["--frobnicate", "3"], 2,
                       ["unrecognized arguments: --frobnicate"], ["--help"]),
    "bad-option-value": (_model(builders.conv_bn_relu), ["--allocator", "magic"], 2, ["'magic'"],
                         ["choose from"]),
    "budget-with-uniform-bits": (_model(builders.conv_bn_relu),
                                 ["--avg-weight-bits", "4", "--weight-bits", "4"], 2, ["--weight-bits"],
                                 ["drop it"]),
    "output-dir-is-a-file": (_model(builders.conv_bn_relu), ["-o", "{tmp}/m.onnx/out.onnx"], 2,
                             ["cannot write there"], ["writable directory"]),
    "report-equals-output": (_model(builders.conv_bn_relu), ["--report", "{tmp}/out/q.onnx"], 2,
                             ["report path"], ["must differ"]),
}


def _snapshot(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(case, tmp_path, capsys):
    make, extra, code, problem, fix = CASES[case]
    src = make(tmp_path)
    before = _snapshot(tmp_path)
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    argv = ["-q", "quantize", str(src), "-o", str(tmp_path / "out" / "q.onnx"),
            "--report", str(tmp_path / "out" / "report.html"), *extra]
    if "-o" in extra:   # the case replaces the output path
        i = argv.index("-o")
        del argv[i:i + 2]
    try:
        rc = main(argv)
    except SystemExit as exc:       # argparse errors exit through SystemExit
        rc = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == code, captured.err
    assert len(lines) == 1 and lines[0].startswith("dfq-onnx: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for word in problem + fix:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(tmp_path) == before        # nothing written, no temporary file left


def test_every_issue_case_is_covered():
    # the issue's list: not ONNX, truncated, empty graph, old opset, custom op, control flow, QDQ, bf16,
    # dynamic shapes without a hint, external data escaping / missing, infeasible budget, unknown
    # target or option
    wanted = {"not-onnx", "truncated", "empty-graph", "old-opset", "custom-domain", "if-around-conv",
              "loop-around-conv", "already-quantized", "bf16", "dynamic-no-hint", "external-traversal",
              "external-missing", "infeasible-budget", "unknown-target", "unknown-option"}
    assert wanted <= set(CASES)


def test_debug_shows_a_traceback_for_a_model_error(tmp_path):
    from dfq_onnx.core.errors import DfqError

    src = _save(builders.bad_bf16(), tmp_path / "m.onnx")
    with pytest.raises(DfqError):
        main(["--debug", "-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx")])
    assert not (tmp_path / "q.onnx").exists()


def test_unwritable_report_removes_the_written_model(tmp_path, capsys, monkeypatch):
    from dfq_onnx.core import ir

    src = _save(builders.conv_bn_relu(), tmp_path / "m.onnx")
    real = ir.write_bytes_atomic

    def fail(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ir, "write_bytes_atomic", fail)
    rc = main(["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"),
               "--report", str(tmp_path / "r.json")])
    monkeypatch.setattr(ir, "write_bytes_atomic", real)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Permission denied" in err and "r.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("case", ["not-onnx", "truncated", "empty-graph", "custom-domain", "loop-around-conv",
                                  "bf16", "external-traversal", "unknown-target"])
def test_bad_input_to_inspect(case, tmp_path, capsys):
    make, extra, code, problem, _ = CASES[case]
    src = make(tmp_path)
    before = _snapshot(tmp_path)
    rc = main(["-q", "inspect", str(src), *[a for a in extra if not a.startswith("--no-")]])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == code and len(lines) == 1 and lines[0].startswith("dfq-onnx: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for word in problem:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(tmp_path) == before


def test_an_internal_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    from dfq_onnx.core import ir

    src = _save(builders.conv_bn_relu(), tmp_path / "m.onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(ir, "to_model", broken)    # hit after the passes: analytic ranges run no ORT
    argv = ["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", "analytic"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: simulated bug;" in err
    assert "--debug" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(RuntimeError):
        main(["--debug", *argv])


def test_a_bug_inside_a_pass_is_one_line(tmp_path, capsys, monkeypatch):
    from dfq_onnx.core import ir

    src = _save(builders.conv_bn_relu(), tmp_path / "m.onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(ir, "to_model", broken)       # the synthesis pass exports the graph first
    argv = ["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", "synthetic", "--no-cache",
            "--synth-steps", "2"]                    # a search: the default (BN objective) runs no ORT
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Synthesize failed" in err and "simulated bug" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
