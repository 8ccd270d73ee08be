"""Synthetic calibration inputs by gradient-free search executed in ONNX Runtime (`--calib synthetic`).

    1/f random images --> per sample: theta +- sigma*eps (P antithetic pairs) --> N x 2P rows
           ^                                                                        | ONE ORT run:
           |                                                                        v stats model
    Adam step per sample <-- centred ranks <-- per-sample losses <-- per-channel mean/mean-square
                                                                     of BN outputs (+ logits, peaks)

Objectives (`dfq_onnx.synth.objectives`): "bn" matches the per-channel spatial mean/std of every
folded-BN output to (beta, |gamma|) plus a weak N(0, 1) input prior (ZeroQ, per sample); "label"
(chosen by "auto" when the model has no BN statistics) makes each sample's target class dominate the
output, with a smoothness prior and an activation-peak penalty; "bn+label" adds both. The search
(`dfq_onnx.synth.search`) is antithetic ES with rank-based fitness shaping and Adam, coarse to fine, over
band gains, a colour mix and a low-resolution residual latent of each image (the raw input for other
ranks). The result is cached on disk (`dfq_onnx.core.cache`) keyed by the model hash and every option
that changes it, so a rerun performs no ORT run.

Defaults: 64 samples, up to 80 steps of P = 2 pairs: 64 * 4 * 80 = 20480 rows in 80 single-call
steps, plus the probe, first and last evaluations (83 ORT runs). Unless steps are given, they are
capped by a compute budget, deterministic in the model: rows * E <= 24e9, E = activation elements
per row (outputs of every Conv/Gemm/MatMul; ORT's time per row is about proportional to it on CPU,
depthwise networks being memory-bound), and at least 12 steps. CIFAR ResNet-56 (E = 0.53M) keeps 80;
EfficientNet-Lite0 at 224 x 224 (E = 6.7M), 32 samples: 27 steps. Memory: ORT keeps a few activations per
row alive, so `synth_runner` caps the rows per call at 1 GiB / (4 bytes * (8 * largest activation
+ outputs per row)): ~0.5 MB per row for a CIFAR ResNet (all 256 rows in one call); a 224 x 224 model
with a 96 x 112 x 112 activation needs ~38 MB per row: 27 rows per call. On EfficientNet-Lite0 the
process peaks at 2.3 GB RSS (7.5 GB with 72-row calls and ORT's memory pattern; same samples).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from dfq_onnx.core import cache
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.synth.augment import is_image_like
from dfq_onnx.synth.compose import plan_pieces
from dfq_onnx.synth.runner import build_objective, resolve_shapes, row_elements
from dfq_onnx.synth.search import ESConfig, Stage, es_minimize, pink_noise, squash, stage_factors, unsquash
from dfq_onnx.synth.sequence import sequence_output
from dfq_onnx.synth.strokes import stroke_start

log = logging.getLogger(__name__)

OBJECTIVES = ("auto", "bn", "label", "bn+label", "sequence", "bn+sequence")
ENGINE_VERSION = 3      # bump when the algorithm changes: old cache entries are then ignored
STAGES = 3              # coarse-to-fine latent stages (latent short side 4, 8, 16 pixels)
SIGMA, LR = 0.3, 0.05   # ES perturbation scale and Adam step, in latent (pixel) units
MAX_STEPS, MIN_STEPS, ELEMENT_BUDGET = 80, 12, 24e9   # default steps: see the module docstring


@dataclass(frozen=True)
class SynthesisOptions:
    samples: int = 64
    steps: int | None = None    # ES steps in total, split over the stages (None: budgeted, <= 80)
    population: int = 2         # antithetic pairs per sample and step (2P rows per sample per step)
    seed: int = 0
    objective: str = "auto"     # "bn" | "label" | "bn+label" | "auto" (bn if BN statistics exist,
                                #  else label)
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.samples < 1 or (self.steps is not None and self.steps < 0) or self.population < 1:
            raise UsageError(f"synthesis: samples ({self.samples}) and population ({self.population}) must "
                             f"be positive and steps ({self.steps}) non-negative")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--synth-objective {self.objective}: expected one of {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class SynthesisResult:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    loss_start: float
    loss_end: float
    forward_passes: int         # ORT run calls (one per chunk of rows)
    samples_evaluated: int      # rows evaluated over all calls
    seconds: float
    cache_hit: bool
    objective: str
    steps: int = 0              # ES steps of the search (also reported on a cache hit)


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


def budgeted_steps(options: SynthesisOptions, elements_per_row: int) -> int:
    """The given steps, else MAX_STEPS capped by ELEMENT_BUDGET (module docstring), >= MIN_STEPS."""
    if options.steps is not None:
        return options.steps
    per_step = options.samples * 2 * options.population * max(elements_per_row, 1)
    return int(min(MAX_STEPS, max(MIN_STEPS, ELEMENT_BUDGET // per_step)))


def _key(model_hash: str, options: SynthesisOptions, kind: str, shapes: dict, steps: int) -> dict:
    return {"engine": ENGINE_VERSION, "model": model_hash, "samples": options.samples,
            "steps": steps, "population": options.population, "seed": options.seed,
            "objective": kind, "shapes": {k: list(v) for k, v in sorted(shapes.items())}}


def synthesize(graph, bn_stats, options: SynthesisOptions, model_hash: str,
               input_shapes: dict[str, tuple] | None = None) -> SynthesisResult:
    """Search `options.samples` inputs minimizing the objective (see module docstring)."""
    start = time.perf_counter()
    shapes = resolve_shapes(graph, input_shapes or {})
    kind = resolve_objective(options.objective, bn_stats, graph)
    plan = plan_pieces(graph, kind, shapes)       # sequence outputs along an input axis: synth/compose.py
    search_graph, search_shapes = (plan.graph, plan.shapes) if plan else (graph, shapes)
    strokes = plan is not None and is_image_like((1, *shapes[plan.name]))   # line drawings: synth/strokes.py
    steps = budgeted_steps(options, row_elements(graph, shapes) // (plan.pieces if plan else 1))
    if strokes and options.steps is None:
        steps = 0     # the model's pick of drawings; refining them lowered PP-OCRv4 (synth/strokes.py)
    key = {**_key(model_hash, options, kind, shapes, steps), "pieces": plan.pieces if plan else 1,
           "start": "strokes" if strokes else "pink"}
    path = cache.cache_path("synthetic", key, options.cache_dir)
    use_cache = options.use_cache and bool(model_hash)      # no hash, no safe key
    if use_cache and (hit := _from_cache(path, shapes, start)) is not None:
        return hit
    rng = np.random.default_rng(options.seed)
    n = options.samples
    if strokes:
        latent = {k: unsquash(v) for k, v in plan.split(stroke_start(graph, plan, rng, n)).items()}
    else:
        latent = {name: pink_noise(rng, n, shape) for name, shape in search_shapes.items()}
    start_images = squash(latent)
    objective, runner = build_objective(kind, search_graph, bn_stats, search_shapes, start_images, rng)
    idx = np.arange(n)
    loss_start = float(runner.losses(objective, start_images, idx).mean())
    images = _search(latent, search_shapes, objective, runner, options, steps, rng)
    loss_end = float(runner.losses(objective, images, idx).mean())
    images = plan.compose(images) if plan else images
    labels = objective.label.labels if objective.label is not None else None
    result = SynthesisResult(images, labels, loss_start, loss_end, runner.calls, runner.rows,
                             time.perf_counter() - start, False, kind, steps)
    if use_cache:
        try:
            cache.save_npz_atomic(path, _to_arrays(result))
        except OSError as exc:          # a read-only or full cache directory must not fail the compile
            log.warning("cannot write the synthesis cache %s: %s", path, exc)
    return result


def _search(latent, shapes, objective, runner, options, total, rng):
    """Coarse-to-fine ES: per stage, parameters around the current (pre-squash) images."""
    factors = stage_factors(next(iter(shapes.values())), STAGES)
    per_stage = [total // len(factors) + (i < total % len(factors)) for i in range(len(factors))]
    cfg = ESConfig(options.population, SIGMA, LR)
    with tqdm(total=total, desc="synthesize", disable=not options.progress, leave=False) as bar:
        for factor, steps in zip(factors, per_stage):
            latent = _run_stage(Stage(latent, factor), objective, runner, cfg, steps, rng, bar)
    return squash(latent)


def _run_stage(stage: Stage, objective, runner, cfg: ESConfig, steps: int, rng, bar) -> dict:
    """ES on one stage's parameters; every candidate of every sample goes into one batch of rows."""
    n = stage.samples

    def loss(cand: np.ndarray) -> np.ndarray:
        m = cand.shape[1]
        rows = np.repeat(np.arange(n), m)
        feeds = squash(stage(cand.reshape(n * m, -1), rows))
        return runner.losses(objective, feeds, rows).reshape(n, m)

    def on_step(value: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")

    theta = es_minimize(loss, np.zeros((n, stage.dims)), cfg, steps, rng, on_step)
    return stage(theta, np.arange(n))


def _to_arrays(result: SynthesisResult) -> dict[str, np.ndarray]:
    arrays = {f"input/{k}": v for k, v in result.inputs.items()}
    if result.labels is not None:
        arrays["labels"] = result.labels
    meta = [result.loss_start, result.loss_end, result.forward_passes, result.samples_evaluated,
            result.seconds, result.steps]
    arrays["meta"] = np.array(meta, np.float64)
    arrays["objective"] = np.array(result.objective)
    return arrays


def _from_cache(path, shapes, start) -> SynthesisResult | None:
    arrays = cache.load_npz(path)
    if arrays is None or any(f"input/{k}" not in arrays for k in shapes):
        return None
    inputs = {k: arrays[f"input/{k}"] for k in shapes}
    if any(v.shape[1:] != tuple(shapes[k]) for k, v in inputs.items()):
        return None
    meta = arrays.get("meta")
    if meta is None or meta.shape != (6,) or "objective" not in arrays:
        return None
    log.info("synthetic inputs from cache %s (searched in %.1fs, %d ORT runs)", path, meta[4], meta[2])
    return SynthesisResult(inputs, arrays.get("labels"), float(meta[0]), float(meta[1]), 0, 0,
                           time.perf_counter() - start, True, str(arrays["objective"]), int(meta[5]))


class Synthesize(Pass):
    """Generate synthetic calibration inputs by gradient-free search in ONNX Runtime."""

    name = "Synthesize"

    def __init__(self, options: SynthesisOptions | None = None):
        self.options = options or SynthesisOptions()

    def run(self, state: CompileState) -> PassResult:
        result = synthesize(state.graph, state.bn_stats, self.options, state.model_hash,
                            state.options.input_shapes)
        state.calib = result.inputs
        state.synthetic = result
        state.forward_passes += result.forward_passes
        state.report.notes["synthesis"] = {
            "objective": result.objective, "samples": self.options.samples, "steps": result.steps,
            "population": self.options.population, "seed": self.options.seed,
            "loss_start": round(result.loss_start, 6), "loss_end": round(result.loss_end, 6),
            "forward_passes": result.forward_passes, "rows_evaluated": result.samples_evaluated,
            "cache_hit": result.cache_hit}
        how = "from cache" if result.cache_hit else f"{result.forward_passes} ORT runs"
        return PassResult(False, f"{self.options.samples} samples ({result.objective}), loss "
                                 f"{result.loss_start:.4f} -> {result.loss_end:.4f}, {how}")
