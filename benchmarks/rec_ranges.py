"""PP-OCRv4 rec (issue 17): which activation ranges cost its accuracy, on lines and on pages.

    python benchmarks/rec_ranges.py [--early-last p2o.Mul.71] [--lines 500] [--pages 30] [--no-a16]

One default compile S (`--input-shape x:1,3,48,320`, data-free) whose synthetic calibration rows (the
samples and their views, as Calibrate measured them) are kept; then, on the normalized FP32 graph, per
activation tensor: S = min/max over those rows (what S quantizes with), R = min/max over 64 real rendered
lines (swap_tasks' ocr-rec), V0 = min/max over the samples without their views, M = the MSE-optimal
8-bit asymmetric range of S's histogram (ends searched on a grid of 0.2..1 of S's). "Early" = the
tensors up to `--early-last` in spec order (the default is the CNN stem and first stages, session 5's
first depth quarter). Rows are S with those tensors' (scale, zero point) rewritten from another range
set (a DequantizeLinear reading a rewritten quantizer's codes with its own encoding, EmitQDQ's Div
rescale, keeps its scale ratio and takes the zero point), and one compile with the early groups at A16
(uint16 Q/DQ, opset 21). Lines: exact match and CER through RapidOCR's recognizer; pages: page CER
through RapidOCR with det and cls FP32 (so the page figure is rec's alone); ORT latency of the rec
outputs (6 x 3 x 48 x 320, interleaved medians). A diagnosis: R uses real data, the tool never does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_latency_ms, markdown_table  # noqa: E402
from dfq_onnx.passes.act_precision import ChooseActivationPrecision  # noqa: E402
from dfq_onnx.passes.calibrate import Calibrate, measured_rows  # noqa: E402
from range_swap import activation_quantizers  # noqa: E402
from swap_tasks import make  # noqa: E402

from dfq_onnx import api, pipeline  # noqa: E402
from dfq_onnx.backends.act_precision import classes  # noqa: E402
from dfq_onnx.core.pass_base import Pass, PassResult  # noqa: E402
from dfq_onnx.core.state import BitPlan  # noqa: E402
from dfq_onnx.synth.augment import view_rows  # noqa: E402

BINS, LEVELS = 2048, 255


class Capture(Pass):
    """Keep what Calibrate measured on: the normalized graph, the synthetic rows, the ranges."""
    name = "Capture"

    def __init__(self, box: dict):
        self.box = box

    def run(self, state):
        views, rows = measured_rows(state, state.calib, state.options.synth_views)
        self.box.update(graph=gs.export_onnx(state.graph.copy()), calib=state.calib, views=views,
                        rows=rows, seed=state.options.seed, act=list(state.spec.act_tensors))
        return PassResult(False, "captured")


class ForceA16(Pass):
    """Every activation group with a member in `tensors` at 16 bits."""
    name = "ForceA16"

    def __init__(self, tensors: set):
        self.tensors = tensors

    def run(self, state):
        acts = {f"a{i}": 16 for i, (_, mem) in enumerate(classes(state.spec).items())
                if set(mem) & self.tensors}
        state.plan = BitPlan(state.plan.bits, acts=acts)
        return PassResult(False, f"{len(acts)} groups at A16")


def compile_with(model, out: Path, after: type, extra: Pass, opset: int | None = None) -> float:
    orig_pipe, orig_opset = api.default_pipeline, pipeline.required_opset

    def patched(profile, opts):
        ps = orig_pipe(profile, opts)
        i = [j for j, p in enumerate(ps) if isinstance(p, after)][0]
        return ps[:i + 1] + [extra] + ps[i + 1:]
    api.default_pipeline = patched
    if opset is not None:
        pipeline.required_opset = lambda t, o: opset
    try:
        t0 = time.perf_counter()
        api.quantize(str(model), output=str(out), input_shapes={"x": (1, 3, 48, 320)}, use_cache=False)
        return time.perf_counter() - t0
    finally:
        api.default_pipeline, pipeline.required_opset = orig_pipe, orig_opset


def sweep(graph: onnx.ModelProto, act: list, chunks, edges: dict) -> tuple:
    """Per-row min/max [rows, T] and histograms over `edges` of every tensor in `act`."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(graph)
    del m.graph.output[:]
    outs = [t for t in act if t not in {i.name for i in m.graph.input}]
    m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in outs)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo, hi, hist = [], [], {t: np.zeros(BINS) for t in act}
    for feeds in chunks:
        k = len(feeds["x"])
        res = {**dict(zip(outs, sess.run(outs, feeds))), "x": feeds["x"]}
        flat = [res[t].reshape(k, -1) for t in act]
        lo.append([a.min(1) for a in flat])
        hi.append([a.max(1) for a in flat])
        for t, a in zip(act, flat):
            e0, e1 = edges[t]
            idx = np.clip(((a.ravel() - e0) / (e1 - e0) * BINS).astype(np.int64), 0, BINS - 1)
            hist[t] += np.bincount(idx, minlength=BINS)
    return np.concatenate(lo, 1).T, np.concatenate(hi, 1).T, hist


