"""Activation ranges from data: a user's calibration set, or Gaussian noise (the peers' baseline).

The FP32 graph is run once per batch with every activation quantizer's tensor exposed as an output;
per tensor the running min/max (or the mean over batches of a percentile) is kept, so memory is
bounded by one batch of activations. Analytic ranges (`AnalyticRanges`) fill what they can first;
this pass measures only what is still missing. Synthetic samples of image-like inputs are measured
together with `synth_views - 1` mirrored/shifted views of each (`dfq_onnx.synth.augment`): more extremes
for the min/max at the cost of forward rows only; a user's data and noise are measured as given.
Every observed tensor is an output of the run, so rows per call are capped to keep them within
MEMORY_BUDGET (PP-OCRv4 det at 736 x 736 observes ~150 MB per row: 6 rows per call instead of 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
from tqdm import tqdm

from dfq_onnx.backends import runtime
from dfq_onnx.core.errors import UnsupportedModelError, UsageError
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range
from dfq_onnx.synth.augment import with_views

MEMORY_BUDGET = 1 << 30     # bytes of observed activations per ORT call (one row at least)


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


def load_calib_npz(graph: gs.Graph, path: str) -> dict[str, np.ndarray]:
    """Read and validate a calibration npz: one preprocessed array per model input name."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
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
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise UsageError(f"--calib {path}: arrays must have the same, non-zero number of samples")
    return feeds


def _batch_size(graph: gs.Graph, preferred: int, tensors: list[str] = ()) -> int:
    """The model's static batch dimension if it has one, else `preferred`, lowered so that one call's
    observed tensors (all held until the call returns) take at most MEMORY_BUDGET bytes."""
    for t in graph.inputs:
        if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0:
            return t.shape[0]
    table = graph.tensors()
    per_row = 0
    for name in tensors:
        dims = table[name].shape[1:] if name in table and table[name].shape else []
        per_row += int(np.prod(dims)) if all(isinstance(d, int) and d > 0 for d in dims) else 0
    return max(1, min(preferred, MEMORY_BUDGET // max(4 * per_row, 1)))


def collect_ranges(state: CompileState, feeds: dict[str, np.ndarray], tensors: list[str],
                   source: str) -> dict[str, Range]:
    """Run the FP32 graph over `feeds` and return each tensor's activation range."""
    if not tensors:
        return {}
    opts = state.options
    sess = runtime.session(runtime.observer_model(state.graph, tensors))
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    pct: dict[str, list[tuple[float, float]]] = {t: [] for t in tensors}
    batches = list(runtime.iter_batches(feeds, _batch_size(state.graph, opts.calib_batch, tensors)))
    for chunk in tqdm(batches, desc=f"calibrate ({source})", disable=not opts.progress, leave=False):
        outs = sess.run(None, chunk)
        state.forward_passes += 1
        for name, arr in zip(tensors, outs):
            if not np.all(np.isfinite(arr)):
                raise UnsupportedModelError(f"tensor '{name}' is not finite on the calibration data")
            lo[name] = min(lo[name], float(arr.min()))
            hi[name] = max(hi[name], float(arr.max()))
            if opts.act_range == "percentile":
                q = np.percentile(arr, [100.0 - opts.percentile, opts.percentile])
                pct[name].append((float(q[0]), float(q[1])))
    if opts.act_range == "percentile":
        return {t: Range(float(np.mean([p[0] for p in pct[t]])), float(np.mean([p[1] for p in pct[t]])),
                         f"{source}/p{opts.percentile}") for t in tensors}
    return {t: Range(lo[t], hi[t], source) for t in tensors}


class Calibrate(Pass):
    """Measure the activation ranges still missing, on the user's data or Gaussian noise."""

    name = "Calibrate"

    def run(self, state: CompileState) -> PassResult:
        spec = state.spec
        missing = [t for t in spec.act_tensors if t not in state.ranges]
        if not missing:
            return PassResult(False, "all ranges known")
        opts = state.options
        if opts.calib.endswith(".npz"):
            feeds, source = load_calib_npz(state.graph, opts.calib), "data"
        elif opts.calib == "synthetic" and state.calib is not None:
            feeds, source = state.calib, "synthetic"
        else:
            feeds, source = noise_inputs(state.graph, opts.calib_samples, opts.seed), "noise"
        if state.calib is None or source == "data":
            state.calib = feeds   # scoring samples for later passes (synthetic ones are kept)
        n = len(next(iter(feeds.values())))
        if source == "synthetic":
            feeds = with_views(feeds, opts.synth_views, opts.seed)
        rows = len(next(iter(feeds.values())))
        state.ranges.update(collect_ranges(state, feeds, missing, source))
        state.report.notes.setdefault("calibration", {})[source] = {"samples": n, "rows": rows,
                                                                    "tensors": len(missing)}
        views = f" ({rows} rows with views)" if rows != n else ""
        return PassResult(False, f"{len(missing)} ranges from {n} {source} samples{views}")
