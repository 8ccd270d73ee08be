"""Activation ranges from data: a user's calibration set, or Gaussian noise (the peers' baseline).

The FP32 graph is run over the rows in chunks (`backends.chunks.rows_per_chunk` of the model's
activation footprint, or the user's `calib_batch`), each activation quantizer's tensor reduced to its
min/max inside the graph (`backends.observers`), so memory is one model plus one chunk of activations
whatever the number of samples, and the ranges are the same whatever the chunk size. The reductions are
listed so that ORT's node order runs each one soon after its tensor (`backends.observers`: PP-OCRv4 det
at 640 x 640, one row, 0.06 GiB over the session instead of 0.50); chunks are still sized as if every
observed tensor lived to the end of the call (a bound whatever the order). With `act_range="percentile"`
a tensor's range is the mean over rows of each row's percentiles. Analytic ranges (`AnalyticRanges`)
fill what they can first; this pass measures only what is still missing. Synthetic samples of image-like
inputs are measured together with `synth_views - 1` mirrored/shifted views of each
(`dfq_onnx.synth.augment`), built chunk by chunk: more extremes for the min/max at the cost of forward
rows only; a user's data and noise are measured as given. Without `--synth-views` the views are budgeted
(`backends.budget.calibration_rows`): up to DEFAULT_VIEWS per sample while rows x activation elements
per row stay within the stage's work budget, so a large input measures every sample and fewer views, and
one whose single row per sample overruns the budget measures fewer samples, at least
`budget.MIN_ROWS` (ISNet at 1024 x 1024: 17 of 64); an explicit `--synth-views` is measured whole.
After measuring, a large sample set moves to a temporary file (`backends.spill`): the passes after
Calibrate read a few of its rows, and only those are then resident.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
from tqdm import tqdm

from dfq_onnx.backends import act_precision, observers, runtime
from dfq_onnx.backends.budget import calibration_rows
from dfq_onnx.backends.chunks import pad_rows, rows_per_chunk, static_batch
from dfq_onnx.backends.memory import release
from dfq_onnx.backends.spill import spill
from dfq_onnx.core import batch_axis
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range
from dfq_onnx.synth import layout
from dfq_onnx.synth.augment import view_count, view_rows
from dfq_onnx.synth.runner import row_elements

log = logging.getLogger(__name__)

DEFAULT_VIEWS = 8     # views per synthetic image sample when --synth-views is not given (budgeted)


def input_shape(t: gs.Variable, batch: int) -> tuple[int, ...]:
    """Concrete shape of a graph input: dynamic batch -> `batch`; other dynamic dims are an error."""
    if t.shape is None:
        raise UsageError(f"input '{t.name}' has no shape; pass --input-shape {t.name}:1,3,224,224")
    dims = []
    for i, d in enumerate(t.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0:
            dims.append(batch)
        else:
            raise UsageError(f"input '{t.name}' has dynamic dimension {i} ('{d}'); pass "
                             f"--input-shape {t.name}:" + ",".join(str(x if isinstance(x, int) and x > 0
                                                                       else 1) for x in t.shape))
    return tuple(dims)


def noise_inputs(graph: gs.Graph, n: int, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal samples for every float input (the data-free baseline)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in graph.inputs:
        if not is_float(t):
            raise UsageError(f"input '{t.name}' is not float32 ({t.dtype}); noise calibration cannot "
                             "invent it: pass --calib FILE.npz")
        shape = input_shape(t, n)
        feeds[t.name] = rng.standard_normal((n,) + shape[1:]).astype(np.float32)
    return feeds


def load_calib_npz(graph: gs.Graph, path: str, batch_axis1: list[str] = ()) -> dict[str, np.ndarray]:
    """Read and validate a calibration npz: one preprocessed array per model input name (those in
    `batch_axis1` as the model declares them, batch on axis 1, and given to the compile batch-major)."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            arrays = batch_axis.swap_rows({k: data[k] for k in data.files}, list(batch_axis1))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--calib {path}: cannot read npz ({exc})") from None
    feeds = {}
    for t in graph.inputs:
        if t.name not in arrays:
            raise UsageError(f"--calib {path}: no array named '{t.name}' (model input); found "
                             f"{', '.join(sorted(arrays)) or 'nothing'}")
        arr = arrays[t.name]
        want = np.dtype(t.dtype) if t.dtype is not None else arr.dtype
        if arr.dtype != want:
            if not (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating)):
                raise UsageError(f"--calib {path}: '{t.name}' is {arr.dtype}, the model expects {want}")
            arr = arr.astype(want)
        shape = t.shape or []
        bad = len(shape) != arr.ndim or any(isinstance(d, int) and d > 0 and d != a
                                             for d, a in zip(shape[1:], arr.shape[1:]))
        if bad:
            raise UsageError(f"--calib {path}: '{t.name}' has shape {list(arr.shape)}, the model expects "
                             f"{list(shape)}")
        feeds[t.name] = arr
    return _same_samples(feeds, path)


