"""The input-range inference (dfq_onnx/synth/input_range.py) on real models with known conventions.

    python benchmarks/input_range.py [NAME=PATH:CONVENTION[:C,H,W] ...]

Every corpus / shared model found, plus the extra models given, after Normalize and FoldBatchNorm (the
graph synthesis sees). Per model: the BatchNormalizations folded (the inference is used only without
them), the convention its own package feeds (TRUTH, from each package's preprocessing), the inferred
one and the score of every candidate, log10 median |bias| / response std of the first biased layer
(0 = balanced; the pick is the smallest |score|), and the inference's wall time. The onnx "light"
models carry constant weights (ConstantOfShape 0.02): their row only shows what the rule does on a
weightless structure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SHARED_DATA, machine_info, markdown_table  # noqa: E402

from models import corpus  # noqa: E402

# The convention each model's own package feeds (its preprocessing code / config).
TRUTH = {
    "yolov8n_320": "[0, 1]",                 # nudenet: img / 255 (Ultralytics)
    "ppocrv6_det": "[-1, 1]",                # rapidocr 3.x config.yaml Det: mean 0.5, std 0.5
    "ppocrv6_rec": "[-1, 1]",                # rapidocr rec: (x / 255 - 0.5) / 0.5
    "ppocrv4_det": "standardized",           # rapidocr_onnxruntime det: ImageNet mean / std
    "ppocrv4_rec": "[-1, 1]",
    "ppocr_mobile_v2_cls": "[-1, 1]",
    "resnet20_cifar10": "standardized", "resnet56_cifar10": "standardized",
    "efficientnet_lite0": "standardized",    # shared/README.md: ImageNet mean / std
}
SHARED = ("resnet20_cifar10", "resnet56_cifar10", "efficientnet_lite0")


def _graph(path: str, shapes: dict):
    from dfq_onnx.passes.fold_bn import FoldBatchNorm
    from dfq_onnx.passes.normalize import Normalize

    from dfq_onnx.core import ir
    from dfq_onnx.core.options import QuantizeOptions
    from dfq_onnx.core.pass_base import run_passes
    from dfq_onnx.core.report import Report
    from dfq_onnx.core.state import CompileState
    from dfq_onnx.core.target import load_target

    state = CompileState(graph=None, target=load_target("ort-cpu"), report=Report(), model_hash="",
                         options=QuantizeOptions(input_shapes=shapes), source=ir.load_model(path))
    run_passes([Normalize(), FoldBatchNorm()], state)
    return state.graph, len(state.bn_stats)


def row(name: str, path: str, truth: str, shapes: dict) -> list:
    from dfq_onnx.synth.input_range import infer_range
    from dfq_onnx.synth.runner import resolve_shapes

    graph, bns = _graph(path, shapes)
    inp = graph.inputs[0].name
    per_sample = resolve_shapes(graph, shapes)[inp]
    start = time.perf_counter()
    r = infer_range(graph, inp, per_sample)
    seconds = time.perf_counter() - start
    scores = ", ".join(f"{k} {v:+.2f}" for k, v in r.scores.items())
    ok = "-" if truth in ("?", "const weights") else ("yes" if r.convention == truth else "no")
    return [name, bns, truth, r.convention or "(abstains)", ok, scores, f"{seconds:.1f}"]


def models(extra: list[str]) -> list[tuple[str, str, str, dict]]:
    out = []
    for m in corpus.corpus_models():
        shapes = {k: tuple(v) for k, v in (corpus.default_input_shapes(m) or {}).items()}
        truth = TRUTH.get(m.name, "const weights" if "light" in str(m.path) else "?")
        out.append((m.name, str(m.path), truth, shapes))
    out += [(n, str(SHARED_DATA / f"{n}.onnx"), TRUTH[n], {}) for n in SHARED
            if (SHARED_DATA / f"{n}.onnx").exists()]
    for spec in extra:
        name, rest = spec.split("=", 1)
        path, truth, *shape = rest.split(":")
        shapes = {"__first__": (1, *map(int, shape[0].split(",")))} if shape else {}
        out.append((name, path, truth, shapes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("extra", nargs="*", help="NAME=PATH:CONVENTION[:C,H,W] (CONVENTION as in the table)")
    args = ap.parse_args()
    rows = []
    for name, path, truth, shapes in models(args.extra):
        if "__first__" in shapes:
            import onnx
            first = next(i.name for i in onnx.load(path, load_external_data=False).graph.input)
            shapes = {first: shapes["__first__"]}
        rows.append(row(name, path, truth, shapes))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(machine_info())
    print(markdown_table(["model", "BNs folded", "package feeds", "inferred", "right",
                          "scores (log10 |b| / std)", "s"], rows))


if __name__ == "__main__":
    main()
