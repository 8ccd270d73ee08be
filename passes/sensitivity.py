"""ScoreSensitivity: the sensitivity table of the compile state (the ILP's input), cached on disk.

The terms and how they are measured are in `dfq_onnx.sensitivity.scoring` (weights) and
`dfq_onnx.sensitivity.act_scoring` (activation groups, where activation precision is a decision); this
pass picks the scoring samples (synthetic / calibration set, else Gaussian noise; a token model's
at most SCORE_TOKENS tokens: one evaluation runs every row through the probe), chunks them
(`rows_per_chunk`, results independent of it), builds the probe, caches the table keyed by the model,
ranges, target, options and samples, and leaves a PlanMeter that measures whole plans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

import numpy as np
from dfq_onnx.passes.act_precision import decides
from dfq_onnx.passes.act_terms import activation_terms
from dfq_onnx.passes.calibrate import noise_inputs

from dfq_onnx.backends.chunks import rows_per_chunk, static_batch
from dfq_onnx.backends.forms import group_forms
from dfq_onnx.core import cache, ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import FLOAT_BITS, CompileState
from dfq_onnx.sensitivity.act_scoring import switchable, terms_to_dict
from dfq_onnx.sensitivity.evaluator import Evaluator
from dfq_onnx.sensitivity.gather_rows import used_rows
from dfq_onnx.sensitivity.probe import Probe, build_probe
from dfq_onnx.sensitivity.scoring import (  # noqa: F401  (the scoring API, re-exported for callers)
    Scoring,
    SensitivityOptions,
    assemble,
    candidate_bits,
    monotone,
    near_pairs,
    shrink,
)
from dfq_onnx.sensitivity.table import SensitivityTable, load_json, save_json_atomic, summary
from dfq_onnx.sensitivity.widths import Widths, noise_powers
from dfq_onnx.synth.tokens import has_token_inputs

log = logging.getLogger(__name__)
SCORE_TOKENS = 2048      # token models score on at most this many tokens (16 rows of 128) ...
MIN_TOKEN_ROWS = 8       # ... and at least this many rows (the shrinkage splits them in two halves)
ENGINE_VERSION = 4       # bump when the terms change: old cache entries are then ignored (4: form candidates)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(state: CompileState, options: SensitivityOptions, bits, act: int, samples, labels) -> dict:
    model = state.model_hash or ir.model_hash(ir.to_model(ir.copy_graph(state.graph), ir_version=8))
    ranges = sorted((t, r.lo, r.hi) for t, r in state.ranges.items())
    target = repr(dataclasses.replace(state.target, source=""))
    opts = {k: v for k, v in dataclasses.asdict(options).items()
            if k not in ("batch", "use_cache", "cache_dir", "progress") and not (k == "dither" and v == 1)}
    if options.dither > 1:     # session 13: the shifted grid keeps 0 exact (sensitivity/dither.py)
        opts["dither_grid"] = "zero-exact"
    graph_passes = [p for p in ("cle", "bias_absorption") if getattr(state.options, p, False)]
    if state.input_moments:    # the low-bit candidates' weights (core/weight_clip.py, core/gptq.py)
        graph_passes += [p for p in ("weight_clip", "gptq") if getattr(state.options, p, False)]
    if options.bias_correction:
        graph_passes.append("bias_correction:taps")   # version of the per-candidate correction
    return {"engine": ENGINE_VERSION, "model": model, "graph_passes": graph_passes,
            "target": hashlib.sha256(target.encode()).hexdigest(),
            "options": opts, "bits": list(bits), "act_bits": act, "ranges": ranges,
            "samples": _digest(*(samples[k] for k in sorted(samples))),
            "labels": None if labels is None else _digest(labels)}


def token_rows(graph, samples: dict) -> int | None:
    """A token model's scoring rows: its cost is in tokens, not rows (at most SCORE_TOKENS, at least
    MIN_TOKEN_ROWS rows); None for other models."""
    lengths = [int(v.shape[1]) for v in samples.values() if v.ndim == 2 and v.dtype.kind in "iub"]
    if not has_token_inputs(graph) or not lengths:      # (an LSTM's sequence_lens [N] is no token input)
        return None
    return max(MIN_TOKEN_ROWS, SCORE_TOKENS // max(lengths))


def scoring_data(state: CompileState, options: SensitivityOptions):
    """The scoring samples (calibration/synthetic set, else Gaussian noise) and labels if known."""
    samples = state.calib
    if samples is None:
        samples = noise_inputs(state.graph, state.options.calib_samples, state.options.seed)
    labels = getattr(getattr(state, "synthetic", None), "labels", None)
    n = options.samples or len(next(iter(samples.values())))
    if (tokens := token_rows(state.graph, samples)) is not None:
        n = min(n, tokens)
    samples = {k: v[:n] for k, v in samples.items()}
    return samples, None if labels is None else np.asarray(labels)[:n]


def fit_batch(graph, samples: dict, labels, batch: int | None):
    """A static batch dimension fixes the rows per run: trim the samples to a multiple of it."""
    static = static_batch(graph)
    if static is None:
        return samples, labels, batch
    n = len(next(iter(samples.values())))
    keep = n // static * static
    if keep < 2:
        raise UsageError(f"the model's static batch {static} leaves {keep} of {n} scoring samples; need 2")
    if keep < n:
        log.info("static batch %d: scoring on %d of %d samples", static, keep, n)
    trimmed = {k: v[:keep] for k, v in samples.items()}
    return trimmed, None if labels is None else labels[:keep], static


def input_means(state: CompileState, options: SensitivityOptions) -> dict | None:
    """Per weighted layer (E[x], tap fractions) for the candidates' bias correction, when it is on."""
    if not options.bias_correction:
        return None
    from dfq_onnx.passes.bias_correction import input_moments

    from dfq_onnx.corrections.layer_pairs import tap_fractions

    nodes = {node_label(n): n for n in state.graph.nodes}
    return {layer: (m[0], tap_fractions(nodes[layer])) for layer, m in input_moments(state)[0].items()}


