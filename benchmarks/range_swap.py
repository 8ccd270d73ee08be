"""Where synthetic calibration loses accuracy (issue 13): swap activation ranges from a real-data compile.

    python benchmarks/range_swap.py [--model ../shared/data/efficientnet_lite0.onnx] [--calib-images 256]
                                    [--chunks 6] [--top 8] [--target ort-cpu]

Three W8A8 compiles of the same model on `--target`, every activation at 8 bits (`act_bits=8`,
so the three graphs have the same quantizers, named alike): S = synthetic calibration (the default
samples) without the ScoreTopPrior pass, S+prior = the default pipeline, R = `--calib` the real images
(the same seeded subset of dev images as benchmarks/imagenet.py). Each activation quantizer is a
(scale, zero point) pair of initializers read by QuantizeLinear/DequantizeLinear; the weights, biases
and graphs of S and R are the same but for bias correction's shifts, which stay S's.

Rows (all evaluated on every dev image: top-1 and agreement with the FP32 argmax):
* S, S+prior, R as compiled; S with *all* activation ranges from R (what ranges alone explain);
* S with the ranges of one depth chunk from R (the quantizers in topological order, `--chunks` equal
  parts): which part of the network holds the damage;
* S with the score quantizers (those after the last Gemm/MatMul/Conv) from R, and S with every range
  but those from R: how much is the classifier's output range;
* S with the range of each of the `--top` tensors whose synthetic range differs most from the real one
  (|log(width_S / width_R)|) from R, one at a time.
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
from common import SHARED_DATA, markdown_table  # noqa: E402
from dfq_onnx.passes.score_prior import ScoreTopPrior  # noqa: E402
from imagenet import evaluate, start_run  # noqa: E402

import dfq_onnx  # noqa: E402
from dfq_onnx import api  # noqa: E402

LAYER_OPS = ("Conv", "Gemm", "MatMul", "QLinearConv")


def compile_model(model: Path, out: Path, prior: bool, target: str, **options) -> Path:
    """One compile through the public API; `prior=False` drops ScoreTopPrior from the pass list."""
    original = api.default_pipeline
    if not prior:
        api.default_pipeline = lambda t, o: [p for p in original(t, o) if not isinstance(p, ScoreTopPrior)]
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


def swapped(s_model: onnx.ModelProto, r_vals: dict, quantizers, path: Path) -> Path:
    """S with the (scale, zero point) of `quantizers` taken from R, written to `path`."""
    m = onnx.ModelProto()
    m.CopyFrom(s_model)
    names = {n for _, s, z in quantizers for n in (s, z)}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED_DATA / "efficientnet_lite0.onnx"))
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--target", default="ort-cpu", help="target profile (name or TOML path)")
    args = ap.parse_args()
    model = Path(args.model)
    t0 = time.perf_counter()
    x, y, subset, ref = start_run(model, args.calib_images)
    ref = ref.argmax(1)
    rows = []

    def row(name: str, path: Path, n: int | str) -> None:
        top, agree = evaluate(path, x, y, ref)
        rows.append([name, n, f"{top:.1f}", f"{agree:.1f}"])
        print(f"  {rows[-1]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="range_swap_") as tmp:
        work = Path(tmp)
        real = work / "real.npz"
        np.savez(real, input=x[subset])
        s_path = compile_model(model, work / "s.onnx", prior=False, target=args.target)
        sp_path = compile_model(model, work / "sp.onnx", prior=True, target=args.target)
        r_path = compile_model(model, work / "r.onnx", prior=True, target=args.target, calib=str(real))
        s_model, r_model = onnx.load(s_path), onnx.load(r_path)
        quants = activation_quantizers(s_model)
        if [q[0] for q in quants] != [q[0] for q in activation_quantizers(r_model)]:
            sys.exit("the synthetic and real compiles quantize different tensors; cannot swap ranges")
        s_vals, r_vals = _values(s_model), _values(r_model)
        row("S: synthetic, no score prior", s_path, "-")
        row("S+prior: default pipeline", sp_path, "-")
        row(f"R: {len(subset)} real images", r_path, "-")
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
        ratios = []
        for q in quants:
            (slo, shi), (rlo, rhi) = range_of(s_vals, *q[1:]), range_of(r_vals, *q[1:])
            gap = abs(np.log(max(shi - slo, 1e-12) / max(rhi - rlo, 1e-12)))
            ratios.append((gap, q, (slo, shi), (rlo, rhi)))
        for _, q, (slo, shi), (rlo, rhi) in sorted(ratios, key=lambda r: -r[0])[:args.top]:
            row(f"S, {q[0]} from R (S [{slo:.2f}, {shi:.2f}], R [{rlo:.2f}, {rhi:.2f}])",
                swapped(s_model, r_vals, [q], work / "one.onnx"), 1)
    print(f"\n### {model.name}: W8A8 {args.target} (A8 everywhere), activation ranges swapped from a "
          f"real-data compile; top-1 / agreement on the {len(x)} dev images\n")
    print(markdown_table(["model", "quantizers swapped", "top-1 %", "agreement %"], rows))
    print(f"\nload average at end: {os.getloadavg()}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
