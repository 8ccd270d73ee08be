"""Objective S (synth/sequence.py): target label sequences, margins vs numpy, search progress."""

from __future__ import annotations

import numpy as np
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize

from dfq_onnx.core.errors import UsageError
from dfq_onnx.synth.runner import build_objective
from dfq_onnx.synth.sequence import (
    MARGIN_CAP,
    build_spec,
    sequence_loss,
    sequence_margins,
    target_sequences,
)

SHAPES = {"input": (3, 4, 12)}     # T = 12 positions, 6 classes


@pytest.fixture(scope="module")
def seq_state():
    return compile_state(builders.conv_sequence(w=12), [Normalize(), FoldBatchNorm()])


def test_target_sequences_alternate_runs_and_background():
    rng = np.random.default_rng(0)
    t = target_sequences(rng, 50, 40, 7, background=3)
    assert t.shape == (50, 40) and t.min() >= 0 and t.max() < 7
    for row in t:
        runs, prev, length = [], None, 0
        for c in row:
            if c == prev:
                length += 1
            else:
                if prev is not None:
                    runs.append((prev, length))
                prev, length = c, 1
        runs.append((prev, length))
        # class runs last 1-2 positions (two same-class runs may touch when no gap separates them: never)
        assert all(length <= 3 for c, length in runs if c == 3)
        assert any(c != 3 for c, _ in runs)
    assert 0.2 < np.mean(t != 3) < 0.6          # about a third of the positions carry a class


def test_margins_against_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5, 6))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    spec = build_spec(rng, p)
    assert spec.log_output and 0 <= spec.background < 6
    idx = np.arange(4)
    z = np.log(p)
    expect = np.empty((4, 5))
    for i in range(4):
        for t in range(5):
            k = spec.targets[i, t]
            expect[i, t] = (z[i, t, k] - np.max(np.delete(z[i, t], k))) / spec.sigma_ref
    np.testing.assert_allclose(sequence_margins(p, spec, idx), expect, rtol=1e-9)
    np.testing.assert_allclose(sequence_loss(p, spec, idx), np.maximum(0, MARGIN_CAP - expect).mean(1))
    assert not build_spec(rng, logits).log_output            # logits are used as they are


def test_sequence_search_raises_the_target_margins(seq_state):
    opts = SynthesisOptions(samples=8, steps=30, objective="sequence", progress=False, use_cache=False)
    result = synthesize(seq_state.graph, seq_state.bn_stats, opts, "m")
    assert result.objective == "sequence" and result.loss_end < result.loss_start
    rng = np.random.default_rng(opts.seed)
    objective, _ = build_objective("sequence", seq_state.graph, {}, SHAPES, result.inputs, rng)
    assert objective.sequence.targets.shape == (8, 12)
    both = SynthesisOptions(samples=8, steps=4, objective="bn+sequence", progress=False, use_cache=False)
    assert synthesize(seq_state.graph, seq_state.bn_stats, both, "m").objective == "bn+sequence"


def test_sequence_objective_needs_a_per_position_output():
    state = compile_state(builders.conv_bn_relu_residual(), [Normalize(), FoldBatchNorm()])
    rng = np.random.default_rng(0)
    ref = {"input": rng.standard_normal((4, 8, 8, 8)).astype(np.float32)}
    with pytest.raises(UsageError, match=r"per-position output \[N, T, C\]"):
        build_objective("sequence", state.graph, {}, {"input": (8, 8, 8)}, ref, rng)


def test_alignment_probe_and_composition():
    from dfq_onnx.synth.compose import aligned_axis, plan_pieces

    def dynamic(width):
        return compile_state(builders.conv_sequence(w=None), [Normalize(), FoldBatchNorm()],
                             input_shapes={"input": (1, 3, 4, width)})

    state = dynamic(16)
    plan = plan_pieces(state.graph, "sequence", {"input": (3, 4, 16)})
    # output [N, W, 6] follows the width (per-sample axis 2, axis 3 with the batch): 4 pieces of 4 columns
    assert (plan.name, plan.axis, plan.pieces, plan.piece_shape) == ("input", 3, 4, (3, 4, 4))
    assert plan.graph.inputs[0].shape[1:] == [3, 4, 4]
    pieces = {"input": np.arange(5 * 3 * 4 * 4, dtype=np.float32).reshape(5, 3, 4, 4)}
    lines = plan.compose(pieces)["input"]
    assert lines.shape == (5, 3, 4, 16)
    for i in range(5):            # sample i = pieces i, i+1, i+2, i+3 (mod 5) side by side
        for r in range(4):
            np.testing.assert_array_equal(lines[i, :, :, 4 * r:4 * r + 4], pieces["input"][(i + r) % 5])
    assert plan_pieces(state.graph, "bn", {"input": (3, 4, 16)}) is None          # not a sequence objective
    assert plan_pieces(dynamic(8).graph, "sequence", {"input": (3, 4, 8)}).pieces == 2   # >= 4 positions each
    static = compile_state(builders.conv_sequence(w=16), [Normalize(), FoldBatchNorm()])
    assert plan_pieces(static.graph, "sequence", {"input": (3, 4, 16)}) is None     # a static width: no probe
    classifier = compile_state(builders.conv_bn_relu_residual(), [Normalize(), FoldBatchNorm()])
    assert aligned_axis(classifier.graph, {"input": (8, 8, 8)}, "output") is None


