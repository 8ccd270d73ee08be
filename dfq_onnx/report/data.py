"""Report sections gathered from the final compile state: per-layer sensitivity, the sensitivity table,
the Pareto curve, and the FP32-vs-quantized output comparison.

The comparison runs the FP32 model and the emitted QDQ model in ONNX Runtime on the samples the
compile used (synthetic, then calibration data; Gaussian noise when ranges were all analytic), at most
`COMPARE_SAMPLES` of them, and fewer on large inputs: two forward passes per row within the stages' work
budget (`budget.comparison_rows` on Calibrate's activation elements per row; an ISNet at 1024 x 1024 ran
128 passes, ~32 min at 17.7 GB peak, after the model was ready); its ORT runs are counted apart from the
compile's. Its memory is one session and one call's outputs, as the compile's scorer: the FP32 outputs
are kept in memory up to KEPT_BYTES, else in a temporary file read back a call's rows at a time
(`backends.row_store`, the scorer's rule), and each output's error is summed in float64 blocks of
BLOCK elements (ISNet's six 1024 x 1024 maps and six feature maps, 124 MB a row: its 8 FP32 rows and
float64 copies of a call took the compile from 3.2 to 5.3 GB; BENCHMARKS.md, session 25). It reports per
output: SQNR (dB), max |error|, and for [N, classes] outputs the top-1 agreement.

    SQNR = 10 log10( sum(y_fp32^2) / sum((y_fp32 - y_q)^2) )
"""

from __future__ import annotations

import logging

import numpy as np

from dfq_onnx.backends import budget, runtime
from dfq_onnx.backends.chunks import pad_rows
from dfq_onnx.backends.memory import release
from dfq_onnx.backends.row_store import KEPT_BYTES, RowStore
from dfq_onnx.core import batch_axis, candidates, ir
from dfq_onnx.core.errors import DfqError
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.tail import batch_axis_of

log = logging.getLogger(__name__)

COMPARE_SAMPLES = 64
BLOCK = 1 << 20                             # elements per float64 block of an output's error sums


def _cand_name(c) -> str:
    return candidates.name(c)


def layer_sensitivity(state: CompileState) -> None:
    """Add the group, its per-candidate sensitivity and its predicted contribution to each layer row."""
    group_of = {layer: g.id for g in state.groups for layer in g.layers}
    table = state.sensitivity
    for row in state.report.layers:
        gid = group_of.get(row["node"])
        row["group"] = gid
        singles = getattr(table, "singles", {}).get(gid) if table is not None else None
        row["sensitivity"] = ({_cand_name(c): float(v) for c, v in sorted(singles.items())}
                              if singles else None)
        bits = state.plan.bits.get(gid) if state.plan is not None and gid else None
        row["predicted_loss"] = float(singles[bits]) if singles and bits in singles else None


def sensitivity_section(state: CompileState) -> dict | None:
    """The singles of the sensitivity table as a matrix (groups x candidates), or None."""
    table = state.sensitivity
    if table is None or not getattr(table, "singles", None):
        return None
    cands = sorted(table.candidates)
    groups = [g for g in table.groups if g in table.singles]
    return {"metric": table.metric, "candidates": [_cand_name(c) for c in cands], "groups": groups,
            "loss": [[float(table.singles[g].get(c, float("nan"))) for c in cands] for g in groups]}


def pareto_section(state: CompileState) -> list[dict] | None:
    """The points AllocateBits left on the state (`state.pareto`, see dfq_onnx/allocation/pareto.py: budget,
    avg_weight_bits, size_mb, bops_ratio, predicted, measured, bits), as plain JSON values."""
    points = getattr(state, "pareto", None)
    if not points:
        return None
    return [_plain(p if isinstance(p, dict) else getattr(p, "__dict__", {})) for p in points]


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _samples(state: CompileState, source) -> tuple[dict[str, np.ndarray] | None, str]:
    synth = getattr(state.synthetic, "inputs", None)
    if synth:
        return synth, "synthetic"
    if state.calib:
        return state.calib, "calibration"
    rng = np.random.default_rng(state.options.seed)
    feeds = {}
    inits = {t.name for t in source.graph.initializer}
    for inp in source.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        if tt.elem_type != 1 or any(d <= 0 for d in dims[1:]):
            return None, "no samples (non-float or dynamic input)"
        feeds[inp.name] = rng.standard_normal([8] + dims[1:]).astype(np.float32)
    return feeds, "noise"


