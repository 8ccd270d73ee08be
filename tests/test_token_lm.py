"""Token samples made by the model: the causal-LM refinement (synth/token_lm.py) on a graph whose batch is
fixed, and the key/value caches of a decoder exported with past inputs (synth/kv_cache.py)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from _util import run, static_matmul_target
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx import api
from dfq_onnx.core import ir
from dfq_onnx.core.errors import PassError
from dfq_onnx.core.graph_utils import const_values
from dfq_onnx.synth import hidden_inputs, kv_cache
from dfq_onnx.synth.token_lm import refine
from dfq_onnx.synth.tokens import DEFAULT_LENGTH, sample_tokens, token_layout, vocab_prior


def _fixed_batch(graph, batch: int):
    g = ir.copy_graph(graph)
    g.inputs[0].shape = [batch, *g.inputs[0].shape[1:]]
    return g


def _lm_samples(rows: int):
    """The builder LM's graph, token layout, id prior and `rows` prior samples."""
    graph = ir.to_graph(token_builders.token_lm())
    layout = token_layout(graph)
    table = next(t for t in graph.tensors().values() if t.name == layout.table)
    prior, pad = vocab_prior(const_values(table))
    return graph, layout, prior, sample_tokens(layout, prior, pad, rows, np.random.default_rng(0))


def test_refine_on_a_fixed_batch_graph_equals_the_dynamic_one():
    graph, layout, prior, feeds = _lm_samples(5)
    dynamic, passes = refine(graph, layout, feeds, prior, np.random.default_rng(1))
    assert passes > 2                                     # an LM head, causal: the samples were redrawn
    assert not np.array_equal(dynamic["input_ids"], feeds["input_ids"])
    for batch in (1, 2):                                 # 5 rows: batch 2's last call is padded
        fixed, again = refine(_fixed_batch(graph, batch), layout, feeds, prior, np.random.default_rng(1))
        assert again == passes
        np.testing.assert_array_equal(fixed["input_ids"], dynamic["input_ids"])


def test_refine_holds_one_calls_logits_and_samples_the_same_whatever_the_rows_per_call(monkeypatch):
    """The logits of a round are formed a block of rows at a time within LOGIT_BYTES (a Whisper decoder's
    51,864-word head on every sample at once held 19.3 GB); the samples are the one-call samples."""
    from dfq_onnx.synth import token_lm

    graph, layout, prior, feeds = _lm_samples(7)
    whole, passes = refine(graph, layout, feeds, prior, np.random.default_rng(1))
    seq = feeds["input_ids"].shape[1]
    assert token_lm.rows_per_call(7, seq, 512, None) == 7                 # a small head: one call
    assert token_lm.rows_per_call(64, 448, 51864, None) == 1              # Whisper's: a row per call
    assert token_lm.rows_per_call(64, 448, 51864, 4) == 4                 # a fixed batch: whole calls
    calls, real = [], token_lm.runtime.run_all

    def counted(session, feeds, static):
        calls.append(len(feeds["input_ids"]))
        return real(session, feeds, static)

    monkeypatch.setattr(token_lm.runtime, "run_all", counted)
    monkeypatch.setattr(token_lm, "LOGIT_BYTES", 3 * seq * 512 * 8)     # 3 rows a call: 3 + 3 + 1
    blocks, again = refine(graph, layout, feeds, prior, np.random.default_rng(1))
    assert again == passes and calls[2:5] == [3, 3, 1]
    np.testing.assert_array_equal(blocks["input_ids"], whole["input_ids"])


