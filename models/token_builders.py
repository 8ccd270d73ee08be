"""Tiny token models (int64 token inputs, a Gather embedding), for the transformer passes (issue 15).

``token_encoder``: a BERT-style sentence encoder, post-LN, one attention head per layer::

    input_ids ─ Gather(word [V, D]) ─ Add(position [S, D]) ─ ln_emb ─┬─ q ─┐
    attention_mask ─ Cast ─ (1 - m) * -1e4 ─ Unsqueeze ──────────────┼─ k ─┴─ scores ─ Add(mask) ─ Softmax ─┐
                                                                     └─ v ───────────────────────── ctx ─┘
        ─ o ─ Add(residual) ─ ln1 ─ f1 ─ Relu ─ f2 (one output channel x outlier) ─ Add(residual) ─ ln2
        ─► token_states [N, S, D];  masked mean over S ─► embedding [N, D]

The word table has row 0 all zeros (the pad id, as PyTorch's `padding_idx` leaves it) and V/16
"unused" rows near the table's mean (reserved tokens training never updates), the layout
dfq_onnx/synth/tokens.py reads a vocabulary prior from.

``token_classifier``: the encoder with BERT's sequence-classification head instead of the pooled
embedding: h[:, :1] ─ Flatten ─ Gemm(pooler) ─ Tanh ─ Gemm(classifier) ─► logits [N, classes]; the Gemms are
statically quantized on ORT CPU (a head, not a [forms] MatMul), the rest of the model is not;
`decomposed=True` writes each LayerNorm as an opset-13 exporter does (ReduceMean, Sub, Pow, ReduceMean, Add
eps, Sqrt, Div, Mul gamma, Add beta: PyTorch below opset 17, paddle2onnx). `act="gelu"`: the FFN's Relu
is GELU as torch.onnx writes it, x ─┬─ Div(sqrt 2) ─ Erf ─ Add(1) ─┬─ Mul ─ Mul(0.5); `ln_outlier`: ln1's
gamma that large on channels 1-4, f1's rows for them that much smaller (a trained BERT's LayerNorm outlier
channels).

``token_lm``: a decoder-only LM: input_ids only, a causal mask (a constant upper triangle of -1e4
added to the scores), and the word table tied to the LM head (logits = h @ word^T, the same
initializer read by the Gather and, through a Transpose, by the head MatMul).

``token_lm_cache``: one attention layer of a decoder exported for incremental decoding: float inputs
past_key / past_value [N, P, D] (P dynamic, 0 on the first call), outputs present_* = Concat(past_*, new,
axis 1) beside the logits; no position table and no causal mask (its head is not causal).

``merged_decoder``: Optimum's decoder_model_merged layout: one If on use_cache_branch selecting
``token_lm_cache`` with or without its cache, the weights in the outer graph.

``token_decoder_cross``: one cross-attention layer of an encoder-decoder's decoder: input_ids and the
encoder's states [N, S_enc, D] (a float input read by the key / value MatMuls).

``one_hot_classifier``: a byte-sequence classifier whose embedding is a one-hot product (TF / JAX
exports, e.g. Magika): ids [N, S] ─ Unsqueeze ─ Equal(0 .. V-1) (or OneHot(V)) ─ Cast ─ MatMul(table
[V, D]) ─ Conv over the sequence (as [N, D, S]) ─ Relu ─ ReduceMax over S ─ Gemm ─► logits [N, classes].

``wrapped_tagger``: a per-position tagger whose lookup first wraps negative ids, as Keras 3's Embedding
(``ops.take``) writes ``where(ids < 0, ids + V, ids)`` and tf2onnx exports it (`select="arith"`: the select
as Cast(bool) products and their sum; `"where"`: one Where): ids [N, S] int32 ─ wrap ─ Gather(table [V, D])
─ Transpose ─ Conv (k 3) ─ Relu ─ Conv (1 x 1) ─ Softmax over the classes ─ Transpose ─► tags [N, S, C].

``last_token_step``: a step decoder that reads the whole prefix ids [N, S] and embeds its last token only
(a GRU transliterator's decoder as torch.onnx writes it): Gather(ids, -1, axis 1) (or `pick="slice"`:
Slice(ids, -1:, axis 1)) ─ Gather(table [V, D]) ─ MatMul ─ Relu ─ MatMul ─► logits [N, V] ([N, 1, V]).

``dual_encoder``: a CLIP-style pair, text and image in one graph: input_ids [Nt, S] ─ Gather(word) ─
ReduceMean ─ MatMul ─► text [Nt, D]; pixel_values [Ni, 3, H, W] ─ Conv ─ Relu ─ GlobalAveragePool ─
Flatten ─► image [Ni, D]; logits_per_image = image @ text^T [Ni, Nt]. `hw=None`: H, W dynamic.

All pass the ONNX checker and run in ONNX Runtime (opset 17, LayerNormalization).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.act_builders import _ln, _mm
from dfq_onnx.models.builders import _init, _model, _vi
from onnx import TensorProto, helper

__all__ = ["last_token_step", "merged_decoder", "one_hot_classifier", "token_classifier",
           "token_decoder_cross", "token_encoder", "token_lm", "token_lm_cache"]


def _word_table(rng, vocab: int, d: int) -> np.ndarray:
    table = rng.normal(0, 0.5, (vocab, d)).astype(np.float32)
    unused = slice(1, 1 + vocab // 16)
    table[unused] = table.mean(axis=0) + rng.normal(0, 1e-3, (vocab // 16, d)).astype(np.float32)
    table[0] = 0.0
    return table


def _gelu(p: str, x: str, nodes: list) -> str:
    """GELU as torch.onnx writes it: x * (erf(x / sqrt 2) + 1) * 0.5 (constants `sqrt2`, `one`, `half`)."""
    nodes += [helper.make_node("Div", [x, "sqrt2"], [p + "gelu_div"], name=p + "gelu_div"),
              helper.make_node("Erf", [p + "gelu_div"], [p + "gelu_erf"], name=p + "gelu_erf"),
              helper.make_node("Add", [p + "gelu_erf", "one"], [p + "gelu_add"], name=p + "gelu_add"),
              helper.make_node("Mul", [x, p + "gelu_add"], [p + "gelu_mul"], name=p + "gelu_mul"),
              helper.make_node("Mul", [p + "gelu_mul", "half"], [p + "gelu_out"], name=p + "gelu_half")]
    return p + "gelu_out"


def _block(i: int, h: str, bias_term: str, rng, d: int, ffn: int, outlier: float, inits: list,
           nodes: list, ln=_ln, act: str = "relu") -> str:
    """One post-LN encoder/decoder layer on h [N, S, D]; `bias_term` [.., S, S] is added to the scores;
    `act`: the FFN's activation, "relu" or "gelu" (Erf form)."""
    p = f"l{i}_"
    q, k, v = (_mm(p + n, h, rng, d, d, inits, nodes) for n in ("q", "k", "v"))
    nodes += [helper.make_node("Transpose", [k], [p + "kT_out"], name=p + "kT", perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, p + "kT_out"], [p + "scores_out"], name=p + "scores"),
              helper.make_node("Mul", [p + "scores_out", "scale"], [p + "scaled_out"], name=p + "scaled"),
              helper.make_node("Add", [p + "scaled_out", bias_term], [p + "masked_out"], name=p + "masked"),
              helper.make_node("Softmax", [p + "masked_out"], [p + "probs_out"], name=p + "softmax", axis=-1),
              helper.make_node("MatMul", [p + "probs_out", v], [p + "ctx_out"], name=p + "ctx")]
    o = _mm(p + "o", p + "ctx_out", rng, d, d, inits, nodes)
    nodes.append(helper.make_node("Add", [h, o], [p + "res1_out"], name=p + "res1"))
    h1 = ln(p + "ln1", p + "res1_out", d, inits, nodes)
    f = _mm(p + "f1", h1, rng, d, ffn, inits, nodes)
    if act == "gelu":
        a = _gelu(p, f, nodes)
    else:
        nodes.append(helper.make_node("Relu", [f], [p + "relu_out"], name=p + "relu"))
        a = p + "relu_out"
    col = np.ones(d, np.float32)
    col[0] = outlier
    f2 = _mm(p + "f2", a, rng, ffn, d, inits, nodes, col_scale=col)
    nodes.append(helper.make_node("Add", [h1, f2], [p + "res2_out"], name=p + "res2"))
    return ln(p + "ln2", p + "res2_out", d, inits, nodes)


