"""Structure corpus: every real exported model quantizes at W8A8 and runs in ORT.

    pip install --no-deps rapidocr-onnxruntime rapidocr nudenet     # model files only
    python benchmarks/corpus.py [--calib analytic|noise] [--only NAME] [--no-shared]

The shared CIFAR-10 ResNet-20/56 (../shared/data) are appended when present (--no-shared: not).

Per model: status (or the one-line error), seconds, quantized nodes, integer kernels in ORT's optimized
graph, and the output SQNR vs FP32 on standard-normal inputs (the light models' weights are constants,
so their outputs barely depend on the input: their SQNR checks structure, not accuracy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESNET20,
    RESNET56,
    machine_info,
    markdown_table,
    optimized_op_counts,
    output_sqnr_db,
    session,
)
from dfq_onnx.models.corpus import CorpusModel, corpus_models, default_input_shapes  # noqa: E402

from dfq_onnx import DfqError, quantize  # noqa: E402

INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
                   "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
                   "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger", "QLinearSoftmax")


def _feeds(sess, shapes, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = (shapes or {}).get(inp.name) or [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_one(model, calib: str, tmp: Path) -> list:
    shapes = default_input_shapes(model)
    hints = {k: tuple(v) for k, v in (shapes or {}).items()}
    out = tmp / f"{model.name}.onnx"
    start = time.perf_counter()
    try:
        _, report = quantize(model.path, output=out, calib=calib, input_shapes=hints, calib_samples=8,
                             calib_batch=1, progress=False)
    except DfqError as exc:
        return [model.name, "refused: " + str(exc)[:90], "-", "-", "-", "-"]
    seconds = time.perf_counter() - start
    feeds = _feeds(session(str(model.path)), shapes)
    ref = session(str(model.path)).run(None, feeds)
    got = session(str(out)).run(None, feeds)
    sqnr = min(output_sqnr_db(r, g) for r, g in zip(ref, got))
    ops = optimized_op_counts(out)
    kernels = sum(v for k, v in ops.items() if k in INTEGER_KERNELS)
    quantized = len(report.layers)
    return [model.name, "ok", f"{seconds:.1f}", quantized, kernels, f"{sqnr:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", default="analytic")
    ap.add_argument("--only", default=None)
    ap.add_argument("--no-shared", action="store_true", help="leave out the shared ResNet-20/56")
    args = ap.parse_args()
    models = corpus_models()
    if not args.no_shared:
        models += [CorpusModel(p.stem, p, "shared") for p in (RESNET20, RESNET56) if p.is_file()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            if args.only and args.only not in model.name:
                continue
            rows.append(run_one(model, args.calib, Path(tmp)))
            print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    print(machine_info())
    print(f"\nW8A8, target ort-cpu, --calib {args.calib}\n")
    print(markdown_table(["model", "status", "seconds", "weighted layers", "integer kernels",
                          "output SQNR dB (worst output)"], rows))


if __name__ == "__main__":
    main()