def _same_samples(feeds: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """`feeds` with one sample count: an array given for one sample beside others of N (a recurrent
    state [1, 1, 128] beside [N, 576] frames: the state every call starts from) is read as that value in
    every sample (a broadcast view, not a copy)."""
    sizes = {k: len(v) for k, v in feeds.items()}
    many = {n for n in sizes.values() if n != 1}
    if 0 in sizes.values() or len(many) > 1:
        counts = ", ".join(f"'{k}' {n}" for k, n in sorted(sizes.items()))
        raise UsageError(f"--calib {path}: arrays must hold the same number of samples (or one, used for "
                         f"every sample); found {counts}")
    rows = many.pop() if many else 1
    return {k: v if len(v) == rows else np.broadcast_to(v, (rows, *v.shape[1:])) for k, v in feeds.items()}


def chunk_rows(state: CompileState, held: list[str] = ()) -> int:
    """Rows per forward call: the model's static batch dimension if it has one, else the user's
    `calib_batch`, else `rows_per_chunk` of the model's activation footprint (backends/chunks.py)."""
    if (static := static_batch(state.graph)) is not None:
        return static
    if state.options.calib_batch is not None:
        return state.options.calib_batch
    return rows_per_chunk(state.graph, held=held)


def batches(state: CompileState, feeds: dict[str, np.ndarray], rows: int, held: list[str]):
    """(feeds of one call, rows of it that are real) in `chunk_rows` steps; a static batch's last call
    is padded (`pad_rows`)."""
    step = chunk_rows(state, held=held)
    static = static_batch(state.graph) is not None
    for start in range(0, rows, step):
        chunk = {k: v[start:min(start + step, rows)] for k, v in feeds.items()}
        n = len(next(iter(chunk.values())))
        yield (pad_rows(chunk, step) if static else chunk), n


def _percentiles(arr: np.ndarray, rows: int, q: float) -> np.ndarray:
    """[rows, 2] per-row (100 - q, q) percentiles; a tensor whose axis 0 is not the rows counts as one."""
    flat = arr.reshape(rows, -1) if arr.ndim and arr.shape[0] == rows else arr.reshape(1, -1)
    return np.percentile(flat, [100.0 - q, q], axis=1).T


def activation_elements(state: CompileState, feeds: dict[str, np.ndarray]) -> int:
    """Activation elements per row of the model on `feeds`' shapes (`synth.runner.row_elements`),
    measured once per compile (it may take one one-row forward pass)."""
    notes = state.report.notes.setdefault("work", {})
    if "elements_per_row" not in notes:
        elements, passes = row_elements(state.graph, {k: tuple(v.shape[1:]) for k, v in feeds.items()})
        state.forward_passes += passes
        notes["elements_per_row"] = int(elements)
    return notes["elements_per_row"]


def channels_last(state: CompileState, feeds: dict[str, np.ndarray]) -> list[str]:
    """Inputs read channels-last (synth/layout.py): their views are drawn on the [C, H, W] transpose."""
    return layout.channels_last_inputs(state.graph, {k: tuple(v.shape[1:]) for k, v in feeds.items()})


def planes(state: CompileState, feeds: dict[str, np.ndarray]) -> list[str]:
    """[N, H, W] inputs read as one-channel images (synth/layout.py): their views are of [1, H, W]."""
    return layout.plane_inputs(state.graph, {k: tuple(v.shape[1:]) for k, v in feeds.items()})


def measured_rows(state: CompileState, feeds: dict[str, np.ndarray], views: int | None) -> tuple[int, int]:
    """(views per sample, rows) Calibrate measures: `views` given -> all of them; None -> DEFAULT_VIEWS
    within the work budget (`backends.budget.calibration_rows`); 1 for inputs without views."""
    n = len(next(iter(feeds.values())))
    per = view_count(feeds, DEFAULT_VIEWS if views is None else views, channels_last(state, feeds),
                     planes(state, feeds))
    if per == 1:
        return 1, n
    if views is not None:
        return per, n * per
    return per, calibration_rows(n, per, activation_elements(state, feeds))


def measured_samples(state: CompileState, n: int) -> int:
    """How many of a calibration set's `n` samples Calibrate measured: the first `rows` where the work
    budget took fewer samples than the set holds (`measured_rows`: ISNet at 1024 x 1024, 17 of 64), else
    all `n`. The passes that measure more statistics of the set afterwards (input moments, bias
    correction's means) read the same samples, so a large input costs them what it cost Calibrate."""
    for note in state.report.notes.get("calibration", {}).values():
        if note.get("samples") == n and note.get("rows", n) < n:
            return int(note["rows"])
    return n


def collect_ranges(state: CompileState, feeds: dict[str, np.ndarray], tensors: list[str],
                   source: str, views: int = 1, rows: int | None = None,
                   graph: gs.Graph | None = None) -> dict[str, Range]:
    """Run the FP32 graph (or `graph`, a variant of it) over `feeds` (and `views` rows per sample,
    `synth.augment`; the first `rows` of them when given) in chunks and return each tensor's activation
    range. Min/max: exact reductions
    inside the graph (observers.py), the same whatever the chunk size. Percentile: the mean over rows
    of each row's percentile, from the tensors themselves (chunks sized to hold them). A tensor holding an
    infinity or NaN on any row gets the range (-inf, inf)."""
    if not tensors:
        return {}
    opts = state.options
    pct = opts.act_range == "percentile"
    observe = runtime.observer_model if pct else observers.range_model
    model = observe(state.graph if graph is None else graph, tensors)
    sess = runtime.session(model, mem_pattern=False)
    last = channels_last(state, feeds), planes(state, feeds)    # once: every chunk draws its views with it
    rows = rows or len(next(iter(feeds.values()))) * view_count(feeds, views, *last)
    step = chunk_rows(state, held=tensors)
    state.report.notes.setdefault("rows_per_call", {})["calibrate"] = step
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    per_row: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    bad: set[str] = set()
    for start in tqdm(range(0, rows, step), desc=f"calibrate ({source})", disable=not opts.progress,
                      leave=False):
        outs = sess.run(None, _chunk(state, feeds, views, start, min(start + step, rows), step, last))
        state.forward_passes += 1
        if not pct:
            for name, (a, b) in observers.ranges_of(outs, tensors).items():
                if not (np.isfinite(a) and np.isfinite(b)):
                    bad.add(name)
                lo[name], hi[name] = min(lo[name], a), max(hi[name], b)
            continue
        n = min(start + step, rows) - start
        for name, arr in zip(tensors, outs):
            if not np.all(np.isfinite(arr)):
                bad.add(name)
            elif name not in bad:
                per_row[name].append(_percentiles(arr[:n] if arr.ndim and len(arr) > n else arr, n,
                                                  opts.percentile))
    unbounded = Range(-np.inf, np.inf, source)
    if pct:
        return {t: unbounded if t in bad else Range(*(float(v) for v in np.concatenate(per_row[t]).mean(0)),
                                                    f"{source}/p{opts.percentile}") for t in tensors}
    return {t: unbounded if t in bad else Range(lo[t], hi[t], source) for t in tensors}


def _chunk(state: CompileState, feeds: dict[str, np.ndarray], views: int, start: int, stop: int,
           step: int, last: tuple[list[str], list[str]]) -> dict[str, np.ndarray]:
    """Rows [start, stop) (`last`: the channels-last and plane inputs); a model with a static batch gets
    its last chunk padded with copies of the last row (which change no min/max; percentile rows beyond
    `stop` are dropped by the caller)."""
    chunk = view_rows(feeds, views, state.options.seed, start, stop, *last)
    return pad_rows(chunk, step) if static_batch(state.graph) and stop - start < step else chunk


def _keep_float(state: CompileState, tensors: list[str]) -> set[str]:
    """Leave unquantized the encoding classes of `tensors`, which hold an infinity or NaN on the
    calibration data (an attention mask written as -inf, as Hugging Face's exports fill masked scores):
    no integer grid holds them. Returns the members taken out of the spec."""
    if not tensors:
        return set()
    spec = state.spec
    reps = {spec.encoding_of[t] for t in tensors}
    floats = {t for t in spec.act_tensors if spec.encoding_of[t] in reps}
    state.spec = act_precision.without(spec, state.graph, floats)
    state.act_groups = act_precision.build_act_groups(state.graph, state.spec, state.target)
    state.report.notes["float_unbounded"] = sorted(floats)
    log.warning("tensor %s holds an infinity or NaN on the calibration data (a mask's fill): kept float%s",
                f"'{tensors[0]}'", f" with {len(floats) - 1} more" if len(floats) > 1 else "")
    return floats


class Calibrate(Pass):
    """Measure the activation ranges still missing, on the user's data or Gaussian noise."""

    name = "Calibrate"

    def run(self, state: CompileState) -> PassResult:
        spec = state.spec
        missing = [t for t in spec.act_tensors if t not in state.ranges]
        opts = state.options
        if not missing:
            if opts.calib.endswith(".npz") and state.calib is None:
                # no range to measure (a token model's dynamic MatMuls), but the user's samples are still
                # what a budget's sensitivity scores on
                state.calib = load_calib_npz(state.graph, opts.calib, state.batch_axis1)
                spill(state.calib)
            return PassResult(False, "all ranges known")
        if opts.calib.endswith(".npz"):
            feeds, source = load_calib_npz(state.graph, opts.calib, state.batch_axis1), "data"
        elif opts.calib == "synthetic" and state.calib is not None:
            feeds, source = state.calib, "synthetic"
        else:
            feeds, source = noise_inputs(state.graph, opts.calib_samples, opts.seed), "noise"
        if state.calib is None or source == "data":
            state.calib = feeds   # scoring samples for later passes (synthetic ones are kept)
        n = len(next(iter(feeds.values())))
        views, rows = measured_rows(state, feeds, opts.synth_views) if source == "synthetic" else (1, n)
        got = collect_ranges(state, feeds, missing, source, views, rows)
        unbounded = _keep_float(state, [t for t, r in got.items() if not np.isfinite(r.hi - r.lo)])
        state.ranges.update({t: r for t, r in got.items() if t not in unbounded})
        state.report.notes.setdefault("calibration", {})[source] = {"samples": n, "rows": rows,
                                                                    "tensors": len(missing)}
        moved = spill(state.calib)      # later passes read a few rows: keep the set in a file
        if moved:
            state.report.notes.setdefault("work", {})["samples_in_file_bytes"] = moved
        release()                       # the range session's heap back to the system before the next pass
        if rows < n:        # the work budget took the first `rows` samples (backends/budget.py)
            return PassResult(False, f"{len(missing)} ranges from {rows} of {n} {source} samples (budget)")
        views = f" ({rows} rows with views)" if rows != n else ""
        return PassResult(False, f"{len(missing)} ranges from {n} {source} samples{views}")