def _embed(rng, vocab: int, seq: int, d: int, inits: list, nodes: list, ln=_ln) -> str:
    inits += [_init("word.weight", _word_table(rng, vocab, d)),
              _init("position.weight", rng.normal(0, 0.1, (seq, d)).astype(np.float32)),
              _init("scale", np.array(1.0 / np.sqrt(d), np.float32))]
    nodes += [helper.make_node("Gather", ["word.weight", "input_ids"], ["words_out"], name="words"),
              helper.make_node("Add", ["words_out", "position.weight"], ["embed_out"], name="embed")]
    return ln("ln_emb", "embed_out", d, inits, nodes)


def _ln_decomposed(name: str, x: str, d: int, inits: list, nodes: list) -> str:
    inits += [_init(f"{name}.gamma", np.ones(d, np.float32)), _init(f"{name}.beta", np.zeros(d, np.float32))]
    p = name + "_"
    nodes += [helper.make_node("ReduceMean", [x], [p + "mean"], name=p + "mean", axes=[-1]),
              helper.make_node("Sub", [x, p + "mean"], [p + "centred"], name=p + "centre"),
              helper.make_node("Pow", [p + "centred", "two"], [p + "sq"], name=p + "square"),
              helper.make_node("ReduceMean", [p + "sq"], [p + "var"], name=p + "var", axes=[-1]),
              helper.make_node("Add", [p + "var", "eps"], [p + "var_eps"], name=p + "var_eps"),
              helper.make_node("Sqrt", [p + "var_eps"], [p + "std"], name=p + "std"),
              helper.make_node("Div", [p + "centred", p + "std"], [p + "normed"], name=p + "normalize"),
              helper.make_node("Mul", [p + "normed", f"{name}.gamma"], [p + "scaled"], name=p + "gamma"),
              helper.make_node("Add", [p + "scaled", f"{name}.beta"], [f"{name}_out"], name=p + "beta")]
    return f"{name}_out"


