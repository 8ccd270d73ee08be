"""Transformer encoders as ONNX Runtime's transformer optimizer writes them (com.microsoft fused ops).

``fused_encoder``: what `onnxruntime.transformers.optimizer` makes of a BERT export::

    input_ids, segment_ids (int32) ─ EmbedLayerNormalization(word [V, D], position [S, D], segment [2, D],
        gamma, beta, mask) ─► h, mask_index
    h ─ Attention(W_qkv [D, 3D], b [3D], mask_index; num_heads) ─ MatMul(W_o) ─ SkipLayerNormalization(h)
      ─ MatMul(W_1) ─ BiasGelu ─ MatMul(W_2) ─ SkipLayerNormalization ─► token_states [N, S, D]

With `segments=False` there is no segment input or table (DistilBERT's fused embedding).
The word table keeps the layout of `token_builders` (pad row 0, reserved rows near the mean) and one
output channel of W_2 is scaled by `outlier` (the residual stream's outlier channel of trained BERTs).
Passes the ONNX checker (com.microsoft ops are not checked) and runs in ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _init, _model, _vi
from dfq_onnx.models.token_builders import _word_table
from onnx import TensorProto, helper

__all__ = ["fused_encoder"]

MS = "com.microsoft"


def _matmul(name: str, x: str, w: np.ndarray, inits: list, nodes: list) -> str:
    inits.append(_init(f"{name}.weight", w))
    nodes.append(helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}_out"], name=name))
    return f"{name}_out"


def _skip_ln(name: str, x: str, skip: str, bias: np.ndarray, d: int, inits: list, nodes: list) -> str:
    inits += [_init(f"{name}.gamma", np.ones(d, np.float32)), _init(f"{name}.beta", np.zeros(d, np.float32)),
              _init(f"{name}.bias", bias)]
    nodes.append(helper.make_node("SkipLayerNormalization", [x, skip, f"{name}.gamma", f"{name}.beta",
                                                            f"{name}.bias"],
                                  [f"{name}_out"], name=name, domain=MS, epsilon=1e-12))
    return f"{name}_out"


def fused_encoder(vocab: int = 512, seq: int = 16, d: int = 64, heads: int = 4, ffn: int = 128,
                  layers: int = 1, outlier: float = 8.0, seed: int = 0,
                  segments: bool = True) -> onnx.ModelProto:
    """The encoder of the module docstring; inputs input_ids / [segment_ids] / attention_mask int32
    [N, seq], output token_states [N, seq, d]."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("word.weight", _word_table(rng, vocab, d)),
                   _init("position.weight", rng.normal(0, 0.1, (seq, d)).astype(np.float32)),
                   _init("segment.weight", rng.normal(0, 0.1, (2, d)).astype(np.float32)),
                   _init("emb.gamma", np.ones(d, np.float32)), _init("emb.beta", np.zeros(d, np.float32))]
    if not segments:
        inits = [t for t in inits if t.name != "segment.weight"]
    seg = ("segment_ids", "segment.weight") if segments else ("", "")
    nodes: list = [helper.make_node(
        "EmbedLayerNormalization", ["input_ids", seg[0], "word.weight", "position.weight", seg[1],
                                    "emb.gamma", "emb.beta", "attention_mask"],
        ["emb_out", "mask_index"], name="embed", domain=MS, epsilon=1e-12)]
    h = "emb_out"
    for i in range(layers):
        p = f"l{i}_"
        inits += [_init(p + "qkv.weight", rng.normal(0, d ** -0.5, (d, 3 * d)).astype(np.float32)),
                  _init(p + "qkv.bias", rng.normal(0, 0.02, 3 * d).astype(np.float32))]
        nodes.append(helper.make_node("Attention", [h, p + "qkv.weight", p + "qkv.bias", "mask_index"],
                                      [p + "attn_out"], name=p + "attn", domain=MS, num_heads=heads))
        w_o = rng.normal(0, d ** -0.5, (d, d)).astype(np.float32)
        o = _matmul(p + "o", p + "attn_out", w_o, inits, nodes)
        h1 = _skip_ln(p + "ln1", o, h, rng.normal(0, 0.02, d).astype(np.float32), d, inits, nodes)
        f1 = _matmul(p + "f1", h1, rng.normal(0, d ** -0.5, (d, ffn)).astype(np.float32), inits, nodes)
        inits.append(_init(p + "gelu.bias", rng.normal(0, 0.02, ffn).astype(np.float32)))
        nodes.append(helper.make_node("BiasGelu", [f1, p + "gelu.bias"], [p + "gelu_out"], name=p + "gelu",
                                      domain=MS))
        w2 = rng.normal(0, ffn ** -0.5, (ffn, d)).astype(np.float32)
        w2[:, 0] *= outlier
        f2 = _matmul(p + "f2", p + "gelu_out", w2, inits, nodes)
        h = _skip_ln(p + "ln2", f2, h1, rng.normal(0, 0.02, d).astype(np.float32), d, inits, nodes)
    nodes.append(helper.make_node("Identity", [h], ["token_states"], name="states"))
    names = ("input_ids", "segment_ids", "attention_mask") if segments else ("input_ids", "attention_mask")
    ins = [_vi(n, ["N", seq], TensorProto.INT32) for n in names]
    return _model(nodes, ins, [_vi("token_states", ["N", seq, d])], inits, name="fused_encoder",
                  extra_opsets={MS: 1})
