"""Where synthetic calibration loses accuracy (issues 13, 17): swap activation ranges from another compile.

    python benchmarks/range_swap.py [--task imagenet|ocr-cls|ocr-rec|yolo] [--model PATH] [--calib-images N]
                                    [--chunks 6] [--top 8] [--target ort-cpu] [--alt-steps 80]

The task (benchmarks/swap_tasks.py) names the model (default: EfficientNet-Lite0 / PP-OCR cls / rec),
its real calibration inputs (`--calib-images` of them, default 256 dev images / 64 rendered lines) and
its metric pair (top-1 and agreement; cls accuracy and agreement; rec line exact match and CER).

Three W8A8 compiles of the same model on `--target`, every activation at 8 bits (`act_bits=8`,
so the three graphs have the same quantizers, named alike): S = synthetic calibration (the default
samples) without the range priors (ScoreTopPrior, PooledRangeTop), S+prior = the default pipeline,
R = `--calib` the real images (the task's real inputs). Each activation quantizer is a
(scale, zero point) pair of initializers read by QuantizeLinear/DequantizeLinear; the weights, biases
and graphs of S and R are the same but for bias correction's shifts, which stay S's.

Rows (all evaluated on every dev image: top-1 and agreement with the FP32 argmax):
* S, S+prior, R as compiled; S with *all* activation ranges from R (what ranges alone explain);
* S with the ranges of one depth chunk from R (the quantizers in topological order, `--chunks` equal
  parts): which part of the network holds the damage;
* S with the score quantizers (those after the last Gemm/MatMul/Conv) from R, and S with every range
  but those from R: how much is the classifier's output range;
* S with the range of each of the `--top` tensors whose synthetic range differs most from the real one
  (|log(width_S / width_R)|) from R, one at a time;
* with `--alt-steps K`: A = synthetic calibration with `--synth-steps K` (the BN search), as compiled,
  S with all ranges from A, and the `--top` tensors whose S range differs most from A's swapped from A
  one at a time (what the search changes, and which of its changes matter).
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
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_input_npz  # noqa: E402
from dfq_onnx.passes.pool_range import PooledRangeTop  # noqa: E402
from dfq_onnx.passes.score_prior import ScoreTopPrior  # noqa: E402
from swap_tasks import TASKS, make  # noqa: E402

import dfq_onnx  # noqa: E402
from dfq_onnx import api  # noqa: E402

LAYER_OPS = ("Conv", "Gemm", "MatMul", "QLinearConv")


def compile_model(model: Path, out: Path, prior: bool, target: str, **options) -> Path:
    """One compile through the public API; `prior=False` drops the range priors (ScoreTopPrior,
    PooledRangeTop) from the pass list."""
    original = api.default_pipeline
    if not prior:
        priors = (ScoreTopPrior, PooledRangeTop)
        api.default_pipeline = lambda t, o: [p for p in original(t, o) if not isinstance(p, priors)]
    try:
        dfq_onnx.quantize(str(model), output=str(out), target=target, act_bits=8, progress=False, **options)
    finally:
        api.default_pipeline = original
    return out


def activation_quantizers(m: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(tensor, scale initializer, zero-point initializer) of each activation QuantizeLinear, in graph
    order (Emit writes the graph topologically sorted)."""
    inits = {t.name for t in m.graph.initializer}
    out = []
    for node in m.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) > 2:
            out.append((node.input[0], node.input[1], node.input[2]))
    return out