def _no_norm(name: str, x: str, d: int, inits: list, nodes: list) -> str:
    """MobileBERT's NoNorm: an elementwise x * gamma + beta, no statistics (gammas spread as trained)."""
    gamma = np.exp(np.random.default_rng(d).normal(0, 0.5, d)).astype(np.float32)
    inits += [_init(f"{name}.gamma", gamma), _init(f"{name}.beta", np.zeros(d, np.float32))]
    nodes += [helper.make_node("Mul", [x, f"{name}.gamma"], [f"{name}_scaled"], name=name + "_gamma"),
              helper.make_node("Add", [f"{name}_scaled", f"{name}.beta"], [f"{name}_out"],
                               name=name + "_beta")]
    return f"{name}_out"


def _mask_bias(inits: list, nodes: list) -> None:
    inits += [_init("one", np.array(1.0, np.float32)), _init("neg", np.array(-1e4, np.float32)),
              _init("axis1", np.array([1], np.int64))]
    nodes += [helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=1),
              helper.make_node("Sub", ["one", "mask_f"], ["mask_inv"], name="mask_inv"),
              helper.make_node("Mul", ["mask_inv", "neg"], ["mask_neg"], name="mask_neg"),
              helper.make_node("Unsqueeze", ["mask_neg", "axis1"], ["mask_bias"], name="mask_bias")]


