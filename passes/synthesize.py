"""Synthetic calibration inputs by gradient-free search executed in ONNX Runtime (`--calib synthetic`).

    1/f random images --> per sample: theta +- sigma*eps (P antithetic pairs) --> N x 2P rows
           ^                                                                        | ONE ORT run:
           |                                                                        v stats model
    Adam step per sample <-- centred ranks <-- per-sample losses <-- per-channel mean/mean-square
                                                                     of BN outputs (+ logits, peaks)

Objectives (`dfq_onnx.synth.objectives`): "bn" matches the per-channel spatial mean/std of every
folded-BN output to (beta, |gamma|) plus a weak N(0, 1) input prior (ZeroQ, per sample); "label"
(chosen by "auto" when the model has no BN statistics) makes each sample's target class dominate the
output, with a smoothness prior and an activation-peak penalty; "bn+label" adds both; "sequence"
(chosen by "auto" for a per-position output [N, T, C], with BN statistics "bn+sequence") gives each
sample a target label sequence and maximizes its per-step margins (`dfq_onnx.synth.sequence`). The search
(`dfq_onnx.synth.search`) is antithetic ES with rank-based fitness shaping and Adam, coarse to fine, over
band gains, a colour mix and a low-resolution residual latent of each image (the raw input for other
ranks). The result is cached on disk (`dfq_onnx.core.cache`) keyed by the model hash and every option
that changes it, so a rerun performs no ORT run.

Defaults (engine 4): 64 samples drawn from the search's natural-image prior (1/f random fields,
`dfq_onnx.synth.search.pink_noise`) and, for the BN objective, no search: on every model with labels
here the BN-matching search made the calibration worse than the fields it starts from (ResNet-20 /
ResNet-56 W8A8 and W4A8, EfficientNet-Lite0 W8A8; BENCHMARKS.md, issue 13), at ~20,000 forward rows.
The prior costs no forward pass (the samples are generated in numpy, one sample at a time: memory
is the samples themselves). The label objectives (models without BN statistics, or asked for) keep
the search, up to 80 steps of P = 2 pairs capped by a compute budget deterministic in the model:
rows * E <= 6e9, E = float activation elements per row (the outputs of every node; from the graph's
shapes, else from one one-row ORT run); a budget below 12 steps searches nothing (a few steps move
nothing but cost the same per step). `steps` given explicitly are always run, whatever the objective.
E counts every node because ORT's time follows every node: per million element-rows a plain forward
took 1.8-3.7 ms over ResNet-20, EfficientNet-Lite0, YOLOv8n and four tiny ViT / Whisper encoders,
where the Conv/Gemm/MatMul outputs alone (E until session 14) spread 3.5-14.6 ms (a transformer's
Softmax, LayerNorm, GELU and attention reshapes write no MatMul output), and those encoders got the
full 80 steps, 100-220 s of a compile. 6e9 element-rows is ~10-20 s of ORT on 2 cores (the search
step adds its numpy decoding; BENCHMARKS.md, session 15 cost15). Runs of the search are chunked in
rows so that ORT's activations fit the budget of every stage's calls (`synth_runner`, `backends.chunks`).

Sequence objectives on a model whose output positions follow an input axis search pieces 1/R as wide
and concatenate them (`dfq_onnx.synth.compose`, the budget counted per piece); on an image recognizer
the samples start from random line drawings the model reads most and, by default, that pick is the
whole search (`dfq_onnx.synth.strokes`: ES refinement lowered PP-OCRv4 rec); the drawings cost
CANDIDATES x N forward rows, so they are cached like a search. Engine 5: no search for the BN
objective (engine 4) and the sequence objectives with their drawings.

Inputs the graph itself scales (an in-graph x / 255, (x - mean) / std; integer pixels and their Cast:
`dfq_onnx.synth.preprocess`) or reads channels-last (tf2onnx's input Transpose: `dfq_onnx.synth.layout`)
are synthesized on a copy of the graph that reads what the network does -- standardized, channels-first
images -- and the samples are mapped back to the model's inputs. An image input with neither BN
statistics, a prefix nor a `--input-range` gets the range its first layer implies (`dfq_onnx.synth.
input_range`: where the fused biases match the responses); standardized when that abstains.

BN statistics left in the graph after an activation (Conv - Relu - BN; passes/fold_bn.py keeps them) are
not trusted to fit the prior: the prior's samples are measured on them first (one forward pass), and
where their scale there is more than 2x off, each sample becomes the best of up to 16 random spectral
envelopes of itself on the BN objective (`dfq_onnx.synth.envelopes`; samples x candidates rows within
multiply-accumulate and ELEMENT_BUDGET element budgets, cached like a search: passes/synthesize_kept.py).
An image input whose first activation such a BN reads takes the range convention whose samples fit that
BN's statistics (`dfq_onnx.synth.kept_range`: Keras' Conv - Activation - BN on [0, 1] pixels), with one
warning. Cache entries: passes/synthesis_cache.py; report notes, warnings and the pass line:
passes/synthesis_notes.py.

An image model whose output is a dense map (axes following the input's H and W) and that takes the label
objective is offered line-drawing pages beside its samples, kept (every second sample) when they drive
the map's span GAIN times past the samples' (synth/pages.py, passes/synthesize_pages.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import numpy as np
from dfq_onnx.passes.synthesis_cache import cache_key, from_cache, save
from dfq_onnx.passes.synthesis_notes import record, summary
from dfq_onnx.passes.synthesis_types import OBJECTIVES, SynthesisOptions, SynthesisResult  # noqa: F401 (API)
from dfq_onnx.passes.synthesize_kept import fit_kept, kept_ranges
from dfq_onnx.passes.synthesize_pages import with_pages
from dfq_onnx.passes.synthesize_tokens import synthesize_tokens
from tqdm import tqdm

from dfq_onnx.backends.recurrent import recurrent_nodes
from dfq_onnx.core import cache
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.synth import envelopes, layout, lengths, preprocess, signals
from dfq_onnx.synth.audio_range import infer_audio_range, is_waveform
from dfq_onnx.synth.augment import is_image_like
from dfq_onnx.synth.compose import plan_pieces
from dfq_onnx.synth.input_range import across_classes, bn_at_first_layer, infer_range
from dfq_onnx.synth.runner import build_objective, resolve_shapes, row_elements
from dfq_onnx.synth.search import ESConfig, Stage, es_minimize, pink_noise, squash, stage_factors, unsquash
from dfq_onnx.synth.sequence import sequence_output
from dfq_onnx.synth.strokes import stroke_start
from dfq_onnx.synth.tokens import has_token_inputs

log = logging.getLogger(__name__)

STAGES = 3              # coarse-to-fine latent stages (latent short side 4, 8, 16 pixels)
SIGMA, LR = 0.3, 0.05   # ES perturbation scale and Adam step, in latent (pixel) units
MAX_STEPS, MIN_STEPS, ELEMENT_BUDGET = 80, 12, 6e9   # default steps: see the module docstring


def resolve_objective(requested: str, bn_stats: dict, graph=None) -> str:
    """`auto`: a per-position output [N, T, C] (`synth.sequence.sequence_output`) takes objective S
    (with L_A where BN statistics exist), any other model "bn" with BN statistics, else "label"."""
    if requested == "auto":
        if graph is not None and sequence_output(graph) is not None:
            return "bn+sequence" if bn_stats else "sequence"
        return "bn" if bn_stats else "label"
    if "bn" in requested and not bn_stats:
        raise UsageError(f"synthesis objective '{requested}' needs BatchNormalization statistics, and the "
                         "model has none folded; use objective 'label' (or 'auto')")
    return requested


def budgeted_steps(options: SynthesisOptions, kind: str, elements_per_row: Callable[[], tuple[int, int]]
                   ) -> tuple[int, int]:
    """(steps, forward passes spent finding them): the given steps; else none for the BN objective,
    MAX_STEPS capped by ELEMENT_BUDGET for the label ones and none below MIN_STEPS (module docstring).
    `elements_per_row` is called only when the budget needs it."""
    if options.steps is not None:
        return options.steps, 0
    if kind == "bn":
        return 0, 0
    elements, passes = elements_per_row()
    per_step = options.samples * 2 * options.population * max(elements, 1)
    steps = int(min(MAX_STEPS, ELEMENT_BUDGET // per_step))
    return (steps if steps >= MIN_STEPS else 0), passes


def synthesize(graph, bn_stats, options: SynthesisOptions, model_hash: str,
               input_shapes: dict[str, tuple] | None = None) -> SynthesisResult:
    """`options.samples` inputs from the prior (or, for a sequence objective on an image recognizer,
    from the line drawings the model picks), searched to minimize the objective when steps > 0."""
    start = time.perf_counter()
    shapes = resolve_shapes(graph, input_shapes or {})
    prefixes = preprocess.input_prefixes(graph, shapes, skip=options.input_ranges)
    if drawn := preprocess.pixel_drawn(prefixes):        # not a standardization: drawn in the pixel range
        floats = {k: r for k, r in drawn.items() if prefixes[k].integer is None}
        prefixes = {k: p.cast_only() if k in drawn else p for k, p in prefixes.items() if k not in floats}
        options = dataclasses.replace(options, input_ranges={**options.input_ranges, **floats})
    result = _after_prefixes(graph, bn_stats, options, model_hash, input_shapes, shapes, prefixes, start)
    return dataclasses.replace(result, pixel_drawn=drawn) if drawn else result


def _after_prefixes(graph, bn_stats, options: SynthesisOptions, model_hash: str, input_shapes, shapes: dict,
                    prefixes: dict, start: float) -> SynthesisResult:
    """The samples of `graph` with the in-graph `prefixes` sampled after (synth/preprocess.py)."""
    if prefixes:
        pixels = {k: p.pixel_range() for k, p in prefixes.items() if p.pixel_range()}
        inner = dataclasses.replace(options, input_ranges={**options.input_ranges, **pixels},
                                    prefixed=tuple(prefixes))
        result = synthesize(preprocess.without_prefixes(graph, prefixes), bn_stats, inner,
                            model_hash and f"{model_hash}/preprocess", input_shapes)   # synth/preprocess.py
        twin = result.twin and preprocess.to_inputs(result.twin, prefixes)
        return dataclasses.replace(result, inputs=preprocess.to_inputs(result.inputs, prefixes),
                                   preprocessed=tuple(prefixes), twin=twin)
    if last := layout.channels_last_inputs(graph, shapes):      # TF exports: synth/layout.py
        hints = {k: v for k, v in (input_shapes or {}).items() if k not in last}
        result = synthesize(layout.channels_first_graph(graph, shapes, last), bn_stats, options, model_hash,
                            hints)
        return dataclasses.replace(result, inputs=layout.to_channels_last(result.inputs, last),
                                   channels_last=tuple(last),
                                   twin=result.twin and layout.to_channels_last(result.twin, last))
    if planes := layout.plane_inputs(graph, shapes):      # one-channel planes [N, H, W]: synth/layout.py
        hints = {k: v for k, v in (input_shapes or {}).items() if k not in planes}
        result = synthesize(layout.plane_graph(graph, planes), bn_stats, options, model_hash, hints)
        twin = result.twin and layout.from_planes(result.twin, planes)
        return dataclasses.replace(result, inputs=layout.from_planes(result.inputs, planes),
                                   planes=tuple(planes), twin=twin)
    kind = resolve_objective(options.objective, bn_stats, graph)
    inferred = _inferred_ranges(graph, shapes, options, bn_stats)
    kept = kept_ranges(graph, shapes, options, bn_stats)      # passes/synthesize_kept.py
    if ranges := {k: r.range for k, r in {**inferred, **kept}.items() if r.range is not None}:
        options = dataclasses.replace(options, input_ranges={**options.input_ranges, **ranges})
    result = _images(graph, bn_stats, options, model_hash, shapes, kind, start)
    result = with_pages(graph, result, options, model_hash, shapes, kind)    # passes/synthesize_pages.py
    if kept:
        notes = {k: {"convention": r.convention, "range": list(r.range) if r.range else None,
                     "bn": r.layers[0], "score": {c: round(v, 4) for c, v in r.scores.items()}}
                 for k, r in kept.items()}
        result = dataclasses.replace(result, kept_bn={**result.kept_bn, "input_range": notes})
    return dataclasses.replace(result, inferred=inferred)


def _inferred_ranges(graph, shapes: dict, options: SynthesisOptions, bn_stats) -> dict:
    """The range inference of every image (and waveform) input without BN statistics at its first layer, a
    `--input-range` or an in-graph prefix (synth/input_range.py); with statistics elsewhere, only a
    pick across scale classes is taken (`across_classes`). The same seed as the samples', on its own
    generator."""
    pick = across_classes if bn_stats else (lambda r: r)
    free = {k: shape for k, shape in shapes.items() if k not in options.input_ranges
            and k not in options.prefixed and not bn_at_first_layer(graph, k, bn_stats)}
    floats = {t.name for t in graph.inputs if t.dtype is not None and np.dtype(t.dtype).kind == "f"}
    return {**{k: pick(infer_range(graph, k, shape, options.seed)) for k, shape in free.items()
               if is_image_like((1, *shape))},
            **{k: infer_audio_range(graph, k, shape, options.seed) for k, shape in free.items()
               if k in floats and is_waveform((1, *shape))}}     # float audio (synth/audio_range.py)


def _images(graph, bn_stats, options: SynthesisOptions, model_hash: str, shapes: dict, kind: str,
            start: float) -> SynthesisResult:
    """The samples of objective `kind` for a graph reading channels-first images without a prefix."""
    plan = plan_pieces(graph, kind, shapes)       # sequence outputs along an input axis: synth/compose.py
    search_graph, search_shapes = (plan.graph, plan.shapes) if plan else (graph, shapes)
    strokes = plan is not None and is_image_like((1, *shapes[plan.name]))   # line drawings: synth/strokes.py
    if strokes and options.steps is None:
        steps, probes = 0, 0    # the model's pick of drawings; refining them lowered PP-OCRv4 (strokes.py)
    else:
        pieces = plan.pieces if plan else 1
        steps, probes = budgeted_steps(options, kind,
                                       lambda: _per_piece(row_elements(graph, shapes, every=True), pieces))
    rng = np.random.default_rng(options.seed)
    n = options.samples
    if steps == 0 and not strokes:
        latent = signals.prior(rng, n, shapes, signals.signal_inputs(graph, shapes), pink_noise)
        if kind == "bn" and options.steps is None and (kept := envelopes.kept_tensors(graph, bn_stats)):
            return fit_kept(graph, bn_stats, options, model_hash, shapes, start, latent, rng, kept,
                            ELEMENT_BUDGET)
        return SynthesisResult(squash(latent, options.input_ranges), None, None, None, probes, probes,
                               time.perf_counter() - start, False, kind, 0)
    lines = signals.signal_inputs(search_graph, search_shapes)     # 1-D signals: synth/signals.py
    key = {**cache_key(model_hash, options, kind, shapes, steps), "pieces": plan.pieces if plan else 1,
           "start": "strokes" if strokes else "pink+lines" if lines else "pink",
           **({"twin": 1} if strokes and steps == 0 else {})}
    path = cache.cache_path("synthetic", key, options.cache_dir)
    use_cache = options.use_cache and bool(model_hash)      # no hash, no safe key
    if use_cache and (hit := from_cache(path, shapes, start)) is not None:
        return hit
    twin = None
    if strokes:
        drawings, twin = stroke_start(graph, plan, rng, n, options.input_ranges.get(plan.name))
        latent = {k: unsquash(v) for k, v in plan.split(drawings).items()}
        twin = None if steps else plan.compose(squash({k: unsquash(v) for k, v in plan.split(twin).items()},
                                                      options.input_ranges))
    else:
        latent = signals.prior(rng, n, search_shapes, lines, pink_noise)
    result = _searched(latent, kind, search_graph, bn_stats, search_shapes, options, steps, rng)
    images = plan.compose(result.inputs) if plan else result.inputs
    result = dataclasses.replace(result, inputs=images, start=key["start"], twin=twin,
                                 forward_passes=result.forward_passes + probes,
                                 samples_evaluated=result.samples_evaluated + probes,
                                 seconds=time.perf_counter() - start)
    if use_cache:
        save(path, result)
    return result


def _per_piece(measured: tuple[int, int], pieces: int) -> tuple[int, int]:
    return measured[0] // pieces, measured[1]


def _searched(latent, kind, graph, bn_stats, shapes, options, steps, rng) -> SynthesisResult:
    """The search from `latent` (the objective is not run without steps: loss None)."""
    if steps == 0:
        return SynthesisResult(squash(latent, options.input_ranges), None, None, None, 0, 0, 0.0, False, kind,
                               0)
    start_images = squash(latent, options.input_ranges)
    objective, runner = build_objective(kind, graph, bn_stats, shapes, start_images, rng)
    idx = np.arange(options.samples)
    first = runner.reference if runner.reference is not None else runner.run(start_images)
    loss_start = float(objective.losses(first, list(start_images.values()), idx).mean())
    runner.reference = None
    images = _search(latent, shapes, objective, runner, options, steps, rng)
    loss_end = float(runner.losses(objective, images, idx).mean())
    labels = objective.label.labels if objective.label is not None else None
    return SynthesisResult(images, labels, loss_start, loss_end, runner.calls, runner.rows, 0.0, False,
                           kind, steps)


def _search(latent, shapes, objective, runner, options, total, rng):
    """Coarse-to-fine ES: per stage, parameters around the current (pre-squash) images."""
    factors = stage_factors(next(iter(shapes.values())), STAGES)
    per_stage = [total // len(factors) + (i < total % len(factors)) for i in range(len(factors))]
    cfg = ESConfig(options.population, SIGMA, LR)
    with tqdm(total=total, desc="synthesize", disable=not options.progress, leave=False) as bar:
        for factor, steps in zip(factors, per_stage):
            latent = _run_stage(Stage(latent, factor), objective, runner, cfg, steps, rng, bar,
                                options.input_ranges)
    return squash(latent, options.input_ranges)


def _run_stage(stage: Stage, objective, runner, cfg: ESConfig, steps: int, rng, bar, ranges) -> dict:
    """ES on one stage's parameters; every candidate of every sample goes into one batch of rows."""
    n = stage.samples

    def loss(cand: np.ndarray) -> np.ndarray:
        m = cand.shape[1]
        rows = np.repeat(np.arange(n), m)
        feeds = squash(stage(cand.reshape(n * m, -1), rows), ranges)
        return runner.losses(objective, feeds, rows).reshape(n, m)

    def on_step(value: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")

    theta = es_minimize(loss, np.zeros((n, stage.dims)), cfg, steps, rng, on_step)
    return stage(theta, np.arange(n))


class Synthesize(Pass):
    """Generate synthetic calibration inputs by gradient-free search in ONNX Runtime."""

    name = "Synthesize"

    def __init__(self, options: SynthesisOptions | None = None, forms: bool = False):
        self.options = options or SynthesisOptions()
        self.forms = forms       # samples also for the dynamic form's inputs (passes/smooth.py scores them)

    def check(self, state: CompileState) -> None:
        names = {t.name for t in state.graph.inputs}
        for name in self.options.input_ranges:
            if name not in names:
                raise UsageError(f"--input-range {name}: no such model input (inputs: "
                                 f"{', '.join(sorted(names))})")

    def run(self, state: CompileState) -> PassResult:
        self.check(state)        # also when run alone (api.synthesize), without CheckUsage
        if (state.spec is not None and not state.spec.act_tensors and not state.options.mixed
                and not (self.forms and any(v.form for v in state.spec.layers.values()))
                and not recurrent_nodes(state.graph, state.target)):    # scored on samples
            return PassResult(False, "no quantized activation")     # KeepFloat / forms: nothing to calibrate
        found = state.length_inputs               # widths [N] beside an image: synth/lengths.py
        graph = lengths.length_graph(state.graph, found) if found else state.graph
        if has_token_inputs(graph):
            result = synthesize_tokens(graph, self.options, state.options.input_shapes)
        else:
            result = synthesize(graph, {**state.bn_stats, **state.bn_kept}, self.options,
                                state.model_hash, state.options.input_shapes)
        if found:
            result = dataclasses.replace(result, inputs=lengths.with_lengths(result.inputs, found),
                                         twin=result.twin and lengths.with_lengths(result.twin, found))
        state.calib = result.inputs
        state.synthetic = result
        state.forward_passes += result.forward_passes
        record(state, result, self.options)                 # report notes and warnings: synthesis_notes.py
        return PassResult(False, summary(result, self.options.samples))