def compare_outputs(state: CompileState, source, quantized) -> dict:
    """FP32 vs quantized outputs on the compile's samples (see module docstring). `source`: the FP32
    proto, or a function returning it (the compile's: the proto is then dropped once serialized, before
    ONNX Runtime parses it -- one copy of the weights fewer at the session's peak)."""
    proto = source() if callable(source) else source
    feeds, kind = _samples(state, proto)
    if feeds is None:
        return {"samples": 0, "source": kind, "outputs": []}
    if ir.has_external_data(proto) or ir.over_two_gb(proto) or ir.over_two_gb(quantized):
        # an ORT session would load (and pre-pack) every FP32 weight the compile kept on disk
        return {"samples": 0, "source": f"skipped: FP32 weights above {ir.LAZY_BYTES >> 20} MiB stay on disk",
                "outputs": []}
    source = ir.serialize(proto)
    del proto
    release()      # the proto's pages, before ONNX Runtime parses its own copy
    n = min(COMPARE_SAMPLES, len(next(iter(feeds.values()))))
    if elements := state.report.notes.get("work", {}).get("elements_per_row"):
        n = budget.comparison_rows(n, int(elements))
    feeds = {k: v[:n] for k, v in feeds.items()}

    moved = list(getattr(state, "batch_axis1", ()))       # inputs compiled batch-major (core/batch_axis)
    out_axes = getattr(state, "output_batch_axes", {})

    single = bool(getattr(state, "unbatched", ()))   # a model with no batch axis (core/unbatched): one row

    def swap(chunk: dict) -> dict:       # the compile's batch-major state inputs, as the models read them
        return batch_axis.swap_rows(chunk, moved)

    try:
        # one session at a time (each keeps an arena of its peak); Calibrate's rows per call
        # (backends/chunks.py) bound the memory; 16 when nothing was measured
        ref_sess = runtime.session(source)
        del source     # the serialized FP32 model: ONNX Runtime holds its own tensors
        static = 1 if single else _static_batch(ref_sess, moved)
        batch = static or state.report.notes.get("rows_per_call", {}).get("calibrate", 16)
        tensors = _tensor_outputs(ref_sess)      # a ZipMap's sequence of maps is not compared
        if not tensors:
            return {"samples": 0, "source": kind, "outputs": []}
        names = [meta.name for meta, _ in tensors]
        axes = [out_axes.get(meta.name, (b,))[0]      # a time-major output [T, N, C] or a
                for meta, b in tensors]               # state [2, N, H]: batch-first
        ref, at = RowStore(n, KEPT_BYTES), 0     # the FP32 outputs: in a file above KEPT_BYTES
        for chunk in runtime.iter_batches(feeds, batch):
            outs = _run(ref_sess, swap(chunk), axes, static, single, names)
            ref.put(slice(at, at + len(outs[0])), outs)
            at += len(outs[0])
            del outs
        del ref_sess
        release()      # the FP32 session's freed heap before the quantized one (glibc keeps it otherwise)
        diffs = [_Diff(name, shape) for name, shape in zip(names, ref.shapes)]
        sess = runtime.session(quantized)
        at = 0
        for chunk in runtime.iter_batches(feeds, batch):     # the quantized outputs chunk by chunk
            got = _run(sess, swap(chunk), axes, static, single, names)
            rows = slice(at, at + len(got[0]))
            at = rows.stop
            for diff, r, g in zip(diffs, ref.get(rows), got):
                diff.add(r, g)
            del got
    except (DfqError, RuntimeError, ValueError) as exc:   # the comparison never fails the compile
        log.warning("FP32-vs-quantized comparison skipped: %s", str(exc).splitlines()[0])
        return {"samples": 0, "source": kind, "outputs": []}
    return {"samples": n, "source": kind, "outputs": [d.row() for d in diffs],
            "forward_passes": 2 * -(-n // batch)}


def _run(sess, chunk: dict, axes: list[int], static: int | None, single: bool = False,
         names: list[str] | None = None) -> list[np.ndarray]:
    """The outputs `names` (all when None) of one chunk, batch-first; a static batch's short last chunk
    is padded to it (`chunks.pad_rows`) and the padding's outputs dropped (CenterFace ships with a fixed
    batch of 10); `single`: a model with no batch axis, fed its one row without the axis and its outputs
    given one."""
    rows = len(next(iter(chunk.values())))
    if single:
        return [r[None] for r in sess.run(names, {k: v[0] for k, v in chunk.items()})]
    outs = sess.run(names, pad_rows(chunk, static) if static else chunk)
    return [np.moveaxis(r, b, 0)[:rows] for r, b in zip(outs, axes)]


class _Diff:
    """One output's comparison, summed chunk by chunk and within a chunk in float64 blocks of BLOCK
    elements (never whole float64 copies: a 640 x 640 map of 64 samples is 0.1 GB in float32, ~1 GB in
    whole float64 temporaries; one ISNet row's outputs 124 MB, ~0.5 GB)."""

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape = name, tuple(shape)
        self.noise = self.signal = self.max_abs = 0.0
        self.agree = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        """Add one call's rows: `ref` the FP32 outputs, `got` the quantized ones."""
        flat_r, flat_g = ref.reshape(-1), got.reshape(-1)
        for start in range(0, flat_r.size, BLOCK):
            r = flat_r[start:start + BLOCK].astype(np.float64)
            d = r - flat_g[start:start + BLOCK]
            self.noise += float(np.dot(d, d))
            self.signal += float(np.dot(r, r))
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
        if ref.ndim == 2 and ref.shape[1] > 1:
            self.agree += int(np.sum(ref.argmax(1) == got.argmax(1)))

    def row(self) -> dict:
        sqnr = None if self.noise == 0 else round(10 * np.log10(max(self.signal, 1e-30) / self.noise), 4)
        row = {"output": self.name, "shape": list(self.shape), "sqnr_db": sqnr,   # None: identical
               "max_abs_error": self.max_abs}
        if len(self.shape) == 2 and self.shape[1] > 1:
            row["top1_agreement"] = self.agree / self.shape[0]
        return row


def _tensor_outputs(sess) -> list[tuple]:
    """(output metadata, batch axis) of each tensor output: a sequence or map output (sklearn-onnx's
    ZipMap: one {class: probability} dict per row) has no array to compare."""
    return [(meta, b) for meta, b in zip(sess.get_outputs(), _batch_axes(sess))
            if meta.type.startswith("tensor(")]


def _batch_axes(sess) -> list[int]:
    """Per output, the axis holding the batch, by the compile's own rule (core/tail.batch_axis_of: a
    time-major recognizer's [T, N, C]: 1), else 0."""
    first = sess.get_inputs()[0].shape if sess.get_inputs() else None
    return [batch_axis_of(first, meta.shape) or 0 for meta in sess.get_outputs()]


def _static_batch(sess, batch_axis1=()) -> int | None:
    for inp in sess.get_inputs():
        if inp.name not in batch_axis1 and inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0:
            return inp.shape[0]
    return None


def fill(state: CompileState, source, quantized) -> None:
    """Add every section above to `state.report`."""
    layer_sensitivity(state)
    state.report.sensitivity = sensitivity_section(state)
    state.report.pareto = pareto_section(state)
    state.report.comparison = compare_outputs(state, source, quantized)
