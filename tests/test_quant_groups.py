"""FindQuantGroups: quantized nodes, activation quantizers, absorbed activations, shared encodings, groups."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import compile_state, normal_feeds, padded_token_feeds, run, sqnr_db
from dfq_onnx.models import act_builders, builders, signal_builders, token_builders
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

import dfq_onnx
from dfq_onnx.core.target import builtin_targets


def _spec(model, target="ort-cpu"):
    state = compile_state(model, [Normalize(), FoldBatchNorm(), FindQuantGroups()], target=target)
    return state, state.spec


def test_residual_quantized_tensors_and_absorbed_relus():
    state, spec = _spec(builders.conv_bn_relu_residual())
    # weighted: conv1, conv2, fc; elementwise: add, gap. Relu has role "activation", Flatten "passthrough".
    assert {n: s.role for n, s in spec.layers.items()} == {
        "conv1": "weighted", "conv2": "weighted", "fc": "weighted",
        "add": "elementwise", "gap": "elementwise"}
    # relu1 is conv1's only reader and relu2 is add's only reader: both absorbed into the producer's
    # output encoding. bn2_out (conv2's output after the fold) feeds add, not a Relu.
    assert spec.absorbed == {"relu1": "bn1_out", "relu2": "add_out"}
    # 6 quantizers: the input; conv1's output seen after relu1; conv2's output; add's output after relu2;
    # gap's output; flatten's output (passthrough). The graph output is fc's (a Gemm): ORT CPU's QGemm
    # writes it in float, so it stays float there; a target without float_output_ops quantizes it.
    assert set(spec.act_tensors) == {"input", "relu1_out", "bn2_out", "relu2_out", "gap_out", "flat_out"}
    assert state.report.passes[-1]["modified"] is False   # analysis pass


def test_residual_weighted_layer_specs():
    _, spec = _spec(builders.conv_bn_relu_residual())
    conv1, fc = spec.layers["conv1"], spec.layers["fc"]
    assert (conv1.weight, conv1.bias, conv1.axis) == ("conv1.weight", "conv1.bias_folded", 0)
    assert (fc.weight, fc.bias, fc.axis) == ("fc.weight", "fc.bias", 0)      # transB=1: rows are outputs


def test_graph_output_of_a_float_output_kernel_stays_float():
    _, spec = _spec(builders.conv_bn_relu_residual(), target="openvino")       # quantizes graph outputs
    assert "output" in spec.act_tensors
    _, spec = _spec(builders.conv_bn_relu_residual())                          # ort-cpu: QGemm, float out
    assert "output" not in spec.act_tensors and "flat_out" in spec.act_tensors
    model = builders.conv_bn_relu_residual()
    out, _ = dfq_onnx.quantize(model, calib="noise", act_bits=8, progress=False)
    assert [n.op_type for n in out.graph.node if "output" in n.output] == ["Gemm"]
    feeds = normal_feeds(model, n=8)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], atol=0.25)


def test_passthrough_shares_the_encoding():
    _, spec = _spec(builders.conv_bn_relu_residual())
    assert spec.encoding_of["flat_out"] == spec.encoding_of["gap_out"]             # Flatten
    _, spec = _spec(builders.concat_branches())
    assert spec.encoding_of["pool_out"] == spec.encoding_of["cat_out"]             # MaxPool
    assert spec.encoding_of["relu_a_out"] != spec.encoding_of["relu_b_out"]        # Concat inputs: own


def test_shared_activation_merges_groups():
    state, _ = _spec(builders.conv_bn_relu_residual())
    groups = {g.ops: g for g in state.groups}
    # conv1 and add both read `input`, so they must agree on its bits: one group. conv2, gap and fc
    # read activations nobody else reads: one group each -> 4 groups.
    assert set(groups) == {("conv1", "add"), ("conv2",), ("gap",), ("fc",)}
    g = groups[("conv1", "add")]
    assert g.layers == ("conv1",) and set(g.activations) == {"input", "bn2_out"}
    assert g.params == 8 * 8 * 3 * 3                                   # conv1 weight only
    state, _ = _spec(builders.concat_branches(c_in=3, c=4))
    assert state.groups[0].layers == ("conv_a", "conv_b")              # both read `input`
    assert state.groups[0].params == 4 * 3 * 3 * 3 + 4 * 3 * 1 * 1


def test_tail_elementwise_ops_after_last_weighted_layer_stay_float():
    _, spec = _spec(builders.conv_silu(tail=True))
    # the SiLU between the convs is quantized; the Sigmoid and Mul after conv2 (the last weighted layer)
    # are not: they buy no integer kernel.
    assert set(spec.layers) == {"conv1", "sigmoid", "mul", "conv2"}
    assert "conv2_out" in spec.act_tensors and "tail_sig_out" not in spec.act_tensors
    assert "output" not in spec.act_tensors


def test_clip_relu6_absorbed():
    _, spec = _spec(builders.conv_clip6())
    assert spec.absorbed == {"clip1": "bn1_out", "clip2": "bn2_out"}
    assert spec.layers["dw"].axis == 0 and spec.layers["dw"].role == "weighted"   # depthwise, group=C


def test_relu_writing_the_graph_output_is_absorbed_into_its_quantizer():
    _, spec = _spec(builders.conv_bn_relu(relu_output=True))
    assert spec.absorbed == {"relu1": "bn1_out"} and "output" in spec.act_tensors


def test_relu_before_unquantized_graph_output_is_kept(tmp_path):
    toml = tmp_path / "float-outputs.toml"
    toml.write_text(builtin_targets()["ort-cpu"].read_text().replace("quantize_graph_outputs = true",
                                                                     "quantize_graph_outputs = false"))
    model = builders.conv_bn_relu(relu_output=True)
    out, _ = dfq_onnx.quantize(model, target=str(toml), calib="noise", progress=False)
    feeds = normal_feeds(model, n=8)
    assert run(out, feeds)[0].min() >= 0.0
    # W8A8 with noise-calibrated ranges: a few quantization steps of error at most on outputs up to ~5
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], atol=0.2)


def test_normalization_statistics_stay_float():
    _, spec = _spec(act_builders.decomposed_layernorm())
    # mean, E[x^2], E[x]^2, var + eps, rsqrt * gamma, x^2 (read only by the ReduceSum) and the op applying
    # rsqrt to the centred features: float; the convs, beta and the pooling stay quantized
    assert {"mean", "square", "mean_sq", "sq_mean", "var_eps", "scale", "normalize"}.isdisjoint(spec.layers)
    assert {"conv1", "shift_beta", "conv2", "gap", "fc"} <= set(spec.layers)
    assert not {"sum", "mean_sq", "var_eps", "rstd", "scale"} & set(spec.act_tensors)


def test_a_decomposed_layernorm_keeps_its_accuracy():
    model = act_builders.decomposed_layernorm()
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False, act_bits=8)
    feeds = normal_feeds(model, n=64)
    want, got = run(model, feeds)[0], run(out, feeds)[0]
    sqnr = 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2))
    assert sqnr > 15       # 21 dB; with 8-bit statistics (E[x^2] - E[x]^2 on the offset features) 7 dB


def test_what_a_log_reads_stays_float_back_to_the_waveform():
    state, spec = _spec(signal_builders.log_mel_classifier())
    # the STFT convs, the power, the filterbank MatMul and the floor carry the Log's relative error: float;
    # the classifier on the log-mel is quantized as usual
    assert {"conv_re", "conv_im", "pow_re", "pow_im", "power", "mel", "floor"}.isdisjoint(spec.layers)
    assert {"to_db", "conv", "fc"} <= set(spec.layers)
    assert not {"x", "re", "im", "power", "power_t", "mel", "mel_floor"} & set(spec.act_tensors)
    assert state.report.notes["float_before_log"] == ["unsqueeze", "conv_re", "conv_im", "pow_re", "pow_im",
                                                      "power", "transpose", "mel", "floor"]


def _tones(n: int = 1024) -> np.ndarray:
    """Loud tones over a faint noise floor (60-70 dB below them), 16-bit sample values."""
    t, rng = np.arange(n) / 16000, np.random.default_rng(1)
    return np.stack([3000 * np.sin(2 * np.pi * f * t) + rng.normal(0, 3, n)
                     for f in (500, 1000, 3000, 5000)]).astype(np.float32)


def test_a_log_mel_front_end_keeps_its_quiet_bins():
    model = signal_builders.log_mel_classifier()
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False, synth_samples=8,
                               synth_steps=2, input_ranges={"audio": (-32768.0, 32767.0)})
    feeds = {"audio": _tones()}
    err = np.abs(run(out, feeds)[0] - run(model, feeds)[0])
    assert err.mean() < 1.0     # dB: 0.1; with the front end at W8A8 26 dB (the noise floor rounds to 0)


def test_a_log_stops_at_a_relu():
    """A Log on a CNN's output reaches back through the last conv, not through the Relu before it."""
    model = builders.conv_bn_relu()
    graph = model.graph
    graph.node[-1].output[0] = "conv2_out"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(1e-6, np.float32), "eps"))
    graph.node.extend([onnx.helper.make_node("Clip", ["conv2_out", "eps", ""], ["floored"], name="floor"),
                       onnx.helper.make_node("Log", ["floored"], ["output"], name="log")])
    _, spec = _spec(model)
    assert "conv1" in spec.layers and {"conv2", "floor"}.isdisjoint(spec.layers)
    assert "relu1_out" in spec.act_tensors          # conv1's output encoding: conv2 reads it dequantized