def token_encoder(vocab: int = 512, seq: int = 16, d: int = 128, ffn: int = 256, layers: int = 1,
                  outlier: float = 20.0, bool_mask: bool = False, seed: int = 0) -> onnx.ModelProto:
    """The encoder of the module docstring; outputs token_states [N, seq, d] and embedding [N, d].
    `bool_mask`: attention_mask is a boolean input (True on real tokens), as PyTorch exports a bool mask."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("axis2", np.array([2], np.int64))]
    nodes: list = []
    _mask_bias(inits, nodes)
    h = _embed(rng, vocab, seq, d, inits, nodes)
    for i in range(layers):
        h = _block(i, h, "mask_bias", rng, d, ffn, outlier, inits, nodes)
    nodes += [helper.make_node("Identity", [h], ["token_states"], name="states"),
              helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"], name="mask3"),
              helper.make_node("Mul", [h, "mask3"], ["kept"], name="pool_mask"),
              helper.make_node("ReduceSum", ["kept", "axis1"], ["pool_sum"], name="pool_sum", keepdims=0),
              helper.make_node("ReduceSum", ["mask3", "axis1"], ["pool_n"], name="pool_n", keepdims=0),
              helper.make_node("Div", ["pool_sum", "pool_n"], ["embedding"], name="pool")]
    ins = [_vi("input_ids", ["N", seq], TensorProto.INT64),
           _vi("attention_mask", ["N", seq], TensorProto.BOOL if bool_mask else TensorProto.INT64)]
    return _model(nodes, ins, [_vi("token_states", ["N", seq, d]), _vi("embedding", ["N", d])], inits,
                  name="token_encoder")


def token_classifier(vocab: int = 512, seq: int = 16, d: int = 128, ffn: int = 256, layers: int = 2,
                     classes: int = 3, outlier: float = 20.0, decomposed: bool = False,
                     no_norm: bool = False, act: str = "relu", ln_outlier: float = 1.0,
                     hidden_output: bool = False, ffn_outlier: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """The encoder with a pooler and classifier head (module docstring); output logits [N, classes].
    `no_norm`: every LayerNorm is MobileBERT's NoNorm (x * gamma + beta); `act`: the FFN activation
    ("gelu": Erf form); `ln_outlier`: each block's ln1 gamma is that large on 4 channels and the FFN's
    weight rows reading them that much smaller (the outlier channels of trained BERT-family LayerNorm
    outputs, which the next layer's weights scale back); `hidden_output`: the last block's output is a
    graph output too (last_hidden_state [N, seq, d] beside the logits, as Hugging Face exports write it);
    `ffn_outlier`: the first FFN MatMul's columns 1-4 (and bias) that much larger and the second's rows for
    them that much smaller, so the activation's outputs carry 4 channels ~that much above the rest (the
    GELU outputs of trained encoders, all-mpnet-base-v2's FFN-out inputs: up to 65x their median)."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("first", np.array([0], np.int64)),
                   _init("pooler.weight", (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)),
                   _init("pooler.bias", rng.normal(0, 0.1, d).astype(np.float32)),
                   _init("classifier.weight",
                         (rng.standard_normal((classes, d)) / np.sqrt(d)).astype(np.float32))]
    nodes: list = []
    ln = _no_norm if no_norm else _ln_decomposed if decomposed else _ln
    if decomposed:
        inits += [_init("two", np.array(2.0, np.float32)), _init("eps", np.array(1e-5, np.float32))]
    if act == "gelu":
        inits += [_init(n, np.array(v, np.float32)) for n, v in (("sqrt2", np.sqrt(2.0)), ("half", 0.5))]
    _mask_bias(inits, nodes)
    h = _embed(rng, vocab, seq, d, inits, nodes, ln)
    for i in range(layers):
        h = _block(i, h, "mask_bias", rng, d, ffn, outlier, inits, nodes, ln, act)
    for t in inits if ln_outlier != 1.0 else ():
        if t.name.endswith("ln1.gamma"):             # channels 1-4 large, and the FFN's rows for them small
            g = np.ones(d, np.float32)
            g[1:5] = ln_outlier
            t.CopyFrom(_init(t.name, g))
        elif t.name.endswith("f1.weight"):
            w = onnx.numpy_helper.to_array(t).copy()
            w[1:5] /= ln_outlier
            t.CopyFrom(_init(t.name, w))
    for t in inits if ffn_outlier != 1.0 else ():
        if t.name.endswith(("f1.weight", "f1.bias")):    # output channels 1-4 of the first FFN MatMul
            w = onnx.numpy_helper.to_array(t).copy()
            w[..., 1:5] *= ffn_outlier
            t.CopyFrom(_init(t.name, w))
        elif t.name.endswith("f2.weight"):               # and the second's input rows for them
            w = onnx.numpy_helper.to_array(t).copy()
            w[1:5] /= ffn_outlier
            t.CopyFrom(_init(t.name, w))
    nodes += [helper.make_node("Gather", [h, "first"], ["cls3"], name="cls", axis=1),
              helper.make_node("Flatten", ["cls3"], ["cls"], name="cls_flat", axis=1),
              helper.make_node("Gemm", ["cls", "pooler.weight", "pooler.bias"], ["pooled"], name="pooler"),
              helper.make_node("Tanh", ["pooled"], ["pooled_t"], name="pooler_tanh"),
              helper.make_node("Gemm", ["pooled_t", "classifier.weight"], ["logits"], name="classifier",
                               transB=1)]
    ins = [_vi(n, ["N", seq], TensorProto.INT64) for n in ("input_ids", "attention_mask")]
    outs = [_vi("logits", ["N", classes])] + ([_vi(h, ["N", seq, d])] if hidden_output else [])
    return _model(nodes, ins, outs, inits, opset=13 if decomposed else 17, name="token_classifier")


