"""ORT side of synthetic-data search: input shapes, the objective's reference run, chunked batch runs.

`Runner` owns one session of the statistics model (`synth_objectives.stats_model`) and evaluates any
number of rows, split into calls of at most `rows_per_call` rows: `backends.chunks.rows_per_chunk` of the
graph with every tensor a statistic reads held to the end of the call -- the budget and the estimate of
every other stage's calls (Calibrate's chunk, whose FP32 forward issue 14's memory line is read against):

    rows_per_call = DEFAULT_BUDGET / (ARENA * live bytes per row, the statistics' tensors held)

ORT keeps the tensors a statistic reads alive until it reads them, and with the statistics appended to
the graph that is the end of the call, whatever the order of the nodes (ResNet-56, 256 rows of the label
objective's 56 peaked conv outputs: 577 MB of arena against 65 MB for a plain forward; a captcha CRNN
with its 105 peak statistics 2.33 GB against 0.68 GB plain, BENCHMARKS.md, session 14). Until session 21
the calls had a budget of their own, 1 GiB of 4 bytes x (8 x the largest activation + the peaked
tensors + the outputs) per row: ResNet-56 with its BN folded in the file searched in 256-row calls and
peaked at 0.73 GB against issue 14's 0.68 GB (BENCHMARKS.md, session 21).
The session runs without ORT's memory pattern, which plans (and keeps in the arena) one block per
input shape: the last, shorter chunk of a step would double it. Rows are independent, so how they are
split into calls does not change any output (BENCHMARKS.md, issue 8 memory; tests). A model exported
with a static batch dimension is run with that dimension made dynamic when the graph allows it (checked
by a two-row probe), else in chunks of its static batch, padding the last one.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import chunks, runtime
from dfq_onnx.backends.chunks import pad_rows, static_batch
from dfq_onnx.core import ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import WEIGHTED_LAYERS, is_float
from dfq_onnx.core.tail import batch_axis
from dfq_onnx.synth.objectives import (
    LabelSpec,
    Objective,
    StatTarget,
    float_output,
    output_scale,
    reduce_output,
    stats_model,
    target_masks,
)
from dfq_onnx.synth.preprocess import is_pixel_input
from dfq_onnx.synth.sequence import build_spec

log = logging.getLogger(__name__)



def shape_example(shape) -> str:
    """`shape` as an --input-shape value for error messages: the batch axis written 1, every other dynamic
    dimension as a placeholder naming it (``images:1,3,<height>,<width>``), never a size that would run."""
    def dim(i, d):
        if isinstance(d, (int, np.integer)) and d > 0:
            return str(int(d))
        return "1" if i == 0 else f"<{d}>" if isinstance(d, str) and d else f"<dim{i}>"
    return ",".join(dim(i, d) for i, d in enumerate(shape))


def _with_channels(t: gs.Tensor) -> list:
    """`t`'s shape with a dynamic channel axis (1 of a rank-4 input) filled from the Conv reading it."""
    shape = list(t.shape)
    conv = next((n for n in t.outputs if n.op == "Conv" and n.inputs[0] is t and len(n.inputs) > 1
                 and isinstance(n.inputs[1], gs.Constant) and len(n.inputs[1].shape) == 4), None)
    known = isinstance(shape[1], (int, np.integer)) and shape[1] > 0 if len(shape) == 4 else True
    if conv is not None and not known:
        shape[1] = int(conv.inputs[1].shape[1]) * int(conv.attrs.get("group", 1))
    return shape


def resolve_shapes(graph: gs.Graph, hints: dict[str, tuple]) -> dict[str, tuple[int, ...]]:
    """Per-sample shape (batch axis dropped) of every graph input; hints fill dynamic dimensions."""
    shapes = {}
    for t in graph.inputs:
        if not is_float(t) and not is_pixel_input(t):      # pixels: sampled after their Cast (preprocess.py)
            raise UsageError(f"input '{t.name}' is {t.dtype}, not float32: synthetic data can only be "
                             "searched for float inputs; pass --calib FILE.npz")
        dims = list(hints.get(t.name) or t.shape or [])
        if t.shape is not None and len(dims) != len(t.shape):
            raise UsageError(f"--input-shape {t.name}: rank {len(dims)} given, the input has rank "
                             f"{len(t.shape)}")
        if not dims or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in dims[1:]):
            example = shape_example(_with_channels(t) if t.shape else [1])
            raise UsageError(f"input '{t.name}' has a dynamic non-batch dimension ({t.shape}); pass "
                             f"--input-shape {t.name}:{example} with the real sizes")
        shapes[t.name] = tuple(int(d) for d in dims[1:])
    return shapes