@pytest.mark.parametrize("decomposed", [False, True])
def test_a_transformers_residual_stream_stays_float_behind_a_static_head(decomposed):
    """BERT's pooler / classifier Gemms are static on ORT CPU, its MatMuls dynamic: the head's reach
    stops at the last LayerNorm (or the nodes applying a decomposed one's statistics), so no residual
    Add gets an 8-bit quantizer (18.8 dB output SQNR with them, 31 without)."""
    model = token_builders.token_classifier(decomposed=decomposed)
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False)
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert {"cls", "pooled_t"} <= quantized
    assert not {t for t in quantized if any(k in t for k in ("res", "embed", "centred", "var", "l0_ln"))}
    feeds = padded_token_feeds()
    assert sqnr_db(run(model, feeds)[0], run(out, feeds)[0]) > 27.0


def test_a_stream_without_normalizations_stays_float_where_its_forms_read_it():
    """MobileBERT's NoNorm (x * gamma + beta) leaves nothing to stop a static head's reach: it went back
    through every residual Add and NoNorm to the embeddings, rounding on a static grid what the dynamic
    MatMuls read. A tensor a form reads stops it: only the tail after the last form-read tensor is static."""
    model = token_builders.token_classifier(no_norm=True)
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False)
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    tail = {"l1_res2_out", "l1_ln2_scaled", "l1_ln2_out", "cls3", "cls", "pooled", "pooled_t"}
    assert "pooled_t" in quantized and quantized <= tail      # the tail after the last form-read tensor
