"""An ORT-optimized transformer (com.microsoft Attention / EmbedLayerNormalization): dfq-onnx vs ORT, one run.

Users often run ONNX Runtime's transformer optimizer before quantizing: it fuses each layer's q / k / v
projections into one com.microsoft Attention (W [D, 3D]) and the embeddings + LayerNorm into
EmbedLayerNormalization. The model here is paraphrase-MiniLM-L3-v2 from its wheel, optimized with
`onnxruntime.transformers.optimizer.optimize_model(model_type="bert", opt_level=0)` (the python fusions
only; no torch needed). Rows, every output from the same optimized FP32 model:

    fp32            the optimized model
    dfq default     dfq-onnx quantize M -o q.onnx   (no flag, no data; CLI under /usr/bin/time -v)
    ort dynamic     quantize_dynamic (QInt8; DefaultTensorType float: its shape inference cannot type the
                    contrib ops' outputs and it stops without it)
    plain fp32 / plain dfq / plain ort dynamic: the same for the unoptimized export, for reference

Quality, size and latency as benchmarks/transformer.py measures them (stdlib docstring retrieval:
cosine of the pooled embedding to its own FP32's, recall@1, MRR; file MB; ORT CPU batch 8 x 128
tokens, 2 threads, all models in one interleaved run).

    python benchmarks/fused_transformer.py --work DIR [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import text_task  # noqa: E402
from act_cost import minilm_path  # noqa: E402
from common import interleaved_latency_ms, machine_info, markdown_table, time_v_figures  # noqa: E402
from text_tokens import TOKENIZER  # noqa: E402
from transformer import latency_feeds, quality  # noqa: E402


def optimize(src: Path, out: Path) -> Path:
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    model.save_model_to_file(str(out))
    return out


def dfq(src: Path, out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(src),
           "-o", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"dfq-onnx failed on {src}:\n{run.stderr[-2000:]}")
    wall, rss = time_v_figures(run.stderr)
    return {"wall": wall, "peak_rss_mb": rss / 2**20 if rss else None}


def ort_dynamic(src: Path, out: Path) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"wall": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--eval-pairs", type=int, default=200)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fused_"))
    work.mkdir(parents=True, exist_ok=True)
    plain = minilm_path()
    fused = optimize(plain, work / "fp32.onnx")
    paths, cost = {"fp32": fused, "plain fp32": plain}, {}
    for tag, src in (("", fused), ("plain ", plain)):
        paths[f"{tag}dfq default"] = work / f"{tag.strip() or 'fused'}_dfq.onnx"
        cost[f"{tag}dfq default"] = dfq(src, paths[f"{tag}dfq default"])
        paths[f"{tag}ort dynamic"] = work / f"{tag.strip() or 'fused'}_ort_dynamic.onnx"
        cost[f"{tag}ort dynamic"] = ort_dynamic(src, paths[f"{tag}ort dynamic"])
    evals, texts, _ = text_task.encoded_sets(TOKENIZER, args.eval_pairs, 0)
    fused_q = quality({k: v for k, v in paths.items() if not k.startswith("plain")}, texts, len(evals))
    plain_q = quality({k.removeprefix("plain "): v for k, v in paths.items() if k.startswith("plain")},
                      texts, len(evals))
    qual = {**fused_q, **{f"plain {k}": v for k, v in plain_q.items()}}
    ms = interleaved_latency_ms(paths, latency_feeds(), rounds=args.rounds, runs=5, warmup=2)
    print(machine_info(), f"load {os.getloadavg()[0]:.1f}; {text_task.describe(evals)}; {args.rounds} rounds")
    rows = []
    for k, p in paths.items():
        q, c = qual[k], cost.get(k, {})
        ref = ms["plain ort dynamic" if k.startswith("plain") else "ort dynamic"]
        rows.append([k, f"{q['cos_mean']:.4f} / {q['cos_min']:.4f}", q["recall@1"], q["mrr"],
                     p.stat().st_size / 1e6, ms[k], ms[k] / ref, c.get("wall", "-"),
                     c.get("peak_rss_mb", "-")])
    print(markdown_table(["model", "cos to FP32 mean / min", "recall@1", "MRR", "MB", "ORT ms (8x128)",
                          "vs ORT dynamic", "compile s", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
