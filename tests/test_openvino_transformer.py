"""The openvino target on transformers: activation functions, float readers, smoothing of outliers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from _util import padded_token_feeds, run, sqnr_db
from dfq_onnx.models import act_builders, token_builders

import dfq_onnx
from dfq_onnx.core.act_functions import activation_function_nodes


def _function_nodes(model: onnx.ModelProto) -> list[str]:
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    ids = activation_function_nodes(graph)
    return sorted(n.name for n in graph.nodes if id(n) in ids)


def test_multi_op_activation_functions_are_found_and_nothing_else():
    """GELU's Div / Erf / Add / Mul / Mul(0.5) and hard-swish's Add / Clip / Mul / Div are functions of
    one tensor that gates itself; a bias Add before a Relu, a decomposed LayerNorm's sqrt(var + eps) and
    the attention mask arithmetic are not (core/act_functions.py)."""
    gelu = _function_nodes(token_builders.token_classifier(act="gelu", layers=1))
    assert gelu == ["l0_gelu_add", "l0_gelu_div", "l0_gelu_erf", "l0_gelu_half", "l0_gelu_mul"]
    hswish = _function_nodes(act_builders.hardswish_disparity())
    assert {"hs0_add", "hs0_clip", "hs0_mul", "hs0_div"} <= set(hswish)
    assert _function_nodes(token_builders.token_classifier(decomposed=True)) == []
    assert _function_nodes(token_builders.token_classifier()) == []


def _quantized(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_openvino_puts_no_quantizer_inside_gelu():
    """OpenVINO fuses the decomposed GELU into one f32 op (NNCF's ignored pattern): no Q/DQ on its input
    or inside it; its output (the Mul(0.5), which stays: OpenVINO's GeluFusion needs it) is quantized as
    the next MatMul's input."""
    model = token_builders.token_classifier(act="gelu", outlier=1.0)
    out, _ = dfq_onnx.quantize(model, target="openvino", progress=False, use_cache=False, smooth=False)
    quantized = _quantized(out)
    assert {"l0_gelu_out", "l1_gelu_out"} <= quantized
    inside = {f"l{i}_{t}" for i in (0, 1)
              for t in ("f1_add_out", "gelu_div", "gelu_erf", "gelu_add", "gelu_mul")}
    assert not inside & quantized
    feeds = padded_token_feeds()
    assert sqnr_db(run(model, feeds)[0], run(out, feeds)[0]) > 18.0


def test_openvino_readers_that_are_not_quantized_read_the_float_tensor():
    """A post-LN block's LayerNorm output feeds the FFN MatMul (quantized) and the residual Add (not): only
    the MatMul reads the Q/DQ, the residual stream stays unrounded (NNCF's input-edge placement)."""
    model = token_builders.token_classifier(act="gelu", outlier=1.0)
    out, _ = dfq_onnx.quantize(model, target="openvino", progress=False, use_cache=False, smooth=False)
    by_name = {n.name: n for n in out.graph.node}
    assert "l0_ln1_out" in _quantized(out)
    assert "l0_ln1_out" in by_name["l0_res2"].input                       # float
    assert by_name["l0_f1"].input[0] == "l0_ln1_out_dequantized"          # quantized


def test_openvino_smooths_the_outlier_layernorm_outputs_by_default():
    """ln1's outlier channels (gamma 30 on 4 channels, the FFN rows for them 30x smaller): the default
    migrates them into the FFN weights where 8 bits on the LayerNorm output alone cost the output more
    than all W8 weights, and says so in the report; --no-smooth turns it off; a model without outlier
    LayerNorm outputs is written as with --no-smooth."""
    model = token_builders.token_classifier(act="gelu", ln_outlier=30.0)
    feeds = padded_token_feeds()
    opts = {"target": "openvino", "progress": False, "use_cache": False}
    out, report = dfq_onnx.quantize(model, **opts)
    off, off_report = dfq_onnx.quantize(model, **opts, smooth=False)
    notes = report.notes["smoothing"]
    assert notes["mode"] == "outliers" and "smoothing" not in off_report.notes
    assert "l1_ln1_out" in notes["applied"]
    assert all(g["outlier"] == (g["loss"]["off"] > notes["weight_loss"]) for g in notes["groups"])
    assert all(g["outlier"] for g in notes["groups"] if g["tensor"] in notes["applied"])
    ref = run(model, feeds)[0]
    assert sqnr_db(ref, run(out, feeds)[0]) > sqnr_db(ref, run(off, feeds)[0]) + 1.0
    plain = token_builders.token_classifier(act="gelu", outlier=1.0)
    out, report = dfq_onnx.quantize(plain, **opts)
    off, _ = dfq_onnx.quantize(plain, **opts, smooth=False)
    assert report.notes["smoothing"]["applied"] == [] and not any(
        g["outlier"] for g in report.notes["smoothing"]["groups"])
    assert out.SerializeToString() == off.SerializeToString()
    assert np.isfinite(report.notes["smoothing"]["weight_loss"])


def test_default_smoothing_scores_float_input_models_on_the_budgeted_rows(monkeypatch):
    """Outliers mode on a float-input model scores and measures on the activation decision's budgeted
    rows (a Whisper encoder spent 12 minutes on 32-row evaluations); token models keep theirs."""
    import dfq_onnx.passes.calibrate as calibrate
    from _util import compile_state
    from dfq_onnx.passes.normalize import Normalize
    from dfq_onnx.passes.quant_groups import FindQuantGroups
    from dfq_onnx.passes.smooth import budget_rows

    from dfq_onnx.backends.budget import MIN_ROWS

    state = compile_state(act_builders.outlier_attention(), [Normalize(17), FindQuantGroups()],
                          target="openvino", calib="noise")
    feeds = {"input": np.zeros((64, 8, 16), np.float32)}
    assert len(budget_rows(state, feeds)["input"]) == 64              # a small model: every row
    monkeypatch.setattr(calibrate, "activation_elements", lambda state, feeds: 10 ** 9)
    assert len(budget_rows(state, feeds)["input"]) == MIN_ROWS
    tokens = compile_state(token_builders.token_classifier(), [Normalize(17), FindQuantGroups()],
                           target="openvino", calib="noise")
    ids = {"input_ids": np.ones((64, 16), np.int64), "attention_mask": np.ones((64, 16), np.int64)}
    assert len(budget_rows(tokens, ids)["input_ids"]) == 64


def test_openvino_leaves_constant_scale_and_shift_float():
    """MobileBERT's NoNorm (x * gamma + beta, its last one also the graph output last_hidden_state) before
    the pooler's Gather: OpenVINO folds a constant scale and shift into the dequantization of x, and its
    GatherTransformation then fails on the per-channel [d] shift ('Axis 1 out of the tensor rank range');
    the openvino target leaves x * c and x + c float (NNCF's unquantized ScaleShift), and the written
    model compiles in OpenVINO when it is installed. A MatMul's bias Add stays that layer's output."""
    model = token_builders.token_classifier(no_norm=True, hidden_output=True)
    out, _ = dfq_onnx.quantize(model, target="openvino", progress=False, use_cache=False)
    affine = {n.name for n in model.graph.node if n.name.endswith(("_gamma", "_beta"))}
    assert affine and all(name in {n.name for n in out.graph.node} for name in affine)
    dq_read = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
    for node in out.graph.node:
        if node.name in affine:
            assert not set(node.input) & dq_read, node.name       # x and its constant read float
    quantized = _quantized(out)
    assert not any(t.endswith("_scaled") for t in quantized)       # x * gamma: no quantizer
    assert "l0_ln1_out" in quantized                      # + beta: quantized where a MatMul reads it
    assert "l0_f1_out" not in quantized                   # MatMul + bias: one layer, its output
    feeds = padded_token_feeds()     # the outlier stream, unnormalized: 9.97 / 18.96 dB quantized
    logits, hidden = (sqnr_db(a, b) for a, b in zip(run(model, feeds), run(out, feeds)))
    assert logits > 12.0 and hidden > 20.0
    try:
        import openvino as ov
    except ImportError:
        return
    core = ov.Core()
    core.compile_model(core.read_model(out.SerializeToString(), b""), "CPU")
