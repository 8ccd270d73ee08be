"""ort-cpu's LSTM form (passes/choose_recurrent.py, passes/emit_recurrent.py, backends/recurrent.py):
DynamicQuantizeLSTM with int8 W / R, scored at the output, float where its form alone breaks it."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from _util import run, sqnr_db
from dfq_onnx.models.recurrent_builders import lstm_encoder

import dfq_onnx
from dfq_onnx.backends import recurrent
from dfq_onnx.core.errors import DfqError, TargetError
from dfq_onnx.core.target import builtin_targets, load_target

OPTS = {"progress": False, "use_cache": False}


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _frames(n: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16, 12)).astype(np.float32)


def test_lstms_are_written_as_dynamic_quantize_lstm_and_match_fp32():
    """Both LSTMs of the encoder become DynamicQuantizeLSTM (com.microsoft) with int8 W / R transposed to
    [D, K, 4H] and per-row scales [D, 4H]; the model runs in ORT within 30 dB of FP32 on inputs it was not
    calibrated on, and the report lists them as W8A8-dyn layers."""
    model = lstm_encoder()
    out, report = dfq_onnx.quantize(model, **OPTS)
    ops = _ops(out)
    assert ops["DynamicQuantizeLSTM"] == 2 and ops["LSTM"] == 0
    node = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLSTM")
    assert node.domain == "com.microsoft"
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    w, scale = inits[node.input[1]], inits[node.input[8]]
    assert w.dtype == np.int8 and w.shape == (1, 16, 64) and scale.shape == (1, 64)
    assert np.abs(w).max() == 127
    x = _frames()
    assert sqnr_db(run(model, {"frames": x})[0], run(out, {"frames": x})[0]) > 30
    layers = [la for la in report.layers if la["op"] == "LSTM"]
    assert [la["form"] for la in layers] == ["W8A8-dyn"] * 2
    assert report.notes["recurrent"]["chosen"] == ["lstm1", "lstm2"]


def test_bidirectional_lstm_with_sequence_lens_states_and_peepholes(tmp_path):
    """A bidirectional first LSTM reading sequence_lens [N], initial states [2, N, H] (batch on axis 1)
    and peepholes keeps those inputs in the integer form and the model's interface; the lengths vary
    per row in the calibration file and in the test feeds."""
    model = lstm_encoder(bidirectional=True, sequence_lens=True, initial_state=True, peepholes=True)
    rng = np.random.default_rng(0)

    def feeds(n: int) -> dict[str, np.ndarray]:
        return {"frames": rng.standard_normal((n, 16, 12)).astype(np.float32),
                "lengths": rng.integers(1, 17, n).astype(np.int32),
                "h0": (0.3 * rng.standard_normal((2, n, 16))).astype(np.float32),
                "c0": (0.3 * rng.standard_normal((2, n, 16))).astype(np.float32)}
    calib = tmp_path / "calib.npz"
    np.savez(calib, **feeds(64))
    out, report = dfq_onnx.quantize(model, calib=str(calib), **OPTS)
    assert _ops(out)["DynamicQuantizeLSTM"] == 2 and _ops(out)["LSTM"] == 0
    first = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLSTM" and "lengths" in n.input)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in first.attribute}
    assert attrs["direction"] == b"bidirectional" and first.input[4] == "lengths"
    assert list(first.input[5:8]) != ["", "", ""]            # states and peepholes wired through
    assert [i.name for i in out.graph.input] == ["frames", "lengths", "h0", "c0"]
    test = feeds(40)
    assert sqnr_db(run(model, test)[0], run(out, test)[0]) > 30


def test_a_sequence_lens_input_without_calibration_data_is_named():
    """Synthesis makes no lengths: the error names the input, the LSTM reading it and --calib (it told the
    user the input was a malformed token input before)."""
    model = lstm_encoder(bidirectional=True, sequence_lens=True)
    with pytest.raises(DfqError, match=r"'lengths' is the sequence_lens of LSTM 'lstm1'.*--calib"):
        dfq_onnx.quantize(model, **OPTS)


def test_lstm_whose_form_breaks_the_output_stays_float():
    """`gain`: lstm1 reads one channel 1000x the rest (its weights 1/1000 there: the same function). One
    grid per call for its input leaves the other channels a few levels: its form alone costs the output
    far more than all the weights together, so it stays LSTM (with the reason in the report) and lstm2,
    reading lstm1's bounded outputs, takes the form. The written model stays within 30 dB of FP32; with
    both LSTMs in the form (ORT quantize_dynamic's choice) it would not."""
    model = lstm_encoder(gain=1000.0)
    out, report = dfq_onnx.quantize(model, **OPTS)
    notes = report.notes["recurrent"]
    assert notes["chosen"] == ["lstm2"]
    assert notes["singles"]["lstm1"] > 10 * notes["weights_loss"] > 10 * notes["singles"]["lstm2"]
    assert "more than all the weights together" in notes["float"]["lstm1"]
    assert _ops(out)["LSTM"] == 1 and _ops(out)["DynamicQuantizeLSTM"] == 1
    x = _frames()
    ref = run(model, {"frames": x})[0]
    assert sqnr_db(ref, run(out, {"frames": x})[0]) > 30
    graph = gs.import_onnx(model)
    for node in [n for n in graph.nodes if n.op == "LSTM"]:
        recurrent.emit_lstm(graph, node, 8)
    both = gs.export_onnx(graph.cleanup().toposort())
    assert sqnr_db(ref, run(both, {"frames": x})[0]) < 20


def test_plans_without_the_integer_form_keep_lstms_float_with_a_reason():
    """--act-bits 32 (weight-only) and the openvino target (no com.microsoft kernels) leave every LSTM
    float; the first says why in the report."""
    model = lstm_encoder()
    out, report = dfq_onnx.quantize(model, act_bits=32, **OPTS)
    assert _ops(out)["LSTM"] == 2 and _ops(out)["DynamicQuantizeLSTM"] == 0
    assert set(report.notes["recurrent"]["float"]) == {"lstm1", "lstm2"}
    assert "--act-bits 32" in report.notes["recurrent"]["float"]["lstm1"]
    out, report = dfq_onnx.quantize(model, target="openvino", **OPTS)
    assert _ops(out)["LSTM"] == 2 and "recurrent" not in report.notes
    assert all(n.domain != "com.microsoft" for n in out.graph.node)


def test_layouts_the_kernel_cannot_take_are_named():
    """layout = 1 and non-constant weights: the reasons `unsupported` records."""
    graph = gs.import_onnx(lstm_encoder())
    node = next(n for n in graph.nodes if n.op == "LSTM")
    assert recurrent.unsupported(node) is None
    node.attrs["layout"] = 1
    assert "layout = 1" in recurrent.unsupported(node)
    node.attrs["layout"] = 0
    node.inputs[1] = gs.Variable("W_runtime", dtype=np.float32)
    assert "not float constants" in recurrent.unsupported(node)


def test_target_rejects_lstm_forms_the_kernel_does_not_have(tmp_path):
    """[forms] LSTM takes DynamicQuantizeLSTM's form and float only: a block-wise form is one clear error."""
    src = builtin_targets()["ort-cpu"].read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace('LSTM = ["W8A8-dyn", "W32A32"]', 'LSTM = ["W4A32-b32", "W32A32"]'))
    with pytest.raises(TargetError, match="LSTM"):
        load_target(str(bad))


