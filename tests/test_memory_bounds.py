"""Memory bounds of the compile's held data (issue 14): the stroke pick reduces each chunk's output
before the next, the prefix cache stays within its bound, and neither changes a result."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state, normal_feeds
from dfq_onnx.models import builders
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

from dfq_onnx.backends import runtime
from dfq_onnx.backends.memory import release
from dfq_onnx.core import ir
from dfq_onnx.sensitivity import probe, segments
from dfq_onnx.synth import strokes


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 100])
def test_stroke_scores_chunked_equal_the_whole_output(rows, softmax, monkeypatch):
    state = compile_state(builders.conv_sequence(w=12), [Normalize(), FoldBatchNorm()])
    graph = state.graph
    assert graph.outputs[0].inputs[0].op == "Softmax"
    if not softmax:                                 # its logits: read after a softmax
        graph.outputs = [graph.outputs[0].inputs[0].inputs[0]]
    name = graph.outputs[0].name
    x = {"input": np.random.default_rng(0).uniform(-1, 1, (10, 3, 4, 12)).astype(np.float32)}
    whole = runtime.session(ir.to_model(ir.copy_graph(graph))).run([name], x)[0]
    assert strokes.is_distribution(whole) == softmax
    monkeypatch.setattr(strokes, "rows_per_chunk", lambda g: rows)
    got = strokes.model_scores(graph, name, x)
    np.testing.assert_array_equal(got, strokes.read_scores(whole))
    assert got.dtype == strokes.read_scores(whole).dtype


def _probe_state():
    model = builders.conv_bn_relu_residual()
    state = compile_state(model, [Normalize(21), FoldBatchNorm(), FindQuantGroups(), AnalyticRanges(),
                                  Calibrate()])
    pm = probe.build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, (4, 8), 8)
    return model, pm


def test_prefix_cache_stays_within_its_bound_and_results_do_not_move(monkeypatch):
    model, pm = _probe_state()
    feeds = normal_feeds(model, n=6, seed=2)
    groups = list(pm.selects)
    configs = [{}, *({g: 4} for g in groups), {g: (4, 8)[i % 2] for i, g in enumerate(groups)}]

    def run(cache_bytes):
        monkeypatch.setattr(segments, "CACHE_BYTES", cache_bytes)
        p = probe.Probe(pm, optimize=False, segmented=True, samples=6)
        outs = [p.run_batch(c, {k: v[i:i + 3] for k, v in feeds.items()}, key=i)
                for c in configs for i in (0, 3)]
        return p.runner, outs

    free, ref = run(1 << 40)
    assert len(free.segments) >= 3 and free.cache_bytes > 0
    outputs = sum(o.nbytes for o in ref[0])           # one batch's model outputs (cached whatever the cuts)
    crossing = free.cache_bytes - 2 * outputs - sum(v.nbytes for v in feeds.values())
    bound = 4 * 6 * (crossing // (4 * 6) // 2)       # half of what the unbounded cache's cuts hold
    tight, got = run(bound)
    assert len(tight.segments) < len(free.segments)
    held = tight.cache_bytes - 2 * outputs - sum(v.nbytes for v in feeds.values())
    assert held <= bound
    for a, b in zip(got, ref):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_cache_bound_follows_the_chunk_budget():
    from dfq_onnx.backends.chunks import ARENA, DEFAULT_BUDGET

    assert segments.CACHE_BYTES == DEFAULT_BUDGET // ARENA


def test_release_keeps_values():
    a = np.arange(10)
    release()
    np.testing.assert_array_equal(a, np.arange(10))
