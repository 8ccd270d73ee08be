"""Synthetic samples for models with BN statistics left after their activations (Conv - Relu - BN).

passes/fold_bn.py keeps the statistics of a BN it cannot fold (state.bn_kept). They are not trusted to fit
the 1/f prior: the prior's samples are measured on them first (one forward pass), and where their scale
there is more than envelopes.MISMATCH (2x) off, each sample becomes the best of up to envelopes.CANDIDATES
random spectral envelopes of itself on the BN objective (`dfq_onnx.synth.envelopes`; samples x candidates
rows within MAC_BUDGET multiply-accumulates and the label search's element budget, cached like a search).
An image input whose first activation such a BN reads takes the range convention whose samples fit that
BN's statistics (`dfq_onnx.synth.kept_range`: Keras' Conv - Activation - BN on [0, 1] pixels).
"""

from __future__ import annotations

import time

from dfq_onnx.passes.synthesis_cache import cache_key, from_cache, save
from dfq_onnx.passes.synthesis_types import SynthesisOptions, SynthesisResult

from dfq_onnx.allocation.costs import layer_macs
from dfq_onnx.core import cache
from dfq_onnx.core.graph_utils import WEIGHTED_LAYERS
from dfq_onnx.synth import envelopes
from dfq_onnx.synth.augment import is_image_like
from dfq_onnx.synth.kept_range import infer_kept_range
from dfq_onnx.synth.runner import build_objective, row_elements
from dfq_onnx.synth.search import squash

MAC_BUDGET = 2e12       # multiply-accumulate rows of the envelope pick (~40 s of ORT on 2 cores at 50 GMAC/s)


def kept_ranges(graph, shapes: dict, options: SynthesisOptions, bn_stats) -> dict:
    """The convention of every image input whose first layer's activation a kept BN reads (no
    `--input-range`, no in-graph prefix), from that BN's statistics (synth/kept_range.py)."""
    out = {}
    for k, shape in shapes.items():
        if k not in options.input_ranges and k not in options.prefixed and is_image_like((1, *shape)):
            r = infer_kept_range(graph, k, shape, bn_stats, options.seed)
            if r is not None:
                out[k] = r
    return out


def pick_candidates(graph, shapes: dict, samples: int, element_budget: float) -> tuple[int, int]:
    """(envelope candidates per sample, forward passes spent finding the budget): envelopes.CANDIDATES,
    fewer where samples x candidates rows would overrun MAC_BUDGET multiply-accumulates or ELEMENT_BUDGET
    activation elements (`element_budget`: the label search's); below envelopes.MIN_CANDIDATES none."""
    macs = sum(layer_macs(nd) for nd in graph.nodes if nd.op in WEIGHTED_LAYERS)
    elements, passes = row_elements(graph, shapes, every=True)
    count = min(envelopes.CANDIDATES, MAC_BUDGET // (samples * max(macs, 1)),
                element_budget // (samples * max(elements, 1)))
    return (int(count) if count >= envelopes.MIN_CANDIDATES else 0), passes


def fit_kept(graph, bn_stats, options: SynthesisOptions, model_hash: str, shapes: dict, start: float,
              latent: dict, rng, kept: set[str], element_budget: float) -> SynthesisResult:
    """The prior's samples measured on the BN statistics left after activations and, where they miss them
    by more than 2x, each sample's best spectral envelope of a few candidates (synth/envelopes.py)."""
    count, probes = pick_candidates(graph, shapes, options.samples, element_budget)
    key = {**cache_key(model_hash, options, "bn", shapes, 0), "start": "envelopes", "candidates": count}
    path = cache.cache_path("synthetic", key, options.cache_dir)
    use_cache = options.use_cache and bool(model_hash) and count > 0
    if use_cache and (hit := from_cache(path, shapes, start)) is not None:
        return hit
    ranges = options.input_ranges
    objective, runner = build_objective("bn", graph, bn_stats, shapes, squash(latent, ranges), rng)
    first, ratios = envelopes.measure(latent, runner, objective, ranges)
    off = envelopes.mismatch(ratios, kept)
    fire = off is not None and off > envelopes.MISMATCH and count > 0 and envelopes.pickable(latent)
    note = {"scale_ratio": {k: round(v, 4) for k, v in sorted(ratios.items()) if k in kept},
            "log_mismatch": None if off is None else round(off, 4), "candidates": count if fire else 0}
    if not fire:
        return SynthesisResult(squash(latent, ranges), None, None, None, runner.calls + probes,
                               runner.rows + probes, time.perf_counter() - start, False, "bn", 0,
                               kept_bn=note)
    picked, losses = envelopes.pick(latent, first, runner, objective, ranges, rng, count)
    result = SynthesisResult(squash(picked, ranges), None, float(first.mean()), float(losses.mean()),
                             runner.calls + probes, runner.rows + probes, time.perf_counter() - start, False,
                             "bn", 0, "envelopes", kept_bn=note)
    if use_cache:
        save(path, result)
    return result