def test_inspect_lists_the_lstms_the_target_may_write_in_integer():
    """`dfq-onnx inspect`: on ort-cpu the LSTMs are no longer 'left in float' but listed as decided at compile
    time; on openvino they stay in the float list."""
    from dfq_onnx.commands.inspect_model import inspect
    from dfq_onnx.core.options import QuantizeOptions

    info = inspect(lstm_encoder(), load_target("ort-cpu"), QuantizeOptions())
    assert "LSTM" not in info["float_ops"] and sorted(info["recurrent"]) == ["lstm1", "lstm2"]
    info = inspect(lstm_encoder(), load_target("openvino"), QuantizeOptions())
    assert info["float_ops"]["LSTM"] == 2 and info["recurrent"] == {}


def test_the_decision_is_cached_and_a_rerun_writes_the_same_bytes(tmp_path):
    """The second compile reads the decision's terms from the cache (`recurrent` kind) and writes the same
    model; --no-cache recomputes them."""
    model = lstm_encoder(gain=1000.0)
    opts = {"progress": False, "cache_dir": str(tmp_path)}
    first, r1 = dfq_onnx.quantize(model, **opts)
    second, r2 = dfq_onnx.quantize(model, **opts)
    assert r1.notes["recurrent"]["cache_hit"] is False and r2.notes["recurrent"]["cache_hit"] is True
    assert list((tmp_path / "recurrent").glob("*.json"))
    assert first.SerializeToString() == second.SerializeToString()
    assert r2.notes["recurrent"]["chosen"] == ["lstm2"]
