"""Token ids that wrap negatives before the lookup (Keras 3's Embedding through tf2onnx) are token inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import ids_layout, run, token_agreement
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.synth.tokens import token_layout


@pytest.mark.parametrize("select", ["arith", "where"])
def test_a_negative_id_wrap_still_reaches_the_table(select):
    assert ids_layout(token_builders.wrapped_tagger(select=select)) == ("ids", 49, "table", 24)


def test_a_wrapped_id_tagger_compiles_with_no_data():
    assert token_agreement(token_builders.wrapped_tagger(), 49, 24, axis=-1) > 0.9


def test_a_boolean_attention_mask_is_a_mask_input():
    layout = token_layout(ir.to_graph(token_builders.token_encoder(bool_mask=True)))
    mask = layout.of("mask")
    assert (mask.name, mask.dtype) == ("attention_mask", np.dtype(bool))


def test_a_boolean_mask_is_sampled_true_on_the_real_tokens():
    model = token_builders.token_encoder(d=32, ffn=32, bool_mask=True)
    result = dfq_onnx.api.synthesize(model, samples=16, use_cache=False, progress=False)
    mask, ids = result.inputs["attention_mask"], result.inputs["input_ids"]
    assert mask.dtype == np.bool_ and mask.shape == ids.shape == (16, 16)
    lengths = mask.sum(1)
    assert np.array_equal(mask, np.arange(16)[None] < lengths[:, None]) and lengths.min() >= 2
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False, act_bits=8)
    onnx.checker.check_model(out, full_check=True)
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(1, 512, (16, 16)),
             "attention_mask": np.arange(16)[None] < rng.integers(2, 17, (16, 1))}
    want, got = run(model, feeds)[1], run(out, feeds)[1]
    cos = np.sum(want * got, 1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("pick", ["gather", "slice"])
def test_a_step_decoder_that_embeds_its_prefixs_last_token_has_token_inputs(pick):
    """Gather(ids, -1, axis 1) / Slice(ids, -1:) before the lookup picks ids: before, 'input ids ... reaches
    no embedding table' (arabic-name-romanizer's GRU decoder, which embeds the last token of its prefix)."""
    model = token_builders.last_token_step(pick=pick)
    assert ids_layout(model) == ("ids", 49, "table", 12)
    assert token_agreement(model, 49, 12, axis=-1) > 0.9