def chunked(state: CompileState, samples: dict, labels, batch: int | None = None):
    """(samples, labels, rows per ORT run): trimmed to a static batch, else `batch`, else the user's
    --calib-batch, else `rows_per_chunk` of the model's activation footprint (backends/chunks.py), so
    scoring memory is one chunk of activations whatever the number of samples; results do not depend
    on it (rows are independent)."""
    samples, labels, rows = fit_batch(state.graph, samples, labels, batch)
    if rows is None:
        rows = state.options.calib_batch or rows_per_chunk(
            state.graph, {k: v.shape[1:] for k, v in samples.items()})
    return samples, labels, rows


def prepare(state: CompileState, options: SensitivityOptions, samples, labels) -> Scoring:
    """Build the probe model, its session and the FP32 reference outputs (one forward pass)."""
    samples, labels, batch = chunked(state, samples, labels, options.batch)
    act = state.options.act_bits or state.target.default_act_bits
    bits = candidate_bits(options, state.target, act)
    forms = group_forms(state.graph, state.spec, state.groups, state.target, options.weight_bits,
                        options.base_bits)
    rows = used_rows(state.graph, state.spec, samples, batch or len(next(iter(samples.values()))))
    pm = build_probe(state.graph, state.spec, state.groups, state.ranges, state.target, bits, act,
                     options.quantize_activations, input_means=input_means(state, options),
                     form_keys={g: cands for g, (cands, _) in forms.items()}, form_rows=rows,
                     input_moments=state.input_moments, dither=options.dither > 1)
    fp32 = ir.session_model(ir.copy_graph(state.graph), ir_version=ir.min_ir_version(state.graph.opset))
    n = len(next(iter(samples.values())))
    ev = Evaluator(Probe(pm, segmented=options.segmented, samples=n), fp32, samples, labels, options.metric,
                   batch, output_producers(state.graph), dither=options.dither)
    pairs = near_pairs(state.graph, state.groups, options.hops) if options.pairs else []
    return Scoring(ev, [g.id for g in state.groups if g.layers], bits, act, pairs, options, forms,
                   widths(state, options, bits, forms))


def widths(state: CompileState, options: SensitivityOptions, bits, forms) -> Widths | None:
    """With `options.extrapolate`: the static groups' widths to measure and extrapolate
    (dfq_onnx/sensitivity/widths.py), from their weights' noise power at every width."""
    if not options.extrapolate:
        return None
    static = [g for g in state.groups if g.layers and g.id not in forms]
    noise = noise_powers(state.graph, state.spec, static, bits, state.target, state.input_moments)
    return Widths([g.id for g in static], bits, options.base_bits, noise,
                  lambda v: shrink(v, options.shrink), options.budget_bits)


class PlanMeter:
    """Measures whole plans (group -> weight bits, and activation group -> precision) on the probe: the same
    loss as the table's terms, on the same samples, one ORT forward pass per distinct plan. Used by
    AllocateBits to verify a `--max-drop` plan, measure the Pareto points and the written plan. When the
    table came from the cache the probe is built on the first call only; a plan with activation decisions
    is measured on a second probe with activation switches (built on first use)."""

    def __init__(self, state: CompileState, options: SensitivityOptions, samples, labels,
                 scoring: Scoring | None = None):
        self._state, self._options, self._samples, self._labels = state, options, samples, labels
        self._scoring = scoring
        self._acts: Evaluator | None = None
        self._counted = scoring.evaluator.forward_passes if scoring is not None else 0   # already reported

    def rebuilt(self) -> "PlanMeter":
        """A meter on a new probe, built from the state as it is now (e.g. with GPTQ's weights)."""
        return PlanMeter(self._state, self._options, self._samples, self._labels)

    @property
    def evaluator(self) -> Evaluator:
        if self._scoring is None:
            opts = dataclasses.replace(self._options, pairs=False, extrapolate=False)
            self._scoring = prepare(self._state, opts, self._samples, self._labels)
        return self._scoring.evaluator

    def _act_evaluator(self) -> Evaluator:
        if self._acts is None:
            from dfq_onnx.passes.act_terms import plan_evaluator

            self._acts = plan_evaluator(self._state, self._options, self._samples, self._labels)
        return self._acts

    def __call__(self, bits: dict[str, int], acts: dict[str, int] | None = None) -> float:
        base = self._state.target.default_act_bits
        changed = {k: a for k, a in (acts or {}).items() if a != base}
        if not changed:
            ev = self.evaluator
            loss = float(ev.loss(bits)[0])
        else:
            ev = self._act_evaluator()
            every = {ag.id: base for ag in switchable(self._state.act_groups)}
            every.update({k: None if a == FLOAT_BITS else a for k, a in changed.items()})
            loss = float(ev.loss({**bits, **every})[0])
        self._state.forward_passes += self._passes() - self._counted
        self._counted = self._passes()
        return loss

    def _passes(self) -> int:
        return (self._scoring.evaluator.forward_passes if self._scoring is not None else 0) + (
            self._acts.forward_passes if self._acts is not None else 0)