def test_cache_inputs_are_found_and_filled_by_the_model_itself():
    model = token_builders.token_lm_cache()
    graph = ir.to_graph(model)
    caches = kv_cache.cache_inputs(graph)
    assert caches == {"past_key": ("present_key", 1), "past_value": ("present_value", 1)}
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 256, (5, 9))
    feeds = {"input_ids": ids, **kv_cache.empty_caches(graph, caches, 5)}
    assert feeds["past_key"].shape == (5, 0, 32)
    step, passes = kv_cache.decode_step(graph, token_layout(graph), feeds, caches)
    logits, key, value = run(model, {**feeds, "input_ids": ids[:, :-1]})   # the prefix, empty cache
    np.testing.assert_array_equal(step["input_ids"], ids[:, -1:])
    np.testing.assert_array_equal(step["past_key"], key)
    np.testing.assert_array_equal(step["past_value"], value)
    assert passes == 1 and key.shape == (5, 8, 32)
    # a graph exported for one-token steps: the cache is built a call per token, to the same values
    one = ir.to_graph(token_builders.token_lm_cache(width=1))
    assert kv_cache.step_width(one, token_layout(one)) == 1
    steps, passes = kv_cache.decode_step(one, token_layout(one), feeds, caches, 1)
    assert passes == 8
    for name in ("input_ids", "past_key", "past_value"):
        np.testing.assert_allclose(steps[name], step[name], rtol=1e-5, atol=1e-6)


def test_a_decoder_with_a_cache_compiles_with_no_data():
    model = token_builders.token_lm_cache()
    # a mixed plan is scored on samples (W8A8's dynamic forms need none)
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False,
                                    avg_weight_bits=6)
    onnx.checker.check_model(out, full_check=True)
    assert report.notes["synthesis"]["objective"] == "tokens+cache"
    step = api.synthesize(model, samples=6, seed=0, use_cache=False, progress=False).inputs
    assert step["input_ids"].shape == (6, 1) and step["past_key"].shape == (6, DEFAULT_LENGTH - 1, 32)
    want, got = run(model, step), run(out, step)
    assert [w.shape for w in want] == [g.shape for g in got]
    cos = (want[0] * got[0]).sum(-1) / np.linalg.norm(want[0], axis=-1) / np.linalg.norm(got[0], axis=-1)
    assert cos.min() > 0.99


def test_decode_steps_attend_over_every_context_length_and_rotary_positions_are_positions():
    """A decoder's prompt call has tokens attending over 1 .. S tokens; samples that all attend over the
    full cache miss the short contexts (their attention outputs are the widest). Llama's position_ids
    reach no table (rotary: Cos / Sin) and were taken for a mask."""
    model = token_builders.token_lm_cache(masked=True)
    graph = ir.to_graph(model)
    roles = {t.name: t.role for t in token_layout(graph).inputs}
    assert roles == {"input_ids": "ids", "attention_mask": "mask", "position_ids": "position"}
    step = api.synthesize(model, samples=16, seed=0, use_cache=False, progress=False).inputs
    mask, pos = step["attention_mask"], step["position_ids"]
    n, s = mask.shape
    contexts = mask.sum(1)
    assert sorted(contexts) == sorted(1 + (np.arange(n) * (s - 1)) // (n - 1))    # 1 .. S, evenly
    assert all(mask[i, s - c:].all() and not mask[i, :s - c].any() for i, c in enumerate(contexts))
    np.testing.assert_array_equal(pos[:, 0], contexts - 1)          # counted from the first kept token
    assert step["past_key"].shape == (16, s - 1, 32)
    run(model, step)


def test_positions_read_through_an_offset_are_positions():
    """OPT adds 2 to position_ids before its table lookup: the Add hid the table, the input was taken for
    a mask, and a decoding step's samples got S position columns for one token (Calibrate: 'Attempting to
    broadcast an axis by a dimension other than 1')."""
    model = token_builders.token_lm_cache(masked=True, position_offset=2)
    roles = {t.name: t.role for t in token_layout(ir.to_graph(model)).inputs}
    assert roles == {"input_ids": "ids", "attention_mask": "mask", "position_ids": "position"}
    step = api.synthesize(model, samples=8, seed=0, use_cache=False, progress=False).inputs
    assert step["position_ids"].shape == step["input_ids"].shape == (8, 1)
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False)
    want, got = run(model, step)[0], run(out, step)[0]
    assert np.sum(want ** 2) / np.sum((want - got) ** 2) > 100


