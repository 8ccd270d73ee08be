"""ORT-optimized transformers: com.microsoft Attention -> QAttention, EmbedLayerNormalization ->
QEmbedLayerNormalization (the ort-cpu target's [forms]), and their token inputs for synthesis."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from _util import run
from dfq_onnx.models import fused_builders
from onnx import helper, numpy_helper

import dfq_onnx
from dfq_onnx.backends import forms
from dfq_onnx.core import candidates, ir
from dfq_onnx.core.errors import TargetError
from dfq_onnx.core.target import builtin_targets, load_target
from dfq_onnx.synth.tokens import token_layout

KW = {"progress": False, "use_cache": False, "latency_check": False}


def _feeds(n: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, 16), np.int32)
    mask[: n // 2, 12:] = 0
    return {"input_ids": rng.integers(1, 512, (n, 16)).astype(np.int32),
            "segment_ids": (np.arange(16) >= 8).astype(np.int32)[None].repeat(n, 0), "attention_mask": mask}


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_the_default_writes_the_quantized_fused_kernels():
    model = fused_builders.fused_encoder(layers=2)
    before = model.SerializeToString()
    out, report = dfq_onnx.quantize(model, **KW)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out)
    ops = _ops(out)
    assert ops["QAttention"] == 2 and ops["QEmbedLayerNormalization"] == 1
    assert not ops["Attention"] and not ops["EmbedLayerNormalization"]
    assert ops["MatMulInteger"] == 6          # o, f1, f2 of each layer: the dynamic MatMul form
    small = ir.tensor_bytes(out) / ir.tensor_bytes(model)
    assert small < 0.35                       # every weight stored in 8 bits
    want, got = run(model, _feeds())[0], run(out, _feeds())[0]
    assert _cosine(want, got).min() > 0.995


def test_a_fused_embedding_without_segments_is_quantized_too():
    model = fused_builders.fused_encoder(segments=False)
    out, _ = dfq_onnx.quantize(model, **KW)
    assert _ops(out)["QEmbedLayerNormalization"] == 1 and not _ops(out)["EmbedLayerNormalization"]
    feeds = {k: v for k, v in _feeds().items() if k != "segment_ids"}
    assert _cosine(run(model, feeds)[0], run(out, feeds)[0]).min() > 0.995


def test_qattention_computes_what_the_probe_scores():
    """The emitted QAttention equals float Attention with the form's weight_hat on the input rounded as
    DynamicQuantizeLinear rounds it: the sensitivity probe's view of the form is the kernel's."""
    d, rng = 32, np.random.default_rng(0)
    w = rng.normal(0, 0.2, (d, 3 * d)).astype(np.float32)
    w[:, 3] *= 25                             # an outlier column: per-column scales keep the others
    b = rng.normal(0, 0.1, 3 * d).astype(np.float32)
    x = rng.normal(0, 1, (2, 8, d)).astype(np.float32)

    def model(weight):
        node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=4)
        graph = helper.make_graph([node], "a", [helper.make_tensor_value_info("x", 1, [2, 8, d])],
                                  [helper.make_tensor_value_info("y", 1, [2, 8, d])],
                                  [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(b, "b")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid("com.microsoft", 1)])
    out, _ = dfq_onnx.quantize(model(w), **KW)
    assert _ops(out)["QAttention"] == 1
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    s = (hi - lo) / 255
    z = np.round(-lo / s)
    x_hat = ((np.clip(np.round(x / s) + z, 0, 255) - z) * s).astype(np.float32)
    w_hat = forms.weight_hat("Attention", w, candidates.parse("W8A8-dyn"))
    want = run(model(w_hat), {"x": x_hat})[0]
    got = run(out, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("case", ["qkv_hidden_sizes", "attention_bias"])
def test_attention_without_a_quantized_kernel_stays_float(case):
    model = fused_builders.fused_encoder()
    node = next(n for n in model.graph.node if n.op_type == "Attention")
    if case == "qkv_hidden_sizes":
        node.attribute.append(helper.make_attribute("qkv_hidden_sizes", [64, 64, 64]))
    else:       # a relative-position bias [1, heads, S, S] as input 5: QAttention has no such input
        node.input.extend(["", "rel_bias"])
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 4, 16, 16), np.float32),
                                                               "rel_bias"))
    out, _ = dfq_onnx.quantize(model, **KW)
    ops = _ops(out)
    assert ops["Attention"] == 1 and not ops["QAttention"]
    assert ops["QEmbedLayerNormalization"] == 1
    assert _cosine(run(model, _feeds())[0], run(out, _feeds())[0]).min() > 0.995


def test_fused_embedding_inputs_are_token_inputs():
    layout = token_layout(ir.to_graph(fused_builders.fused_encoder()))
    roles = {t.name: t.role for t in layout.inputs}
    assert roles == {"input_ids": "ids", "segment_ids": "type", "attention_mask": "mask"}
    assert layout.table == "word.weight" and layout.length == 16


def test_a_budget_scores_the_fused_layers_with_synthetic_tokens():
    model = fused_builders.fused_encoder()
    out, report = dfq_onnx.quantize(model, avg_weight_bits=7, **KW)
    ops = _ops(out)
    assert ops["QAttention"] == 1 and ops["QEmbedLayerNormalization"] == 1
    assert report.notes["synthesis"]["objective"] == "tokens"
    assert _cosine(run(model, _feeds())[0], run(out, _feeds())[0]).min() > 0.99


def test_the_tensor_form_is_the_fused_embeddings_only(tmp_path):
    text = builtin_targets()["ort-cpu"].read_text()
    bad = text.replace('MatMul = ["W8A8-dyn",', 'MatMul = ["W8A32-tensor", "W8A8-dyn",', 1)
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(TargetError, match="MatMul.*W8A32-tensor.*EmbedLayerNormalization only"):
        load_target(path)


def test_a_budget_scores_a_token_model_on_the_users_samples(tmp_path):
    """No activation range to measure (every MatMul dynamic), yet a budget's sensitivity reads the --calib
    samples instead of falling back to noise, which cannot make token ids."""
    model = fused_builders.fused_encoder()
    path = tmp_path / "tokens.npz"
    np.savez(path, **_feeds(16, seed=5))
    out, report = dfq_onnx.quantize(model, calib=str(path), avg_weight_bits=7, **KW)
    assert _ops(out)["QAttention"] == 1
    assert report.forward_passes > 0          # the table was scored (W8A8 alone needs no pass)