def score(state: CompileState, options: SensitivityOptions, samples=None,
          labels=None) -> tuple[SensitivityTable, bool]:
    """The sensitivity table of the state's graph (from the cache when possible) and whether it was cached.
    Leaves a PlanMeter on the state (`state.meter`) for measuring whole plans. Where activation precision
    is a decision (passes/act_precision.py), the table carries the activation terms too."""
    if samples is None:
        samples, labels = scoring_data(state, options)
    n = len(next(iter(samples.values())))
    if n < 2:
        raise UsageError(f"sensitivity scoring needs at least 2 samples, got {n}")
    act = state.options.act_bits or state.target.default_act_bits
    bits = candidate_bits(options, state.target, act)
    key = {**cache_key(state, options, bits, act, samples, labels), "activations": decides(state)}
    path = cache.cache_path("sensitivity", key, options.cache_dir).with_suffix(".json")
    if options.use_cache and (hit := load_json(path)) is not None:
        log.info("sensitivity table from cache %s", path)
        state.meter = PlanMeter(state, options, samples, labels)
        return hit, True
    scoring = prepare(state, options, samples, labels).run()
    table = scoring.table()
    state.meter = PlanMeter(state, options, samples, labels, scoring)
    if decides(state):     # the activation terms, on their own probe (passes/act_precision.py)
        terms, ev = activation_terms(state, samples, labels, options.metric, options.pairs, options.batch)
        table = dataclasses.replace(table, activations=terms_to_dict(terms),
                                    evaluations=table.evaluations + ev.evaluations,
                                    forward_passes=table.forward_passes + ev.forward_passes,
                                    seconds=time.perf_counter() - scoring.started)
    if options.use_cache:
        save_json_atomic(path, table)
    return table, False


def metric_per_output(graph, metric: str) -> dict[str, str]:
    """Report note: each output's loss and what computes it, e.g. 'kl (Softmax: distribution)'."""
    producers = output_producers(graph)
    kinds = metric.split(",")
    return {t.name: f"{k} ({producers[t.name].op or 'no op'}: {producers[t.name].role})"
            for t, k in zip(graph.outputs, kinds)}


class ScoreSensitivity(Pass):
    """Analysis: per-group loss of each weight bit-width at the model output, in context and in pairs."""

    name = "ScoreSensitivity"

    def __init__(self, options: SensitivityOptions | None = None):
        self.options = options or SensitivityOptions()

    def check(self, state: CompileState) -> None:
        """Before synthesis: the base pair is legal, and (in the default pipeline, which scores on the
        synthetic samples unless --calib is a file) at least 2 scoring samples survive a static batch."""
        act = state.options.act_bits or state.target.default_act_bits
        if (self.options.base_bits, act) not in state.target.pairs:
            given = f"--act-bits {act}: " if state.options.act_bits else ""
            raise UsageError(f"{given}base W{self.options.base_bits}A{act} is not legal on target "
                             f"'{state.target.name}'")
        if state.options.calib.endswith(".npz"):
            return
        n = min(state.options.synth_samples, self.options.samples or state.options.synth_samples)
        static = static_batch(state.graph) or 1
        if n // static * static < 2:
            raise UsageError(f"--synth-samples {state.options.synth_samples}: sensitivity scoring needs at "
                             f"least 2 samples" + (f" (a multiple of the model's static batch {static})"
                                                   if static > 1 else ""))

    def run(self, state: CompileState) -> PassResult:
        table, hit = score(state, self.options)
        state.sensitivity = table
        if not hit:
            state.forward_passes += table.forward_passes
        per_output = metric_per_output(state.graph, table.metric)
        state.report.notes["sensitivity"] = {**summary(table), "cache_hit": hit,
                                             "metric_per_output": per_output}
        how = "from cache" if hit else f"{table.evaluations} evaluations, {table.forward_passes} ORT runs"
        return PassResult(False, f"{len(table.groups)} groups x {len(table.candidates)} candidates, "
                                 f"{len(table.pairs)} pairs ({table.metric}), {how}")