def _dynamic_copy(graph: gs.Graph) -> gs.Graph:
    """A copy with a free batch axis: input dim 0 renamed, intermediate shapes left to ORT."""
    g = ir.copy_graph(graph)
    inputs = {id(t) for t in g.inputs}
    for t in g.inputs:
        if t.shape:
            t.shape = ["N"] + list(t.shape[1:])
    for t in g.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in inputs:
            t.shape = None
    return g


def _per_row_numel(graph: gs.Graph) -> int:
    def known(t):
        dims = t.shape[1:] if isinstance(t, gs.Variable) and t.shape else [None]
        return all(isinstance(d, int) and d > 0 for d in dims)
    return max((int(np.prod(t.shape[1:])) for t in graph.tensors().values() if known(t)), default=1)


def _known(t: gs.Tensor) -> bool:
    dims = t.shape[1:] if t.shape else [None]
    return all(isinstance(d, (int, np.integer)) and d > 0 for d in dims)


def row_elements(graph: gs.Graph, shapes: dict[str, tuple[int, ...]], every: bool = False) -> tuple[int, int]:
    """(activation elements per row, forward passes spent): the outputs of every Conv/Gemm/MatMul, the
    cost proxy of the calibration and scoring budgets (`backends.budget`); `every`: the float outputs of
    every node, the search's cost proxy (passes/synthesize.py: a transformer's Softmax, LayerNorm, GELU
    and attention reshapes cost ORT as much as its MatMuls' outputs). Shapes come from the graph; when
    shape inference left one unknown (e.g. pads computed from the input's shape), from one ORT run of a
    row of zeros (one pass)."""
    if every:
        outs = [t for nd in graph.nodes for t in nd.outputs if is_float(t)]
    else:
        outs = [nd.outputs[0] for nd in graph.nodes if nd.op in WEIGHTED_LAYERS and nd.outputs]
    if not outs:
        return max(_per_row_numel(graph), *(int(np.prod(s)) for s in shapes.values())), 0
    if all(_known(t) for t in outs):
        return sum(int(np.prod(t.shape[1:])) for t in outs), 0
    batch = static_batch(graph) or 1
    sess = runtime.session(runtime.observer_model(graph, [t.name for t in outs]))
    dtypes = {t.name: np.dtype(t.dtype) if t.dtype is not None else np.float32 for t in graph.inputs}
    arrays = sess.run(None, {k: np.zeros((batch,) + s, dtypes.get(k, np.float32)) for k, s in shapes.items()})
    return sum(int(np.prod(a.shape[1:])) for a in arrays), 1