@pytest.mark.parametrize("target", ["static", "openvino"])
def test_a_tensor_holding_minus_infinity_stays_float_on_an_all_static_target(target, tmp_path):
    """Masked attention scores filled with -inf have no integer encoding: Calibrate keeps them float
    (it stopped the compile: 'tensor ... is not finite on the calibration data'). On openvino the
    attention products stay float and nothing reaches the scores."""
    model = token_builders.token_lm_cache(masked=True)
    profile = static_matmul_target(tmp_path) if target == "static" else target
    out, report = dfq_onnx.quantize(model, target=profile, progress=False, use_cache=False)
    onnx.checker.check_model(out, full_check=True)
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert not {"filled", "mask_bias"} & quantized
    if target == "static":
        assert report.notes["float_unbounded"] == ["filled", "mask_bias"] and "scaled" in quantized
    step = api.synthesize(model, samples=8, seed=1, use_cache=False, progress=False).inputs
    want, got = run(model, step)[0], run(out, step)[0]
    assert np.all(np.isfinite(got)) and np.sum(want ** 2) / np.sum((want - got) ** 2) > 100


def test_images_beside_tokens_are_drawn_from_the_image_prior(caplog):
    """A CLIP-style dual encoder (text and image inputs in one graph) was refused ('float beside token
    inputs'): its images are drawn from the 1/f prior, standardized, with a warning naming the input."""
    model = token_builders.dual_encoder()
    with caplog.at_level(logging.WARNING):
        result = api.synthesize(model, samples=16, seed=0, use_cache=False, progress=False)
    assert "pixel_values" in caplog.text and "--calib" in caplog.text
    images = result.inputs["pixel_values"]
    assert result.objective == "tokens+images" and images.shape == (16, 3, 8, 8)
    assert abs(images.mean()) < 0.2 and 0.8 < images.std() < 1.2
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    onnx.checker.check_model(out, full_check=True)
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "pixel_values" for n in out.graph.node)
    want, got = run(model, result.inputs)[0], run(out, result.inputs)[0]
    assert np.sum(want ** 2) / np.sum((want - got) ** 2) > 100
    with pytest.raises(PassError, match="pixel_values"):       # sizes unknown: still asks
        api.synthesize(token_builders.dual_encoder(hw=None), samples=4, use_cache=False, progress=False)


def test_an_encoder_decoders_decoder_gets_standard_states_and_a_warning(caplog):
    model = token_builders.token_decoder_cross()
    graph = ir.to_graph(model)
    assert hidden_inputs.hidden_inputs(graph, {"input_ids"}) == ["encoder_states"]
    with caplog.at_level(logging.WARNING):
        result = api.synthesize(model, samples=64, seed=0, use_cache=False, progress=False)
    assert "encoder_states" in caplog.text and "--calib" in caplog.text
    states = result.inputs["encoder_states"]
    assert states.shape == (64, 10, 32) and result.objective.endswith("+states")
    assert abs(states.mean()) < 0.05 and abs(states.std() - 1) < 0.05
    again = api.synthesize(model, samples=64, seed=0, use_cache=False, progress=False).inputs
    np.testing.assert_array_equal(again["encoder_states"], states)
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False, avg_weight_bits=6)
    onnx.checker.check_model(out, full_check=True)
    assert run(out, result.inputs)[0].shape == run(model, result.inputs)[0].shape


def test_another_float_input_beside_tokens_is_one_clear_error():
    model = token_builders.token_decoder_cross()
    model.graph.input[1].type.tensor_type.shape.dim[2].dim_param = "D"    # not [N, S, D] with D known
    with pytest.raises(PassError, match="'encoder_states' is float beside token inputs.*--calib"):
        api.synthesize(model, samples=8, seed=0, use_cache=False, progress=False)