def quant_mse(h: np.ndarray, e0: float, e1: float, lo: float, hi: float) -> float:
    c = e0 + (np.arange(BINS) + 0.5) * (e1 - e0) / BINS
    s = (hi - lo) / LEVELS
    zp = np.round(-lo / s)
    q = (np.clip(np.round(c / s) + zp, 0, LEVELS) - zp) * s
    return float((h * (q - c) ** 2).sum() / max(h.sum(), 1))


def mse_range(h: np.ndarray, e0: float, e1: float) -> tuple[float, float]:
    fr = np.linspace(0.2, 1.0, 48)
    cands = [(min(e0 * a, 0.0), max(e1 * b, 0.0)) for a in fr for b in fr]
    cands = [c for c in cands if c[1] - c[0] > 0]
    return min(cands, key=lambda c: quant_mse(h, e0, e1, *c))


def with_ranges(base: onnx.ModelProto, ranges: dict, path: Path) -> Path:
    """`base` with the activation quantizers of the tensors in `ranges` re-encoded (uint8, asymmetric)."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    inits = {t.name: t for t in m.graph.initializer}
    old = {k: numpy_helper.to_array(v) for k, v in inits.items()}
    for t, sc, zp in activation_quantizers(base):
        if t in ranges:
            lo, hi = min(ranges[t][0], 0.0), max(ranges[t][1], 0.0)
            scale = (hi - lo) / LEVELS
            inits[sc].CopyFrom(numpy_helper.from_array(np.full_like(old[sc], scale), sc))
            inits[zp].CopyFrom(numpy_helper.from_array(np.full_like(old[zp], np.round(-lo / scale)), zp))
    q_of = {n.output[0]: n for n in base.graph.node if n.op_type == "QuantizeLinear"}
    for n in base.graph.node:
        q = q_of.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.input[1] != n.input[1]:
            ratio = old[n.input[1]] / old[q.input[1]]
            new = (numpy_helper.to_array(inits[q.input[1]]) * ratio).astype(old[n.input[1]].dtype)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(new, n.input[1]))
            inits[n.input[2]].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[q.input[2]]),
                                                               n.input[2]))
    onnx.save(m, str(path))
    return path


def pages_cer(rec: Path, n: int) -> float:
    import ocr_data
    from dfq_onnx.models.corpus import corpus_model
    from ocr import MODELS
    from rapidocr_onnxruntime import RapidOCR
    src = {k: str(corpus_model(v).path) for k, v in MODELS.items()}
    pages, texts = ocr_data.page_set(n, 0, ocr_data.charset(Path(src["rec"])))
    eng = RapidOCR(det_model_path=src["det"], cls_model_path=src["cls"], rec_model_path=str(rec))
    hyps = [" ".join(r[1] for r in (eng(img)[0] or [])) for img in pages]
    return ocr_data.cer([" ".join(t) for t in texts], hyps)


def range_sets(box: dict, real: np.ndarray) -> dict:
    act, n = box["act"], len(next(iter(box["calib"].values())))
    syn = (view_rows(box["calib"], box["views"], box["seed"], s, min(s + 8, box["rows"]))
           for s in range(0, box["rows"], 8))
    s_lo, s_hi, _ = sweep(box["graph"], act, syn, {t: (-1.0, 1.0) for t in act})
    edges = {t: (min(float(s_lo[:, j].min()), -1e-6), max(float(s_hi[:, j].max()), 1e-6))
             for j, t in enumerate(act)}
    syn = (view_rows(box["calib"], box["views"], box["seed"], s, min(s + 8, box["rows"]))
           for s in range(0, box["rows"], 8))
    _, _, hist = sweep(box["graph"], act, syn, edges)
    r_lo, r_hi, _ = sweep(box["graph"], act, ({"x": real[s:s + 8]} for s in range(0, len(real), 8)), edges)
    return {"S": {t: edges[t] for t in act},
            "R": {t: (float(r_lo[:, j].min()), float(r_hi[:, j].max())) for j, t in enumerate(act)},
            "V0": {t: (float(s_lo[:n, j].min()), float(s_hi[:n, j].max())) for j, t in enumerate(act)},
            "M": {t: mse_range(hist[t], *edges[t]) for t in act}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--early-last", default="p2o.Mul.71", help="last tensor of the early part")
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--pages", type=int, default=30)
    ap.add_argument("--no-a16", action="store_true", help="skip the A16 compile")
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    task = make("ocr-rec", None, 64)
    rows, lat = [], {}
    with tempfile.TemporaryDirectory(prefix="rec_ranges_") as tmp:
        work, box = Path(tmp), {}
        wall = compile_with(task.model, work / "s.onnx", Calibrate, Capture(box))
        print(f"S compiled in {wall:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        sets = range_sets(box, task.real["x"])
        act = box["act"]
        early = act[:act.index(args.early_last) + 1]
        base = onnx.load(str(work / "s.onnx"))
        paths = {"S": work / "s.onnx"}
        swaps = [("early from R", "R", early), ("early from M (MSE-optimal)", "M", early),
                 ("all from M (MSE-optimal)", "M", act), ("early from V0 (no views)", "V0", early),
                 ("all from V0 (no views)", "V0", act), ("all from R", "R", act)]
        for name, src, tensors in swaps:
            paths[name] = with_ranges(base, {t: sets[src][t] for t in tensors}, work / f"{len(paths)}.onnx")
        if not args.no_a16:
            wall = compile_with(task.model, work / "a16.onnx", ChooseActivationPrecision,
                                ForceA16(set(early)), 21)
            print(f"A16 compiled in {wall:.0f} s", flush=True)
            paths["early groups at A16 (compiled)"] = work / "a16.onnx"
        fp32 = task.evaluate(task.model)
        rows.append(["FP32", "-", f"{fp32[0]:.1f}", f"{fp32[1]:.2f}",
                     f"{pages_cer(task.model, args.pages):.2f}"])
        for name, p in paths.items():
            a, b = task.evaluate(p)
            page = f"{pages_cer(p, args.pages):.2f}" if name in ("S", "early from R") or "A16" in name else ""
            rows.append([name, len(early) if "early" in name else "-", f"{a:.1f}", f"{b:.2f}", page])
            print(f"  {rows[-1]}", flush=True)
        x = np.random.default_rng(0).uniform(-1, 1, (6, 3, 48, 320)).astype(np.float32)
        lat = interleaved_latency_ms({"fp32": task.model, **{k: paths[k] for k in paths
                                                              if k == "S" or "A16" in k}},
                                     {"x": x}, rounds=3, runs=10, warmup=2)
    print(f"\nearly = {early[0]} .. {early[-1]} ({len(early)} of {len(act)} activation tensors); "
          f"{args.lines} lines, {args.pages} pages (det, cls FP32)\n")
    print(markdown_table(["rec", "tensors", "line exact %", "CER %", "page CER %"], rows))
    print("\nORT latency, median ms (6 x 3 x 48 x 320): "
          + ", ".join(f"{k} {v:.1f}" for k, v in lat.items()))
    print(f"\nwall {time.perf_counter() - t0:.0f} s, load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