class Runner:
    """Evaluates rows on the statistics model; counts ORT calls and rows."""

    def __init__(self, graph: gs.Graph, objective: Objective, shapes: dict[str, tuple[int, ...]]):
        self.calls = self.rows = 0
        self.reference: list[np.ndarray] | None = None    # build_objective's run of the starting images
        self.shapes = shapes
        self.static = static_batch(graph)
        self._setup(graph, objective)
        held = [t.tensor for t in objective.bn] + list(objective.act)       # each statistic's tensor
        held += [objective.output] if objective.output else []
        self.rows_per_call = self.static or chunks.rows_per_chunk(graph, shapes, chunks.DEFAULT_BUDGET, held)

    def _setup(self, graph: gs.Graph, objective: Objective) -> None:
        args = (list(objective.bn), list(objective.act), objective.output)
        if self.static is not None:
            try:
                self.session = runtime.session(stats_model(_dynamic_copy(graph), *args)[0], mem_pattern=False,
                                               quiet=True)
                self.probe = self._call(self._zeros(2))
                if all(len(o) == 2 for o in self.probe):
                    self.static = None
                    return
            except Exception as exc:  # noqa: BLE001 - ORT's error types derive from Exception only
                log.info("static batch %d kept (dynamic copy fails: %s)", self.static,
                         str(exc).splitlines()[0] if str(exc) else exc)
        self.session = runtime.session(stats_model(graph, *args)[0], mem_pattern=False)
        self.probe = self._call(self._zeros(self.static or 1))

    def _zeros(self, n: int) -> dict[str, np.ndarray]:
        return {k: np.zeros((n,) + s, np.float32) for k, s in self.shapes.items()}

    def _call(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        self.rows += len(next(iter(feeds.values())))
        return self.session.run(None, feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs for all rows of `feeds`, concatenated along axis 0."""
        n = len(next(iter(feeds.values())))
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, self.rows_per_call):
            chunk = {k: v[start:start + self.rows_per_call] for k, v in feeds.items()}
            real = len(next(iter(chunk.values())))
            if self.static is not None:
                chunk = pad_rows(chunk, self.static)
            outs = [o[:real] for o in self._call(chunk)]
            parts = parts or [[] for _ in outs]
            for acc, o in zip(parts, outs):
                acc.append(o)
        return [np.concatenate(p, axis=0) if len(p) > 1 else p[0] for p in parts]

    def losses(self, objective: Objective, feeds: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        return objective.losses(self.run(feeds), list(feeds.values()), idx)


def _bn_targets(graph: gs.Graph, bn_stats: dict) -> tuple[StatTarget, ...]:
    table = graph.tensors()
    targets = []
    for s in bn_stats.values():
        t = table.get(s.tensor)
        if t is None:
            continue
        flat = (t.shape is not None and len(t.shape) == 2) or (t.inputs and t.inputs[0].op == "Gemm")
        targets.append(StatTarget(s.tensor, np.asarray(s.beta, np.float64), np.asarray(s.gamma, np.float64),
                                  float(s.eps), not flat))
    return tuple(targets)


def _labels(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """Round robin over a seeded permutation of the classes; one channel: 0 = raise, 1 = lower it."""
    if channels == 1:
        return np.arange(n) % 2
    return rng.permutation(channels)[np.arange(n) % channels]


def _per_row_peaks(objective: Objective, runner: Runner, graph: gs.Graph, shapes: dict,
                   reference: dict[str, np.ndarray]) -> tuple[Objective, Runner]:
    """The objective without the activation peaks that are not one per row: a layer whose output the
    graph does not keep per row (an LSTM run along the rows, its final state read by a layer: [1, H]
    for N rows) has no per-sample peak. Measured on the reference run; rebuilt only when one is found."""
    n = len(next(iter(reference.values())))
    peaks = objective.act_outputs(runner.reference)
    kept = tuple(name for name, p in zip(objective.act, peaks) if len(p) == n)
    if len(kept) == len(objective.act):
        return objective, runner
    objective = dataclasses.replace(objective, act=kept)
    runner = Runner(graph, objective, shapes)
    runner.reference = runner.run(reference)
    return objective, runner


def build_objective(kind: str, graph: gs.Graph, bn_stats: dict, shapes: dict,
                    reference: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[Objective, Runner]:
    """The objective of `kind` and its runner. Label and sequence objectives take their output scale
    and the activation peaks they tolerate from one run on `reference` (the starting images); the
    samples' classes (label sequences) are seeded, and for spatial outputs their windows too."""
    bn = _bn_targets(graph, bn_stats) if "bn" in kind else ()
    output, act = None, ()
    if "label" in kind or "sequence" in kind:
        out = float_output(graph)
        if out is None:
            raise UsageError(f"synthesis objective '{kind}' needs a float32 model output; the model has none")
        output = out.name
        if "bn" not in kind:
            act = tuple(nd.outputs[0].name for nd in graph.nodes     # peaks per row: batch-first layers
                        if nd.op in WEIGHTED_LAYERS and nd.outputs[0] is not out
                        and not batch_axis(graph, nd.outputs[0]))
    objective = Objective(kind, bn, act, output)
    runner = Runner(graph, objective, shapes)
    if output is None:
        return objective, runner
    runner.reference = runner.run(reference)      # kept: the search's starting loss reads it (no second run)
    objective, runner = _per_row_peaks(objective, runner, graph, shapes, reference)
    _, peaks, y = objective.split(runner.reference)
    act_ref = np.maximum(peaks.mean(axis=0), 1e-12) if peaks is not None else np.zeros(0)
    if "sequence" in kind:
        if y.ndim != 3:
            raise UsageError(f"synthesis objective '{kind}' needs a per-position output [N, T, C]; output "
                             f"'{output}' has shape {list(y.shape)}")
        return dataclasses.replace(objective, sequence=build_spec(rng, y), act_ref=act_ref), runner
    n = len(next(iter(reference.values())))
    labels = _labels(rng, n, y.shape[1] if y.ndim >= 2 else 1)
    masks = target_masks(rng, n, y.shape[2:]) if y.ndim >= 3 else None
    sigma_ref, mu_ref = output_scale(reduce_output(y, masks))
    spec = LabelSpec(labels.astype(np.int64), masks, sigma_ref, mu_ref, act_ref)
    return dataclasses.replace(objective, label=spec), runner
