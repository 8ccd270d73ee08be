"""Streaming audio models as users ship them (silero-vad v5): a scalar `sr` input selecting the network
through an If, pinned with --input-value; the LSTM state [2, N, H] batched on axis 1 with unnamed
dimensions; the written model runs with the feeds the user's code sends."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _util import run, sqnr_db
from dfq_onnx.models.signal_builders import rate_switched_vad
from onnx import numpy_helper

import dfq_onnx
from dfq_onnx.core import batch_axis, constant_fold, declared_io, ir
from dfq_onnx.core.errors import UnsupportedModelError, UsageError


def _feeds(n: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {"audio": (rng.standard_normal((n, 64)) * 0.5).astype(np.float32),
            "state": (rng.standard_normal((2, n, 16)) * 0.5).astype(np.float32)}


def _compile(named: bool = False, model=None, **kw):
    return dfq_onnx.quantize(model or rate_switched_vad(named=named), synth_samples=16, synth_steps=2,
                             progress=False, use_cache=False, latency_check=False,
                             input_shapes={"audio": (1, 64)}, **kw)


def _run(model, feeds: dict, rate: int) -> list:
    return run(model, {**feeds, "sr": np.array(rate)})


def _rate_as_initializer() -> onnx.ModelProto:
    """The VAD with 16000 an initializer, not a Constant node (torch 1.12's export of silero-vad v4)."""
    model = rate_switched_vad()
    const = model.graph.node[0]
    model.graph.initializer.append(numpy_helper.from_array(np.array(16000, np.int64), const.output[0]))
    del model.graph.node[0]
    return model


@pytest.mark.parametrize("build", [rate_switched_vad, _rate_as_initializer])
def test_an_unpinned_rate_compiles_both_networks_and_the_written_model_still_chooses(build):
    """No --input-value: the If on `sr` is two networks (core/branches.py); each is compiled as its own
    model and the written model keeps the Equal on `sr` (and its constant), so each rate runs its own
    quantized network."""
    out, report = _compile(model=build())
    assert [n.op_type for n in out.graph.node][-2:] == ["Equal", "If"]
    assert report.model["flag"] == "sr" and "float_branches" not in report.notes
    for branch in out.graph.node[-1].attribute:
        assert "QuantizeLinear" in {n.op_type for n in branch.g.node}
    feeds = _feeds(5)
    for rate in (16000, 8000):
        want, got = _run(build(), feeds, rate), _run(out, feeds, rate)
        assert min(sqnr_db(w, g) for w, g in zip(want, got)) > 30      # 55-74 dB (tiny random network)


def test_a_network_that_cannot_run_at_the_compile_shape_is_written_float():
    """The 8 kHz network runs at 32 samples only; compiled at 64 its branch stays the source's (float,
    bit-exact), the 16 kHz one is quantized, and the report says what to pass for the other."""
    model = rate_switched_vad(samples=None, frame_8k=32)
    out, report = _compile(model=model)
    why = report.notes["float_branches"]["else_branch"]
    assert "--input-shape audio:1,64" in why and "--input-value sr:VALUE" in why
    ops = {a.name: {n.op_type for n in a.g.node} for a in out.graph.node[2].attribute}
    assert "QuantizeLinear" in ops["then_branch"] and "QuantizeLinear" not in ops["else_branch"]
    rng = np.random.default_rng(3)
    feeds = {"audio": rng.standard_normal((3, 32)).astype(np.float32),
             "state": rng.standard_normal((2, 3, 16)).astype(np.float32)}
    for w, g in zip(_run(model, feeds, 8000), _run(out, feeds, 8000)):
        np.testing.assert_array_equal(w, g)


def test_a_scalar_read_outside_a_condition_names_the_input_the_option_and_the_values():
    """A scalar the graph reads elsewhere (here: the If pinned away by hand) has its own error and hint."""
    from dfq_onnx.core.scalar_inputs import check_scalar_inputs

    with pytest.raises(UnsupportedModelError,
                       match=r"input 'sr' is a scalar \(rank 0\).*--input-value sr:16000"):
        check_scalar_inputs(rate_switched_vad())


@pytest.mark.parametrize("rate, named", [(16000, False), (8000, False), (16000, True)])
def test_a_pinned_rate_compiles_the_branch_it_selects_and_keeps_the_input(rate, named):
    """The If on `sr` folds to the pinned branch (its nested two-output If keeps both outputs), the state
    is batched on axis 1 (5 rows, not 2; its batch dimension unnamed or named like the audio's), and the
    written model takes the user's feeds with or without `sr` (optional, the pinned value its default)."""
    out, report = _compile(named, input_values={"sr": rate})
    assert [i.name for i in out.graph.input] == ["audio", "state", "sr"]
    assert report.notes["pinned_inputs"] == {"sr": rate}
    assert report.notes["batch_axis1_inputs"] == ["state"]
    assert not any("sr" in n.input for n in out.graph.node)
    assert {"QuantizeLinear", "LSTM"} <= {n.op_type for n in out.graph.node}
    feeds = _feeds(5)
    want = ort.InferenceSession(rate_switched_vad().SerializeToString()).run(
        None, {**feeds, "sr": np.array(rate)})
    sess = ort.InferenceSession(out.SerializeToString())
    got = sess.run(None, {**feeds, "sr": np.array(rate)})
    np.testing.assert_array_equal(sess.run(None, feeds)[0], got[0])
    assert [g.shape for g in got] == [(5, 1), (2, 5, 16)]
    assert min(sqnr_db(w, g) for w, g in zip(want, got)) > 30      # 55-74 dB (tiny random network)


def test_a_state_batched_on_axis_1_takes_a_calibration_npz_in_its_declared_layout(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_feeds(12, seed=2))
    out, _ = _compile(input_values={"sr": 16000}, calib=str(calib))
    want = ort.InferenceSession(rate_switched_vad().SerializeToString()).run(
        None, {**_feeds(3), "sr": np.array(16000)})
    got = ort.InferenceSession(out.SerializeToString()).run(None, _feeds(3))
    assert min(sqnr_db(w, g) for w, g in zip(want, got)) > 30


def test_the_state_input_is_found_by_the_rnn_it_feeds():
    model = rate_switched_vad()
    declared_io.pin_inputs(model, {"sr": 16000})
    graph = constant_fold.fold_constants(ir.to_graph(ir.infer_shapes(model)))
    assert not any(n.op == "If" and n.name == "rate" for n in graph.nodes)
    assert batch_axis.state_inputs(graph) == ["state"]
    for t in graph.inputs:            # a state whose batch axis is fixed (faster-whisper's silero v6
        if t.name == "state":         # h / c [1, 1, 128]) keeps its layout
            t.shape = [2, 1, 16]
    assert batch_axis.state_inputs(graph) == []


def test_an_input_that_computes_an_rnn_state_is_not_one():
    """A batch-1 input [1, T] whose projection initializes an LSTM (an encoder's summary as h0) is data, not
    a state: only selection and reshaping lead a state to the RNN."""
    import onnx_graphsurgeon as gs

    x = gs.Variable("x", np.float32, [1, "T"])
    w = gs.Constant("w", np.ones((1, 4), np.float32))
    h0 = gs.Variable("h0", np.float32)
    nodes = [gs.Node("MatMul", inputs=[x, w], outputs=[h0]),
             gs.Node("LSTM", inputs=[gs.Variable("seq", np.float32), w, w, gs.Variable.empty(),
                                     gs.Variable.empty(), h0], outputs=[gs.Variable("y", np.float32)])]
    assert batch_axis.state_inputs(gs.Graph(nodes=nodes, inputs=[x])) == []


@pytest.mark.parametrize("values, words", [({"rate": 16000}, ["'rate'", "audio, state, sr"]),
                                           ({"audio": 1}, ["audio", "not a single value"]),
                                           ({"sr": 16000.5}, ["sr:16000.5", "int64"])])
def test_a_bad_pin_is_a_usage_error(values, words):
    with pytest.raises(UsageError) as err:
        _compile(input_values=values)
    for word in words:
        assert word in str(err.value)


def test_the_cli_reads_a_pin_both_ways():
    from dfq_onnx.cli import _value_hint

    assert _value_hint("sr:16000") == _value_hint("sr=16000") == ("sr", 16000)
    assert _value_hint("scale:0.5") == ("scale", 0.5)


def test_inspect_shows_the_two_networks_a_scalar_chooses(tmp_path, capsys):
    from dfq_onnx.cli import main

    path = tmp_path / "vad.onnx"
    path.write_bytes(rate_switched_vad().SerializeToString())
    assert main(["-q", "inspect", str(path), "--input-shape", "audio:1,64"]) == 0
    out = capsys.readouterr().out
    assert "two networks chosen by the input(s) 'sr'" in out and "[then_branch]" in out
    assert main(["-q", "inspect", str(path), "--input-value", "sr:8000"]) == 0
    assert "two networks" not in capsys.readouterr().out


def test_the_report_of_two_networks_holds_each_ones_report(tmp_path):
    """--report: each network's whole report (its FP32 comparison too) under `branches`; the HTML page
    shows one section per branch, a float one with why."""
    import json

    _compile(model=rate_switched_vad(samples=None, frame_8k=32), report_path=tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["branches"]) == {"then_branch", "else_branch"}
    assert report["branches"]["then_branch"]["comparison"]["outputs"]
    assert "--input-value sr:VALUE" in report["branches"]["else_branch"]["notes"]["float"]
    _compile(model=rate_switched_vad(samples=None, frame_8k=32), report_path=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("<h2>Branch ") == 2 and "<h3>FP32 vs quantized outputs</h3>" in page
    assert "written float: does not run at the compile" in page


def test_inspect_refuses_a_pin_of_an_unknown_input(tmp_path):
    from dfq_onnx.cli import main

    path = tmp_path / "vad.onnx"
    path.write_bytes(rate_switched_vad().SerializeToString())
    assert main(["-q", "inspect", str(path), "--input-value", "rate:16000"]) == 2
