"""PP-OCRv4 rec's attention neck: dynamic int8 MatMuls (ort-cpu's [forms]) or static Q/DQ (issue 14/17).

    python benchmarks/rec_forms.py [--lines 500] [--seeds 0,1,2,3,7] [--work DIR]

Issue 14 asks for no float op between Q/DQ pairs that ORT's own output runs in integer; PP-OCRv4 rec's
two-block attention neck (SVTR global mixing: LayerNorm -> qkv MatMul -> q.k^T -> Softmax -> .v -> proj,
MLP) is where the default output has them: on ort-cpu every MatMul with a constant weight takes the
target's first [forms] candidate (W8A8-dyn: DynamicQuantizeMatMul), so the neck's LayerNorm, residual
Adds, Softmax and activation x activation MatMuls stay float, where ORT quantize_static's output runs
QLinearMatMul / QLinearSoftmax / QLinearAdd. This script measures the other choice side by side:

  fp32     the shipped model;
  ort      onnxruntime quantize_static (QDQ, per-channel, MinMax) on 64 real rendered lines;
  default  `dfq-onnx quantize REC --input-shape x:1,3,48,320` (data-free; since session 14 each MatMul
           with a form is static or its form as the activation decision scores it; before, every one
           took its form: `--given "dynamic=OLD.onnx"` reads such an output beside the others);
  static   the same with the ort-cpu profile minus its [forms] section (every MatMul static Q/DQ);
  static, --smooth   the same with the outlier migration of passes/smooth.py (it applies where its
           output score says so; `cmp` says whether it changed the output).

Per config: compile wall / peak RSS (`/usr/bin/time -v`), line exact match and CER through RapidOCR's
recognizer on `--lines` rendered lines per seed of `--seeds` (benchmarks/ocr_data.py; seed 0 is
benchmarks/ocr.py's acceptance set), lines the config reads right where `--paired-vs` (default: `default`)
does not and the reverse (paired, over all seeds, with the two-sided sign test's p: a perturbation of the
model flips lines both ways -- FP32 vs the default +86 -73 of 2500 -- so one 500-line set resolves nothing
below ~1 point), ORT latency (interleaved medians, batch 1 and 32, 2 threads) and the float ops ORT's
optimized graph runs between a DequantizeLinear and a QuantizeLinear beyond those of ORT's own output
(dfq_onnx.backends.fusion).
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ocr  # noqa: E402
import ocr_data  # noqa: E402
from common import interleaved_latency_ms, machine_info, markdown_table  # noqa: E402
from dfq_onnx.models.corpus import corpus_model  # noqa: E402

from dfq_onnx.backends.fusion import float_ops_between_qdq  # noqa: E402

TARGETS = Path(__file__).resolve().parents[1] / "targets"


def static_target(work: Path) -> Path:
    """ort-cpu.toml without its [forms] section: MatMuls are statically quantized like convolutions."""
    text = (TARGETS / "ort-cpu.toml").read_text()
    path = work / "ort-cpu-static.toml"
    path.write_text(text[:text.index("[forms]")] + text[text.index("[latency]"):])
    return path


def compile_all(src: str, work: Path, charset: set[str], smooth: bool = True,
                given: dict | None = None) -> tuple[dict, dict]:
    dfq = str(Path(sys.executable).parent / "dfq-onnx")
    base = [dfq, "-q", "quantize", src, "--input-shape", ocr.SHAPES["rec"], "--no-cache"]
    paths, costs = {"fp32": src, **(given or {})}, {}
    calib = ocr.ort_calib(charset, 1000, work)["rec"]
    paths["ort"] = str(work / "ort_rec.onnx")
    costs["ort"] = ocr.timed([sys.executable, ocr.__file__, "--ort-quantize", src, str(calib), paths["ort"]])
    static = ["--target", str(static_target(work))]
    rows = (("default", []), ("static", static), *([("static, --smooth", [*static, "--smooth"])] * smooth))
    for name, extra in rows:
        paths[name] = str(work / f"{name.replace(', ', '_').replace('--', '')}_rec.onnx")
        costs[name] = ocr.timed([*base, "-o", paths[name], *extra])
    if smooth:
        same = Path(paths["static"]).read_bytes() == Path(paths["static, --smooth"]).read_bytes()
        print(f"static --smooth {'byte-identical to' if same else 'differs from'} static", flush=True)
    return paths, costs


def sign_test_p(plus: int, minus: int) -> float:
    """Two-sided exact sign test of `plus` vs `minus` discordant lines (H0: either way equally likely)."""
    n, k = plus + minus, min(plus, minus)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2 * tail)


def paired(right: np.ndarray, base: np.ndarray) -> str:
    plus, minus = int(np.sum(right & ~base)), int(np.sum(~right & base))
    return f"+{plus} -{minus} (p {sign_test_p(plus, minus):.2f})"


def read_lines(paths: dict, lines, texts) -> dict:
    src = {k: str(corpus_model(v).path) for k, v in ocr.MODELS.items()}
    out = {}
    for name, rec in paths.items():
        eng = ocr.engine({**src, "rec": rec})
        hyps = [r[0] for r in eng.text_rec(lines)[0]]
        out[name] = {"hyps": hyps, "exact": ocr_data.exact(texts, hyps), "cer": ocr_data.cer(texts, hyps)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--seeds", default="0,1,2,3,7")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--work", default=None, help="keep the outputs here (default: a temporary directory)")
    ap.add_argument("--given", action="append", default=[], metavar="NAME=PATH",
                    help="an output compiled elsewhere, read beside the others (an earlier main's default)")
    ap.add_argument("--paired-vs", default="default", help="the config the paired counts compare with")
    ap.add_argument("--no-smooth", action="store_true", help="skip the 'static, --smooth' compile")
    args = ap.parse_args()
    given = dict(g.split("=", 1) for g in args.given)
    print(machine_info(), flush=True)
    src = str(corpus_model(ocr.MODELS["rec"]).path)
    charset = ocr_data.charset(Path(src))
    with tempfile.TemporaryDirectory(prefix="dfq-recforms-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths, costs = compile_all(src, work, charset, not args.no_smooth, given)
        reads = collections.defaultdict(dict)
        for seed in (int(s) for s in args.seeds.split(",")):
            lines, texts = ocr_data.line_set(args.lines, seed, charset)
            for name, r in read_lines(paths, lines, texts).items():
                norm = ocr_data.normalize
                right = np.array([norm(h) == norm(t) for h, t in zip(r["hyps"], texts)])
                reads[name][seed] = (r["exact"], r["cer"], right)
        rng = np.random.default_rng(0)
        feeds = {b: {"x": rng.uniform(-1, 1, (b, 3, 48, 320)).astype(np.float32)} for b in (1, 32)}
        lat = {b: interleaved_latency_ms(paths, feeds[b], rounds=args.rounds, runs=5 if b == 1 else 2,
                                         warmup=2) for b in (1, 32)}
        ort_ops = float_ops_between_qdq(paths["ort"])
        rows = []
        for name in paths:
            beyond = float_ops_between_qdq(paths[name]) - ort_ops if name != "fp32" else collections.Counter()
            per_seed = [f"{e:.1f} / {c:.2f}" for e, c, _ in reads[name].values()]
            both = [np.concatenate([r for _, _, r in reads[k].values()]) for k in (name, args.paired_vs)]
            cost = costs.get(name)
            rows.append([name, "; ".join(per_seed), paired(*both),
                         f"{cost['wall_s']:.0f} s / {cost['rss_mb'] / 1024:.2f} GB" if cost else "-",
                         f"{lat[1][name]:.1f} / {lat[32][name]:.0f}",
                         f"{lat[1][name] / lat[1]['ort']:.2f} / {lat[32][name] / lat[32]['ort']:.2f}",
                         ", ".join(f"{k} {v}" for k, v in sorted(beyond.items())) or "-"])
        seeds = ", ".join(f"seed {s}" for s in args.seeds.split(","))
        print(markdown_table(["config", f"exact % / CER % ({seeds}; {args.lines} lines each)",
                              f"lines right vs {args.paired_vs} (+ / -, all seeds)",
                              "compile wall / peak RSS",
                              "ms b1 / b32", "vs ORT b1 / b32", "float ops ORT runs int"], rows))


if __name__ == "__main__":
    main()