def token_lm(vocab: int = 512, seq: int = 16, d: int = 128, ffn: int = 256, layers: int = 1,
             outlier: float = 20.0, seed: int = 0) -> onnx.ModelProto:
    """The decoder-only LM of the module docstring; output logits [N, seq, vocab]."""
    rng = np.random.default_rng(seed)
    causal = np.triu(np.full((seq, seq), -1e4, np.float32), k=1)
    inits: list = [_init("causal", causal)]
    nodes: list = []
    h = _embed(rng, vocab, seq, d, inits, nodes)
    for i in range(layers):
        h = _block(i, h, "causal", rng, d, ffn, outlier, inits, nodes)
    nodes += [helper.make_node("Transpose", ["word.weight"], ["word_t"], name="head_t", perm=[1, 0]),
              helper.make_node("MatMul", [h, "word_t"], ["logits"], name="head")]
    return _model(nodes, [_vi("input_ids", ["N", seq], TensorProto.INT64)],
                  [_vi("logits", ["N", seq, vocab])], inits, name="token_lm")


def token_lm_cache(vocab: int = 256, d: int = 32, width: int | str = "S", seed: int = 0,
                   masked: bool = False, position_offset: int | None = None) -> onnx.ModelProto:
    """The decoder layer with a key/value cache of the module docstring; outputs logits [N, S, vocab],
    present_key and present_value [N, P + S, d]; `width` 1: the graph takes one token per call.
    `masked`: Llama-style inputs besides -- attention_mask [N, P + S] made an additive bias of 0 / -inf
    (Where, as Hugging Face's exports write it) added to the scores, and position_ids [N, S] read through
    Cos (a rotary-like scaling of the queries), no position table; with `position_offset` (OPT) they
    are read through Add(offset) -> Gather(a learned table [128 + offset, d]) added to the queries."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("word.weight", _word_table(rng, vocab, d)),
                   _init("scale", np.array(1.0 / np.sqrt(d), np.float32))]
    nodes: list = [helper.make_node("Gather", ["word.weight", "input_ids"], ["h"], name="words")]
    q, k, v = (_mm(n, "h", rng, d, d, inits, nodes) for n in ("q", "k", "v"))
    if masked:
        inits += [_init("freq", (1.0 / 10000 ** (np.arange(d) / d)).astype(np.float32)),
                  _init("minus_inf", np.array(-np.inf, np.float32)),
                  _init("zero", np.array(0.0, np.float32)), _init("axis1", np.array([1], np.int64)),
                  _init("axis_last", np.array([-1], np.int64))]
        f32, b8 = TensorProto.FLOAT, TensorProto.BOOL
        if position_offset is None:
            nodes += [helper.make_node("Cast", ["position_ids"], ["pos_f"], name="pos_cast", to=f32),
                      helper.make_node("Unsqueeze", ["pos_f", "axis_last"], ["pos_col"], name="pos_col"),
                      helper.make_node("Mul", ["pos_col", "freq"], ["angles"], name="angles"),
                      helper.make_node("Cos", ["angles"], ["cos"], name="cos"),
                      helper.make_node("Mul", [q, "cos"], ["q_rot"], name="rotate")]
        else:
            table = rng.normal(0, 0.1, (128 + position_offset, d)).astype(np.float32)
            inits += [_init("offset", np.array(position_offset, np.int64)), _init("position.weight", table)]
            nodes += [helper.make_node("Add", ["position_ids", "offset"], ["pos_rows"], name="pos_offset"),
                      helper.make_node("Gather", ["position.weight", "pos_rows"], ["pos"], name="positions"),
                      helper.make_node("Add", [q, "pos"], ["q_rot"], name="rotate")]
        nodes += [helper.make_node("Cast", ["attention_mask"], ["keep"], name="mask_cast", to=b8),
                  helper.make_node("Unsqueeze", ["keep", "axis1"], ["keep_rows"], name="mask_rows")]
        q = "q_rot"
    nodes += [helper.make_node("Concat", ["past_key", k], ["present_key"], name="cat_k", axis=1),
              helper.make_node("Concat", ["past_value", v], ["present_value"], name="cat_v", axis=1),
              helper.make_node("Transpose", ["present_key"], ["kT"], name="kT", perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, "kT"], ["scores"], name="scores"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scaled")]
    if masked:
        nodes += [helper.make_node("Where", ["keep_rows", "zero", "minus_inf"], ["mask_bias"], name="bias"),
                  helper.make_node("Add", ["scaled", "mask_bias"], ["filled"], name="fill")]
    scores = "filled" if masked else "scaled"
    nodes += [helper.make_node("Softmax", [scores], ["probs"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs", "present_value"], ["ctx"], name="ctx")]
    o = _mm("o", "ctx", rng, d, d, inits, nodes)
    nodes += [helper.make_node("Add", ["h", o], ["res"], name="res"),
              helper.make_node("Transpose", ["word.weight"], ["word_t"], name="head_t", perm=[1, 0]),
              helper.make_node("MatMul", ["res", "word_t"], ["logits"], name="head")]
    ins = [_vi("input_ids", ["N", width], TensorProto.INT64), _vi("past_key", ["N", "P", d]),
           _vi("past_value", ["N", "P", d])]
    if masked:
        ins += [_vi("attention_mask", ["N", "T"], TensorProto.INT64),
                _vi("position_ids", ["N", width], TensorProto.INT64)]
    outs = [_vi("logits", ["N", width, vocab]), _vi("present_key", ["N", "T", d]),
            _vi("present_value", ["N", "T", d])]
    return _model(nodes, ins, outs, inits, name="token_lm_cache")


def token_decoder_cross(vocab: int = 256, d: int = 32, enc_len: int | str = 10,
                        seed: int = 0) -> onnx.ModelProto:
    """The cross-attention decoder layer of the module docstring; output logits [N, S, vocab] (`enc_len` a
    name: the encoder's length dynamic, as Optimum exports it)."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("word.weight", _word_table(rng, vocab, d)),
                   _init("scale", np.array(1.0 / np.sqrt(d), np.float32))]
    nodes: list = [helper.make_node("Gather", ["word.weight", "input_ids"], ["h"], name="words")]
    q = _mm("q", "h", rng, d, d, inits, nodes)
    k, v = (_mm(n, "encoder_states", rng, d, d, inits, nodes) for n in ("k", "v"))
    nodes += [helper.make_node("Transpose", [k], ["kT"], name="kT", perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, "kT"], ["scores"], name="scores"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scaled"),
              helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs", v], ["ctx"], name="ctx")]
    o = _mm("o", "ctx", rng, d, d, inits, nodes)
    nodes += [helper.make_node("Add", ["h", o], ["res"], name="res"),
              helper.make_node("Transpose", ["word.weight"], ["word_t"], name="head_t", perm=[1, 0]),
              helper.make_node("MatMul", ["res", "word_t"], ["logits"], name="head")]
    ins = [_vi("input_ids", ["N", "S"], TensorProto.INT64), _vi("encoder_states", ["N", enc_len, d])]
    return _model(nodes, ins, [_vi("logits", ["N", "S", vocab])], inits, name="token_decoder_cross")


def one_hot_classifier(vocab: int = 257, seq: int = 32, d: int = 16, classes: int = 5, op: str = "Equal",
                       first: int = 0, seed: int = 0) -> onnx.ModelProto:
    """The one-hot byte classifier of the module docstring (`op` "Equal" or "OneHot"; Equal compares
    with first .. first + vocab - 1)."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("table", rng.normal(0, 0.5, (vocab, d)).astype(np.float32)),
                   _init("axes", np.array([-1], np.int64)),
                   _init("conv.weight", (rng.standard_normal((d, d, 3)) / np.sqrt(3 * d)).astype(np.float32)),
                   _init("fc.weight", (rng.standard_normal((classes, d)) / np.sqrt(d)).astype(np.float32))]
    if op == "OneHot":
        inits += [_init("depth", np.array(vocab, np.int64)), _init("onoff", np.array([0, 1], np.int64))]
        nodes = [helper.make_node("OneHot", ["ids", "depth", "onoff"], ["hot"], name="one_hot", axis=-1)]
    else:
        inits.append(_init("iota", np.arange(first, first + vocab, dtype=np.int32).reshape(1, 1, vocab)))
        nodes = [helper.make_node("Unsqueeze", ["ids", "axes"], ["ids3"], name="unsqueeze"),
                 helper.make_node("Equal", ["ids3", "iota"], ["hot"], name="one_hot")]
    nodes += [helper.make_node("Cast", ["hot"], ["hot_f"], name="cast", to=TensorProto.FLOAT),
              helper.make_node("MatMul", ["hot_f", "table"], ["emb"], name="embed"),
              helper.make_node("Transpose", ["emb"], ["emb_t"], name="to_channels", perm=[0, 2, 1]),
              helper.make_node("Conv", ["emb_t", "conv.weight"], ["conv_out"], name="conv", pads=[1, 1]),
              helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
              helper.make_node("ReduceMax", ["relu_out", "axes"], ["pool"], name="pool", keepdims=0),
              helper.make_node("Gemm", ["pool", "fc.weight"], ["logits"], name="fc", transB=1)]
    dtype = TensorProto.INT64 if op == "OneHot" else TensorProto.INT32
    return _model(nodes, [_vi("ids", ["N", seq], dtype)], [_vi("logits", ["N", classes])], inits, opset=18,
                  name="one_hot_classifier")


def wrapped_tagger(vocab: int = 49, seq: int = 24, d: int = 32, classes: int = 7, select: str = "arith",
                   seed: int = 0) -> onnx.ModelProto:
    """The negative-id-wrapping tagger of the module docstring."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal
    inits: list = [_init("table", rng.normal(0, 0.5, (vocab, d)).astype(np.float32)),
                   _init("vocab", np.array(vocab, np.int32)), _init("zero", np.array(0.0, np.float32)),
                   _init("conv.weight", (normal((d, d, 3)) / np.sqrt(3 * d)).astype(np.float32)),
                   _init("conv.bias", rng.normal(0, 0.1, d).astype(np.float32)),
                   _init("tag.weight", (normal((classes, d, 1)) / np.sqrt(d)).astype(np.float32))]
    int32 = TensorProto.INT32
    nodes = [helper.make_node("Add", ["ids", "vocab"], ["wrapped"], name="wrap"),
             helper.make_node("Cast", ["ids"], ["ids_f"], name="ids_float", to=TensorProto.FLOAT),
             helper.make_node("Less", ["ids_f", "zero"], ["negative"], name="negative")]
    if select == "where":
        nodes.append(helper.make_node("Where", ["negative", "wrapped", "ids"], ["index"], name="select"))
    else:
        nodes += [helper.make_node("Not", ["negative"], ["kept"], name="kept"),
                  helper.make_node("Cast", ["negative"], ["negative_i"], name="negative_int", to=int32),
                  helper.make_node("Cast", ["kept"], ["kept_i"], name="kept_int", to=int32),
                  helper.make_node("Mul", ["negative_i", "wrapped"], ["from_wrapped"], name="take_wrapped"),
                  helper.make_node("Mul", ["ids", "kept_i"], ["from_ids"], name="take_ids"),
                  helper.make_node("Add", ["from_wrapped", "from_ids"], ["index"], name="select")]
    nodes += [helper.make_node("Gather", ["table", "index"], ["emb"], name="embed", axis=0),
              helper.make_node("Transpose", ["emb"], ["emb_t"], name="to_channels", perm=[0, 2, 1]),
              helper.make_node("Conv", ["emb_t", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                               pads=[1, 1]),
              helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
              helper.make_node("Conv", ["relu_out", "tag.weight"], ["scores"], name="tag"),
              helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=1),
              helper.make_node("Transpose", ["probs"], ["tags"], name="to_positions", perm=[0, 2, 1])]
    return _model(nodes, [_vi("ids", ["N", seq], int32)], [_vi("tags", ["N", seq, classes])], inits,
                  opset=17, name="wrapped_tagger")


def last_token_step(vocab: int = 49, seq: int = 12, d: int = 32, hidden: int = 64, pick: str = "gather",
                    seed: int = 0) -> onnx.ModelProto:
    """The last-token step decoder of the module docstring."""
    rng = np.random.default_rng(seed)
    inits: list = [_init("table", rng.normal(0, 0.5, (vocab, d)).astype(np.float32)),
                   _init("last", np.array(-1, np.int64)), _init("start", np.array([-1], np.int64)),
                   _init("end", np.array([seq], np.int64)), _init("axis1", np.array([1], np.int64)),
                   _init("w1", (rng.standard_normal((d, hidden)) / np.sqrt(d)).astype(np.float32)),
                   _init("w2", (rng.standard_normal((hidden, vocab)) / np.sqrt(hidden)).astype(np.float32))]
    if pick == "gather":
        nodes = [helper.make_node("Gather", ["ids", "last"], ["token"], name="last_token", axis=1)]
        out = _vi("logits", ["N", vocab])
    else:
        nodes = [helper.make_node("Slice", ["ids", "start", "end", "axis1"], ["token"], name="last_token")]
        out = _vi("logits", ["N", 1, vocab])
    nodes += [helper.make_node("Gather", ["table", "token"], ["emb"], name="embed", axis=0),
              helper.make_node("MatMul", ["emb", "w1"], ["h"], name="fc1"),
              helper.make_node("Relu", ["h"], ["h_relu"], name="relu"),
              helper.make_node("MatMul", ["h_relu", "w2"], ["logits"], name="fc2")]
    return _model(nodes, [_vi("ids", ["N", seq], TensorProto.INT32)], [out], inits, opset=17,
                  name="last_token_step")


def dual_encoder(vocab: int = 256, seq: int = 8, d: int = 16, hw: int | None = 8, seed: int = 0
                 ) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list = [_init("word.weight", _word_table(rng, vocab, d)),
                   _init("conv.weight", (rng.standard_normal((d, 3, 3, 3)) / 5).astype(np.float32))]
    nodes: list = [helper.make_node("Gather", ["word.weight", "input_ids"], ["words"], name="words"),
                   helper.make_node("ReduceMean", ["words"], ["pooled"], name="pool_text", axes=[1],
                                    keepdims=0)]
    text = _mm("text_proj", "pooled", rng, d, d, inits, nodes)
    nodes += [helper.make_node("Conv", ["pixel_values", "conv.weight"], ["conv_out"], name="conv",
                               pads=[1] * 4),
              helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
              helper.make_node("GlobalAveragePool", ["relu_out"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["image"], name="flatten"),
              helper.make_node("Transpose", [text], ["text_t"], name="text_t", perm=[1, 0]),
              helper.make_node("MatMul", ["image", "text_t"], ["logits_per_image"], name="similarity")]
    side = hw if hw else "H"
    ins = [_vi("input_ids", ["Nt", seq], TensorProto.INT64), _vi("pixel_values", ["Ni", 3, side, hw or "W"])]
    return _model(nodes, ins, [_vi("logits_per_image", ["Ni", "Nt"])], inits, name="dual_encoder")


def merged_decoder(vocab: int = 256, d: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Optimum's decoder_model_merged layout on `token_lm_cache`: the graph is one If on the boolean input
    use_cache_branch [1]; then_branch is the decoder with its cache (present = Concat(past, new)), else_branch
    the one without (present = new; past_* unread); both read the weights from the outer graph."""
    with_past, no_past = token_lm_cache(vocab, d, seed=seed), token_lm_cache(vocab, d, seed=seed)
    for node in no_past.graph.node:
        if node.op_type == "Concat":
            node.op_type = "Identity"
            del node.input[0]
            del node.attribute[:]
    branches = {}
    for name, m in (("then_branch", with_past), ("else_branch", no_past)):
        g = m.graph
        branches[name] = helper.make_graph(list(g.node), name, [], list(g.output))
    cond = _vi("use_cache_branch", [1], TensorProto.BOOL)
    node = helper.make_node("If", ["use_cache_branch"], [o.name for o in with_past.graph.output],
                            name="optimum::if", **branches)
    return _model([node], [*with_past.graph.input, cond], list(with_past.graph.output),
                  list(with_past.graph.initializer), name="merged_decoder")
