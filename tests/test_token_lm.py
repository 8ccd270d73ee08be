"""The causal-LM refinement of token samples (synth/token_lm.py) on a graph whose batch is fixed."""

from __future__ import annotations

import numpy as np
from dfq_onnx.models import token_builders

from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import const_values
from dfq_onnx.synth.token_lm import refine
from dfq_onnx.synth.tokens import sample_tokens, token_layout, vocab_prior


def _fixed_batch(graph, batch: int):
    g = ir.copy_graph(graph)
    g.inputs[0].shape = [batch, *g.inputs[0].shape[1:]]
    return g


def test_refine_on_a_fixed_batch_graph_equals_the_dynamic_one():
    graph = ir.to_graph(token_builders.token_lm())
    layout = token_layout(graph)
    table = next(t for t in graph.tensors().values() if t.name == layout.table)
    prior, pad = vocab_prior(const_values(table))
    feeds = sample_tokens(layout, prior, pad, 5, np.random.default_rng(0))
    dynamic, passes = refine(graph, layout, feeds, prior, np.random.default_rng(1))
    assert passes > 2                                     # an LM head, causal: the samples were redrawn
    assert not np.array_equal(dynamic["input_ids"], feeds["input_ids"])
    for batch in (1, 2):                                 # 5 rows: batch 2's last call is padded
        fixed, again = refine(_fixed_batch(graph, batch), layout, feeds, prior, np.random.default_rng(1))
        assert again == passes
        np.testing.assert_array_equal(fixed["input_ids"], dynamic["input_ids"])