def _values(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def range_of(vals: dict, scale: str, zero: str) -> tuple[float, float]:
    s, z = float(vals[scale].reshape(-1)[0]), float(vals[zero].reshape(-1)[0])
    bits = 8 * vals[zero].dtype.itemsize
    signed = vals[zero].dtype.kind != "u"
    lo_q, hi_q = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    return (lo_q - z) * s, (hi_q - z) * s


def folded_readers(m: onnx.ModelProto, quantizers) -> set[str]:
    """Scale / zero-point initializers of DequantizeLinear nodes that read one of `quantizers`' codes
    with an encoding of their own: EmitQDQ's Div rescale (backends/scale_fold.py) drops a Div between
    two quantizers and dequantizes the first one's codes with the second one's scale. Such a pair
    must be swapped together, or its zero points and scales disagree (a broken model, not a finding)."""
    q_out = {n.output[0]: n.input[1] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    scales = {s for _, s, _ in quantizers}
    return {name for n in m.graph.node if n.op_type == "DequantizeLinear"
            and q_out.get(n.input[0]) in scales and n.input[1] != q_out[n.input[0]]
            for name in n.input[1:3]}


def swapped(s_model: onnx.ModelProto, r_vals: dict, quantizers, path: Path) -> Path:
    """S with the (scale, zero point) of `quantizers` taken from R, written to `path` (with the
    encodings of the DequantizeLinear nodes reading their codes, `folded_readers`)."""
    m = onnx.ModelProto()
    m.CopyFrom(s_model)
    names = {n for _, s, z in quantizers for n in (s, z)} | folded_readers(s_model, quantizers)
    for t in m.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(r_vals[t.name], t.name))
    onnx.save(m, path)
    return path


def score_quantizers(m: onnx.ModelProto, quantizers) -> list:
    """Quantizers of tensors computed after the last Conv/Gemm/MatMul (the scores and what reads them)."""
    last = max((i for i, n in enumerate(m.graph.node) if n.op_type in LAYER_OPS), default=-1)
    produced = {o: i for i, n in enumerate(m.graph.node) for o in n.output}
    last_out = set(m.graph.node[last].output) if last >= 0 else set()
    return [q for q in quantizers if produced.get(q[0], -1) > last or q[0] in last_out]


def _gaps(a_vals: dict, b_vals: dict, quants) -> list:
    """(|log(width_a / width_b)|, quantizer, range a, range b) per quantizer, largest first."""
    out = []
    for q in quants:
        (alo, ahi), (blo, bhi) = range_of(a_vals, *q[1:]), range_of(b_vals, *q[1:])
        gap = abs(np.log(max(ahi - alo, 1e-12) / max(bhi - blo, 1e-12)))
        out.append((gap, q, (alo, ahi), (blo, bhi)))
    return sorted(out, key=lambda r: -r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="imagenet", choices=sorted(TASKS))
    ap.add_argument("--model", default=None, help="the task's model (default: the shared / corpus one)")
    ap.add_argument("--calib-images", type=int, default=None, help="real calibration inputs (256 / 64)")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--target", default="ort-cpu", help="target profile (name or TOML path)")
    ap.add_argument("--alt-steps", type=int, default=None, help="also compare with --synth-steps K")
    ap.add_argument("--no-prior-row", action="store_true", help="skip S+prior (a model without scores)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    n_real = args.calib_images or (256 if args.task == "imagenet" else 64)
    task = make(args.task, args.model, n_real)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    opts = {"input_shapes": task.input_shapes, "use_cache": False}

    def row(name: str, path: Path, n: int | str) -> None:
        a, b = task.evaluate(path)
        rows.append([name, n, f"{a:.2f}", f"{b:.2f}"])
        print(f"  {rows[-1]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="range_swap_") as tmp:
        work = Path(tmp)
        real = write_input_npz(work / "real.npz", task.real)
        s_path = compile_model(task.model, work / "s.onnx", False, args.target, **opts)
        sp_path = None if args.no_prior_row else compile_model(task.model, work / "sp.onnx", True,
                                                               args.target, **opts)
        r_path = compile_model(task.model, work / "r.onnx", True, args.target, calib=str(real), **opts)
        s_model, r_model = onnx.load(s_path), onnx.load(r_path)
        quants = activation_quantizers(s_model)
        if [q[0] for q in quants] != [q[0] for q in activation_quantizers(r_model)]:
            sys.exit("the synthetic and real compiles quantize different tensors; cannot swap ranges")
        s_vals, r_vals = _values(s_model), _values(r_model)
        row("S: synthetic, no range priors", s_path, "-")
        if sp_path is not None:
            row("S+prior: default pipeline", sp_path, "-")
        row(f"R: {n_real} real inputs", r_path, "-")
        row("S, all ranges from R", swapped(s_model, r_vals, quants, work / "all.onnx"), len(quants))
        scores = score_quantizers(s_model, quants)
        rest = [q for q in quants if q not in scores]
        row(f"S, score ranges from R ({', '.join(q[0] for q in scores)})",
            swapped(s_model, r_vals, scores, work / "scores.onnx"), len(scores))
        row("S, every range but the scores' from R", swapped(s_model, r_vals, rest, work / "rest.onnx"),
            len(rest))
        for k, part in enumerate(np.array_split(np.arange(len(rest)), args.chunks)):
            qs = [rest[i] for i in part]
            row(f"S, depth chunk {k + 1}/{args.chunks} from R ({qs[0][0]} .. {qs[-1][0]})",
                swapped(s_model, r_vals, qs, work / f"chunk{k}.onnx"), len(qs))
        for _, q, (slo, shi), (rlo, rhi) in _gaps(s_vals, r_vals, quants)[:args.top]:
            row(f"S, {q[0]} from R (S [{slo:.2f}, {shi:.2f}], R [{rlo:.2f}, {rhi:.2f}])",
                swapped(s_model, r_vals, [q], work / "one.onnx"), 1)
        if args.alt_steps is not None:
            _alt_rows(task, args, opts, work, s_model, s_vals, r_vals, quants, row)
    print(f"\n### {task.model.name}: W8A8 {args.target} (A8 everywhere), activation ranges swapped from "
          f"other compiles; {'; '.join(task.notes)}\n")
    print(markdown_table(["model", "quantizers swapped", *task.metrics], rows))
    print(f"\nload average at end: {os.getloadavg()}; total {time.perf_counter() - t0:.0f} s")


def _alt_rows(task, args, opts, work, s_model, s_vals, r_vals, quants, row) -> None:
    """A = `--synth-steps K`: as compiled, S with all of A's ranges, and the largest S/A gaps one by one."""
    a_path = compile_model(task.model, work / "a.onnx", False, args.target, synth_steps=args.alt_steps,
                           **opts)
    a_model = onnx.load(a_path)
    if [q[0] for q in quants] != [q[0] for q in activation_quantizers(a_model)]:
        print("the --alt-steps compile quantizes other tensors: its rows are skipped")
        return
    a_vals = _values(a_model)
    row(f"A: --synth-steps {args.alt_steps}, no score prior", a_path, "-")
    row("S, all ranges from A", swapped(s_model, a_vals, quants, work / "alla.onnx"), len(quants))
    for _, q, (slo, shi), (alo, ahi) in _gaps(s_vals, a_vals, quants)[:args.top]:
        rlo, rhi = range_of(r_vals, *q[1:])
        row(f"S, {q[0]} from A (S [{slo:.2f}, {shi:.2f}], A [{alo:.2f}, {ahi:.2f}], R [{rlo:.2f}, "
            f"{rhi:.2f}])", swapped(s_model, a_vals, [q], work / "onea.onnx"), 1)


if __name__ == "__main__":
    main()