def test_composed_search_returns_full_size_samples():
    wide = compile_state(builders.conv_sequence(w=None), [Normalize(), FoldBatchNorm()],
                         input_shapes={"input": (1, 3, 4, 16)})
    opts = SynthesisOptions(samples=6, steps=6, objective="sequence", progress=False, use_cache=False)
    result = synthesize(wide.graph, wide.bn_stats, opts, "m", {"input": (1, 3, 4, 16)})
    assert result.inputs["input"].shape == (6, 3, 4, 16)


def test_stroke_drawings():
    from dfq_onnx.synth.strokes import read_scores, stroke_images

    x, none = stroke_images(np.random.default_rng(0), 6, (3, 16, 64), axis=2)
    assert none is None and x.shape == (6, 3, 16, 64) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    ink = np.abs(x - np.median(x, axis=(1, 2, 3), keepdims=True)) > 0.1
    assert 0.02 < ink.mean() < 0.6                 # strokes, not an empty page nor a filled one
    same, twin = stroke_images(np.random.default_rng(0), 6, (3, 16, 64), 2, np.random.default_rng(1))
    np.testing.assert_array_equal(x, same)         # the twins do not change the drawings
    assert twin.shape == x.shape and not np.array_equal(twin, x)
    for a, b in zip(x, twin):                      # the same strokes: ink where the drawing has ink
        da, db = np.abs(a - np.median(a)).ravel(), np.abs(b - np.median(b)).ravel()
        assert np.corrcoef(da, db)[0, 1] > 0.9
    tall, _ = stroke_images(np.random.default_rng(0), 2, (1, 64, 16), axis=1)     # read top to bottom
    assert tall.shape == (2, 1, 64, 16)
    # reading scores: rows whose positions the non-background classes win with confidence rank first
    y = np.full((3, 5, 4), 0.01)
    y[:, :, 0] = 0.97                              # class 0 wins everywhere: the background
    y[1, 1:4, 2], y[1, 1:4, 0] = 0.9, 0.08
    y[2, 2, 3], y[2, 2, 0] = 0.6, 0.38
    assert list(np.argsort(-read_scores(y))) == [1, 2, 0]


def test_sequence_search_starts_from_drawings_on_image_recognizers():
    model = builders.conv_sequence(h=8, w=None)
    state = compile_state(model, [Normalize(), FoldBatchNorm()], input_shapes={"input": (1, 3, 8, 32)})
    opts = SynthesisOptions(samples=4, steps=0, objective="sequence", progress=False, use_cache=False)
    x = synthesize(state.graph, state.bn_stats, opts, "m", {"input": (1, 3, 8, 32)}).inputs["input"]
    assert x.shape == (4, 3, 8, 32)
    # drawings: channels equal up to a tint and noise, paper and ink levels far apart
    assert np.abs(x - x.mean(axis=1, keepdims=True)).mean() < 0.1
    assert (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))).min() > 0.5


def test_drawings_without_search_are_cached_as_such(tmp_path):
    """Default steps on an image recognizer: the model's pick of drawings, no search (loss None); the
    pick costs forward passes, so a second call reads it from the cache, still marked unsearched."""
    model = builders.conv_sequence(h=8, w=None)
    state = compile_state(model, [Normalize(), FoldBatchNorm()], input_shapes={"input": (1, 3, 8, 32)})
    opts = SynthesisOptions(samples=4, objective="sequence", progress=False, cache_dir=str(tmp_path))
    first = synthesize(state.graph, state.bn_stats, opts, "m", {"input": (1, 3, 8, 32)})
    again = synthesize(state.graph, state.bn_stats, opts, "m", {"input": (1, 3, 8, 32)})
    assert (first.start, first.steps, first.loss_start, first.cache_hit) == ("strokes", 0, None, False)
    assert (again.start, again.loss_start, again.loss_end, again.cache_hit) == ("strokes", None, None, True)
    np.testing.assert_array_equal(first.inputs["input"], again.inputs["input"])
