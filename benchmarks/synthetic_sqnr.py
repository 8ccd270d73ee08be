"""Synthetic calibration on models without labelled data here: W8A8 output SQNR vs FP32 (issue 3).

    python benchmarks/export_efficientnet.py            # once: /work/models/efficientnet_lite0.onnx
    pip install --no-deps rapidocr-onnxruntime rapidocr nudenet   # model files only
    python benchmarks/synthetic_sqnr.py [--only NAME] [--samples 32] [--cache-dir DIR]

Per model: dfq-onnx uniform W8A8 with activation ranges from Gaussian noise (N(0,1), as many samples
as the synthetic set), analytic (BN statistics, where the model has them) and synthetic (seed 0);
output SQNR vs the FP32 model (worst output, dB), the synthetic ranges measured on the samples only
and, as the default pipeline does, on `--views` views of each image-like sample, on two held-out
sets: synthetic samples of another seed (1) and fresh N(0,1) noise (--held-out samples each).
Synthesis time, ORT runs and rows are reported for the calibration set (0 runs when it came from
the cache; a fresh --cache-dir times it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, output_sqnr_db, session, write_input_npz  # noqa: E402
from dfq_onnx.models.corpus import corpus_models, default_input_shapes  # noqa: E402

from dfq_onnx import DfqError, quantize  # noqa: E402
from dfq_onnx import api as dfq_api  # noqa: E402

EFFICIENTNET = Path("/work/models/efficientnet_lite0.onnx")
CORPUS = ("yolov8n_320", "ppocr_mobile_v2_cls", "ppocrv4_rec", "ppocrv4_det")
# the det model's default 736 x 736 costs ~20x a 224 x 224 classifier per row; 320 x 320 is a legal
# size (multiple of 32) and keeps the benchmark to minutes
SHAPES = {"efficientnet_lite0": {"input": [1, 3, 224, 224]}, "ppocrv4_det": {"x": [1, 3, 320, 320]}}


def models() -> dict[str, tuple[Path, dict]]:
    out = {}
    if EFFICIENTNET.is_file():
        out["efficientnet_lite0"] = (EFFICIENTNET, SHAPES["efficientnet_lite0"])
    for m in corpus_models():
        if m.name in CORPUS:
            out[m.name] = (m.path, SHAPES.get(m.name) or default_input_shapes(m))
    return out


def noise(shapes: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal([n] + list(v[1:])).astype(np.float32) for k, v in shapes.items()}


def sqnr(ref_sess, q_sess, feeds: dict[str, np.ndarray], batch: int = 8) -> float:
    worst = np.inf
    refs, gots = [], []
    n = len(next(iter(feeds.values())))
    for s in range(0, n, batch):
        chunk = {k: v[s:s + batch] for k, v in feeds.items()}
        refs.append(ref_sess.run(None, chunk))
        gots.append(q_sess.run(None, chunk))
    for i in range(len(refs[0])):
        ref = np.concatenate([r[i] for r in refs])
        got = np.concatenate([g[i] for g in gots])
        if np.issubdtype(ref.dtype, np.floating):
            worst = min(worst, output_sqnr_db(ref, got))
    return worst


def bench(name: str, path: Path, shapes: dict, samples: int, held_out: int, steps: int | None,
          cache_dir: str | None, tmp: Path, views: int = 8) -> list:
    hints = {k: tuple(v) for k, v in shapes.items()}
    t0 = time.perf_counter()
    syn = dfq_api.synthesize(path, samples=samples, seed=0, input_shapes=hints, cache_dir=cache_dir,
                             steps=steps, progress=False)
    seconds = time.perf_counter() - t0
    held = dfq_api.synthesize(path, samples=held_out, seed=1, input_shapes=hints, cache_dir=cache_dir,
                              steps=steps, progress=False)
    calib_npz = write_input_npz(tmp / f"{name}_syn.npz", syn.inputs)
    evals = {"held-out synthetic": held.inputs, "noise": noise(shapes, held_out, 123)}
    ref = session(path)
    row = [name, syn.objective, syn.steps, f"{seconds:.0f}", syn.forward_passes, syn.samples_evaluated,
           f"{syn.loss_start:.3f} -> {syn.loss_end:.3f}"]
    for calib in ("noise", "analytic", str(calib_npz), "synthetic"):
        out = tmp / f"{name}_q.onnx"
        t1 = time.perf_counter()
        try:
            # the npz row: ranges on the samples only; "synthetic": the default pipeline on the same
            # (cached) samples, with --synth-views views per image-like sample
            quantize(path, output=out, calib=calib, weight_bits=8, act_bits=8, input_shapes=hints,
                     calib_samples=samples, calib_batch=8, seed=0, progress=False, synth_samples=samples,
                     synth_steps=steps, synth_views=views, cache_dir=cache_dir)
        except DfqError as exc:
            row += [f"refused: {str(exc)[:40]}"] * 2
            continue
        if calib == "synthetic":
            took = time.perf_counter() - t1
            print(f"{name}: quantize, synthetic + views (cached samples): {took:.1f} s", file=sys.stderr,
                  flush=True)
        q = session(out)
        row += [f"{sqnr(ref, q, feeds):.1f}" for feeds in evals.values()]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--held-out", type=int, default=16, help="held-out samples per evaluation set")
    ap.add_argument("--steps", type=int, default=None, help="ES steps (default: the pass's budget)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--views", type=int, default=8, help="--synth-views of the last calibration column")
    args = ap.parse_args()
    print(machine_info())
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sqnr_") as tmp:
        for name, (path, shapes) in models().items():
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            rows.append(bench(name, path, shapes, args.samples, args.held_out, args.steps, args.cache_dir,
                              Path(tmp), args.views))
            print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)
    print(f"\nW8A8 output SQNR vs FP32 (worst float output, dB); calibration sets of {args.samples} "
          f"samples, evaluation sets of {args.held_out}\n")
    head = ["model", "objective", "steps", "synth s", "ORT runs", "rows", "loss"]
    for calib in ("noise", "analytic", "synthetic (samples only)", f"synthetic ({args.views} views)"):
        head += [f"{calib} calib: on held-out synth", f"{calib} calib: on noise"]
    print(markdown_table(head, rows))
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
