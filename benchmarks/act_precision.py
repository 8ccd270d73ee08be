"""Activation precision per group (issues 15 / 17): the default plan vs uniform W8A8, FP32 and weight-only.

For each model, compiled by the CLI in a subprocess (`/usr/bin/time -v`: wall, peak RSS):

    w8a8      --act-bits 8          the uniform plan (what the default was before)
    default   (no flag)             A8 except the outlier groups the target's cost allows to raise
    w8a32     --act-bits 32         every activation float: weight-only quantization

Reported: which activation groups the default changed, the tool's own output loss (all-A8 -> chosen, on
its scoring samples), a task-level check on held-out real data, and ORT CPU latency (2 threads,
interleaved rounds, FP32 in the same run).

  minilm_l3    paraphrase-MiniLM-L3-v2; --calib: 32 real sentences (benchmarks/text_tokens.py, stdlib
               docstrings); check: mean / min cosine of the pooled embedding ('461') to FP32 on 64 other
               sentences; latency at 8 x 128 tokens
  ppocrv4_rec  PP-OCRv4 rec, --input-shape x:1,3,48,320, data-free (synthetic); check: on real rendered
               text lines (REC_LINES, an npz 'x' [N,3,48,320]): greedy CTC decode identical to FP32's
               (share of lines) and mean per-step KL(p_fp32 || p_q); latency at batch 8

    python benchmarks/act_precision.py --models minilm_l3,ppocrv4_rec --work DIR [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from act_cost import minilm_path  # noqa: E402
from common import interleaved_latency_ms, machine_info, markdown_table, session, time_v_figures  # noqa: E402

CONFIGS = {"w8a8": ["--act-bits", "8"], "default": [], "w8a32": ["--act-bits", "32"]}


def compile_cli(model: Path, out: Path, args: list[str]) -> dict:
    """Run `dfq-onnx quantize` under /usr/bin/time -v; wall seconds, peak RSS (MB) and the report."""
    report = out.with_suffix(".json")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(model),
           "-o", str(out), "--report", str(report), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[act_precision] compile failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    wall, rss = time_v_figures(res.stderr)
    return {"wall_s": wall, "rss_mb": rss / (1 << 20),
            "report": json.loads(report.read_text()), "stdout": res.stdout.strip()}


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def minilm_check(paths: dict, eval_npz: Path) -> dict:
    d = np.load(eval_npz)
    feeds = {k: d[k] for k in d.files}
    ref = session(paths["fp32"]).run(["461"], feeds)[0]
    out = {}
    for k, p in paths.items():
        c = _cos(ref, session(p).run(["461"], feeds)[0])
        out[k] = f"cos {c.mean():.4f} (min {c.min():.4f})"
    return out


def ctc_decode(probs: np.ndarray) -> list[tuple[int, ...]]:
    best = probs.argmax(-1)
    out = []
    for row in best:
        seq, prev = [], -1
        for t in row:
            if t != prev and t != 0:
                seq.append(int(t))
            prev = t
        out.append(tuple(seq))
    return out


def _rec_run(path: str, x: np.ndarray) -> np.ndarray:
    s = session(path)
    return np.concatenate([s.run(None, {"x": x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def rec_check(paths: dict, lines_npz: Path) -> dict:
    x = np.load(lines_npz)["x"]
    ref = _rec_run(paths["fp32"], x)
    want = ctc_decode(ref)
    out = {}
    for k, p in paths.items():
        got = _rec_run(p, x)
        same = np.mean([a == b for a, b in zip(ctc_decode(got), want)])
        kl = np.mean(np.sum(ref * (np.log(np.maximum(ref, 1e-12)) - np.log(np.maximum(got, 1e-12))), -1))
        out[k] = f"decode = FP32 {100 * same:.1f} %, KL/step {kl:.4f}"
    return out


def setup(name: str, work: Path, args) -> tuple[Path, list[str], dict, object]:
    """(model, compile args, latency feeds, check) of a model."""
    rng = np.random.default_rng(0)
    if name == "minilm_l3":
        from text_tokens import sentences, tokenize

        pool = list(sentences())[::7]
        np.savez(work / "calib.npz", **tokenize(pool[:32], 128))
        np.savez(work / "eval.npz", **tokenize(pool[32:96], 128))
        ids = rng.integers(1000, 20000, (8, 128)).astype(np.int64)
        return (minilm_path(), ["--calib", str(work / "calib.npz")],
                {"input_ids": ids, "attention_mask": np.ones_like(ids)},
                lambda paths: minilm_check(paths, work / "eval.npz"))
    from models.corpus import corpus_model

    return (corpus_model("ppocrv4_rec").path, ["--input-shape", "x:1,3,48,320"],
            {"x": rng.standard_normal((8, 3, 48, 320)).astype(np.float32)},
            (lambda paths: rec_check(paths, Path(args.rec_lines))) if args.rec_lines else (lambda paths: {}))


def run_model(name: str, work: Path, args) -> list[list]:
    model, extra, feeds, check = setup(name, work, args)
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    res, paths = {}, {"fp32": str(model)}
    for cfg, flags in CONFIGS.items():
        out = work / f"{name}_{cfg}.onnx"
        res[cfg] = compile_cli(model, out, [*extra, *cache, *flags])
        paths[cfg] = str(out)
    ms = interleaved_latency_ms(paths, feeds, rounds=args.rounds, runs=5, warmup=2)
    quality = check(paths)
    notes = res["default"]["report"]["notes"].get("activations", {})
    changed = [(", ".join(o["tensors"]), o["choice"]) for o in notes.get("outliers", {}).values()
               if o["choice"] != notes.get("base", 8)]
    print(f"\n{name}: {res['default']['stdout']}")
    for tensors, bits in changed:
        print(f"  {'float' if bits == 32 else f'A{bits}'}: {tensors}")
    m = notes.get("measured", {})
    rows = [[name, "fp32", "-", "-", "-", quality.get("fp32", "-"), ms["fp32"], 1.0]]
    for cfg in CONFIGS:
        loss = {"w8a8": m.get("all_base"), "default": m.get("chosen")}.get(cfg)
        rows.append([name, cfg, res[cfg]["wall_s"], res[cfg]["rss_mb"],
                     "-" if loss is None else f"{loss:.4g}", quality.get(cfg, "-"), ms[cfg],
                     ms[cfg] / ms["fp32"]])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm_l3,ppocrv4_rec")
    ap.add_argument("--work", default=None, help="keep outputs here (default: a temporary directory)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--rec-lines", default=os.environ.get("REC_LINES"),
                    help="npz with 'x' [N,3,48,320] real text lines for the rec check")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="act_precision_") as td:
        work = Path(args.work or td)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            rows += run_model(name, work, args)
    print(machine_info(), f"load {os.getloadavg()[0]:.1f}")
    print(markdown_table(["model", "config", "compile s", "peak RSS MB", "tool loss (scoring samples)",
                          "held-out check", "ORT ms", "vs FP32"], rows))


if __name__ == "__main__":
    main()
