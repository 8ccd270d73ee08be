"""The synthesis search's cost: its step budget counts every node's outputs, and it runs no row twice."""

from __future__ import annotations

import numpy as np
from _util import compile_state
from dfq_onnx.models import act_builders
from dfq_onnx.passes import synthesize as synth_pass
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize

from dfq_onnx.backends import runtime
from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.synth import runner as synth_runner

SHAPES = {"input": (8, 16)}


def _block():
    """A BN-free pre-LN attention block: LayerNorms, Softmax, transposes, residual Adds beside its MatMuls."""
    return compile_state(act_builders.outlier_attention(seq=8, d=16, ffn=32), [Normalize(), FoldBatchNorm()])


def _measured_every(graph) -> int:
    """Float elements per row of every node output, read off one ORT run."""
    names = [t.name for nd in graph.nodes for t in nd.outputs if is_float(t)]
    sess = runtime.session(runtime.observer_model(graph, names))
    return sum(a[0].size for a in sess.run(None, {"input": np.zeros((1, 8, 16), np.float32)}))


def test_every_node_counts_what_one_run_writes_with_shapes_known_or_not():
    graph = _block().graph
    weighted, _ = synth_runner.row_elements(graph, SHAPES)
    every, passes = synth_runner.row_elements(graph, SHAPES, every=True)
    assert passes == 0 and every == _measured_every(graph)
    assert every > 2 * weighted              # LayerNorm, Softmax, Adds, Relu, Transpose: no MatMul output
    unknown = ir.copy_graph(graph)
    for t in unknown.tensors().values():
        if t.inputs and t.shape:
            t.shape = [t.shape[0]] + ["?"] * (len(t.shape) - 1)
    assert synth_runner.row_elements(unknown, SHAPES, every=True) == (every, 1)     # one ORT run, same


def test_step_budget_follows_every_node_not_only_the_matmuls(monkeypatch):
    """A budget of 20 steps of every node's outputs: 20 steps (the MatMul outputs alone allowed 2.7x more)."""
    state = _block()
    every, _ = synth_runner.row_elements(state.graph, SHAPES, every=True)
    weighted, _ = synth_runner.row_elements(state.graph, SHAPES)
    opts = SynthesisOptions(samples=4, population=1, progress=False, use_cache=False, objective="label")
    rows_per_step = opts.samples * 2 * opts.population
    monkeypatch.setattr(synth_pass, "ELEMENT_BUDGET", 20 * rows_per_step * every)
    result = synthesize(state.graph, {}, opts, "")
    assert result.steps == 20 and 20 * every // weighted >= 40
    # forward rows: the runner's one-row shape probe, the starting images once (the objective's reference
    # and the starting loss: run twice before), every step, the end
    assert result.samples_evaluated == 1 + opts.samples + 20 * rows_per_step + opts.samples


def test_band_gains_decode_exactly_as_the_per_band_sum():
    """The candidates' band mix is the loop over bands, bit for bit, with or without the per-row gather."""
    from dfq_onnx.synth.search import BANDS, Decoder, pink_noise

    rng = np.random.default_rng(0)
    u0 = pink_noise(rng, 5, (3, 12, 16))
    dec = Decoder(u0, 4)
    for idx in (np.repeat(np.arange(5), 4), np.arange(5), np.array([4, 0, 0, 2])):
        gains = np.exp(rng.normal(0, 0.3, (len(idx), BANDS, 3)))
        loop = sum(gains[:, b, :, None, None] * dec.base[idx, b] for b in range(BANDS))
        assert np.array_equal(dec.banded(gains, idx), loop)
