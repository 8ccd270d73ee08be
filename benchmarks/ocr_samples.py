"""Which calibration samples make PP-OCRv4 rec work: real rendered lines vs the synthesis variants (issue 17).

    python benchmarks/ocr_samples.py [--lines 300] [--samples 64] [--with-es]

Uniform W8A8 and W8A16 (`--act-bits`, so the activation-precision choice does not mask the ranges),
activation ranges from each calibration set, rec line exact match / CER through RapidOCR's recognizer
on `--lines` rendered lines (benchmarks/ocr_data.py, seed 0):
  real       64 rendered lines of another seed (1000), RapidOCR's preprocessing at width 320;
  pink-bn    the previous default: 1/f fields searched by ES on objective "bn" (BN statistics);
  drawings   the default for image recognizers: line drawings picked by the model (synth/strokes.py);
  drawings+es  the same refined by the budgeted ES steps of objective "bn+sequence" (--with-es).
Synthetic sets are measured with the pipeline's 8 views per sample, as `--calib synthetic` does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ocr_data  # noqa: E402
from common import machine_info, markdown_table  # noqa: E402
from dfq_onnx.models.corpus import corpus_model  # noqa: E402
from ocr import rec_input, timed  # noqa: E402

SHAPE = (1, 3, 48, 320)


def synthetic_set(objective: str, samples: int, steps: int | None, out: Path) -> float:
    """Samples of `objective` with the pipeline's views written to `out`; returns the search seconds."""
    from dfq_onnx.passes.fold_bn import FoldBatchNorm
    from dfq_onnx.passes.normalize import Normalize
    from dfq_onnx.passes.synthesize import SynthesisOptions, synthesize

    from dfq_onnx.core import ir
    from dfq_onnx.core.options import QuantizeOptions
    from dfq_onnx.core.pass_base import run_passes
    from dfq_onnx.core.report import Report
    from dfq_onnx.core.state import CompileState
    from dfq_onnx.core.target import load_target
    from dfq_onnx.synth.augment import with_views

    src = ir.load_model(str(corpus_model("ppocrv4_rec").path))
    state = CompileState(graph=None, target=load_target("ort-cpu"), report=Report(), source=src,
                         options=QuantizeOptions(input_shapes={"x": SHAPE}, progress=False),
                         model_hash=ir.model_hash(src))
    run_passes([Normalize(), FoldBatchNorm()], state)
    start = time.perf_counter()
    opts = SynthesisOptions(samples=samples, steps=steps, objective=objective, use_cache=False,
                            progress=False)
    result = synthesize(state.graph, state.bn_stats, opts, state.model_hash, {"x": SHAPE})
    np.savez(out, x=with_views({"x": result.inputs["x"]}, 8, 0)["x"])
    return time.perf_counter() - start


def recognize(model: str, lines) -> list[str]:
    import rapidocr_onnxruntime
    import yaml
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

    cfg = yaml.safe_load((Path(rapidocr_onnxruntime.__file__).parent / "config.yaml").read_text())["Rec"]
    res, _ = TextRecognizer({**cfg, "model_path": model})(lines)
    return [r[0] for r in res]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--with-es", action="store_true")
    ap.add_argument("--work", default="/work/assets/ocr/samples")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rec = str(corpus_model("ppocrv4_rec").path)
    charset = ocr_data.charset(Path(rec))
    print(machine_info())
    lines, texts = ocr_data.line_set(args.lines, 0, charset)
    calib, _ = ocr_data.line_set(64, 1000, charset)
    np.savez(work / "real.npz", x=np.stack([rec_input(im) for im in calib]))
    sets = {"real": None, "pink-bn": ("bn", None), "drawings": ("bn+sequence", None)}
    if args.with_es:
        sets["drawings+es"] = ("bn+sequence", 64)
    seconds = {}
    for name, spec in sets.items():
        if spec is not None:
            seconds[name] = synthetic_set(spec[0], args.samples, spec[1], work / f"{name}.npz")
    hyps = recognize(rec, lines)
    rows = [["FP32", "-", ocr_data.exact(texts, hyps), ocr_data.cer(texts, hyps), "-", "-"]]
    for name in sets:
        for bits in (8, 16):
            out = work / f"{name}_a{bits}.onnx"
            shape = "x:" + ",".join(map(str, SHAPE))
            cost = timed([str(Path(sys.executable).parent / "dfq-onnx"), "-q", "quantize", rec, "-o",
                          str(out), "--input-shape", shape, "--calib", str(work / f"{name}.npz"),
                          "--act-bits", str(bits)])
            hyps = recognize(str(out), lines)
            rows.append([name, f"W8A{bits}", ocr_data.exact(texts, hyps), ocr_data.cer(texts, hyps),
                         round(seconds.get(name, 0.0)), round(cost["wall_s"])])
    print(markdown_table(["calibration set", "plan", "exact %", "CER %", "synthesis s", "compile s"], rows))


if __name__ == "__main__":
    main()
