"""Outputs the scorer keeps (backends/row_store.py): its losses are formed a call at a time against
the kept reference and base rows, in memory or in a file, and the segmented runner's cache keeps large
model outputs in a file -- the same losses whatever the rows per call or where the rows live, and the
memory of an evaluation is one call's outputs, not the scoring set's."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from _util import normal_feeds
from dfq_onnx.models import builders
from test_sensitivity import _fp32, _probe, _state

from dfq_onnx.backends import row_store
from dfq_onnx.sensitivity import evaluator, probe, segments


def _configs(pm):
    groups = list(pm.selects)
    return [{}, *({g: 4} for g in groups), {g: (4, 8)[i % 2] for i, g in enumerate(groups)}]


def _losses(state, pm, feeds, metric, batch, segmented=False, dither=1):
    ev = evaluator.Evaluator(probe.Probe(pm, optimize=False, segmented=segmented, samples=8), _fp32(state),
                             feeds, None, metric, batch, dither=dither)
    return [(ev.loss(c).tolist(), ev.relative(c).tolist()) for c in _configs(pm)], ev


@pytest.mark.parametrize("metric", ["auto", "sqnr", "kl", "mse", "cosine"])
def test_losses_do_not_move_with_rows_per_call_or_a_file(metric, monkeypatch):
    model = builders.conv_bn_relu_residual()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=21)
    pm = _probe(state)
    whole, ev = _losses(state, pm, feeds, metric, None)
    assert not ev._ref.in_file
    monkeypatch.setattr(evaluator, "KEPT_BYTES", 0)            # every kept set in a file
    for batch in (1, 3, 8):
        got, ev = _losses(state, pm, feeds, metric, batch)
        assert ev._ref.in_file and ev._base.in_file
        assert got == whole, (metric, batch)
    np.testing.assert_array_equal(ev.reference[0], probe.session(_fp32(state)).run(None, feeds)[0])


def test_dithered_losses_do_not_move_with_a_file(monkeypatch):
    model = builders.conv_bn_relu_residual()
    state, feeds = _state(model), normal_feeds(model, n=8, seed=22)
    pm = _probe(state, dither=True)
    whole, _ = _losses(state, pm, feeds, "mse", 2, dither=2)
    monkeypatch.setattr(evaluator, "KEPT_BYTES", 0)
    got, _ = _losses(state, pm, feeds, "mse", 3, dither=2)
    assert got == whole


def test_segment_cache_keeps_large_outputs_in_a_file(monkeypatch):
    """A bound below one batch's outputs: the runner's cache holds them in a file (not counted in its
    bytes) and every configuration's outputs are those of the unbounded runner."""
    model = builders.sigmoid_map(hw=16)
    state, feeds = _state(model), normal_feeds(model, n=8, seed=23)
    pm = _probe(state)
    whole, _ = _losses(state, pm, feeds, "sqnr", 4, segmented=True)
    made = []
    real = segments.SegmentedRunner.__init__

    def tight(self, *args, **kw):
        real(self, *args, **{**kw, "max_cache_elements": 1})
        made.append(self)

    monkeypatch.setattr(segments.SegmentedRunner, "__init__", tight)
    got, ev = _losses(state, pm, feeds, "sqnr", 4, segmented=True)
    assert got == whole
    cache = made[0]._cache
    assert cache and all(isinstance(c[t], row_store.Spilled) for c in cache.values() for t in made[0].outputs)
    assert made[0].cache_bytes == sum(v.nbytes for v in feeds.values())     # the inputs only
    files = [{id(c[t]._file) for t in made[0].outputs} for c in cache.values()]
    assert all(len(f) == 1 for f in files) and len(set().union(*files)) == len(cache)   # a file per batch


def test_an_evaluation_holds_one_call_of_outputs(monkeypatch):
    """tracemalloc's peak over a new configuration's loss: a few calls' outputs and their float64 loss
    terms at most, not the scoring set's (it was ~6 sets: the outputs, their float64 copies, the squared
    difference, the energy)."""
    model = builders.sigmoid_map(hw=64)                # outputs [N, 1, 128, 128]: 64 KB per row
    state, feeds = _state(model), normal_feeds(model, n=32, seed=24)
    pm = _probe(state)
    monkeypatch.setattr(evaluator, "KEPT_BYTES", 0)
    ev = evaluator.Evaluator(probe.Probe(pm, optimize=False), _fp32(state), feeds, None, "sqnr", batch=1)
    ev.loss({})
    g = next(iter(pm.selects))
    row = 128 * 128 * 4
    tracemalloc.start()
    ev.loss({g: 4})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * row                       # the 32 rows' outputs alone are 32 rows
    assert ev.loss({g: 4})[0] > 0
