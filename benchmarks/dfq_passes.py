"""Ablation of the data-free accuracy passes (issue 7): CLE, high-bias absorption, bias correction, DF-MPC.

    python benchmarks/dfq_passes.py [--models resnet20,resnet56] [--plans w4,w3,mixed4]
                                    [--configs base,cle,absorb,bc,dfmpc,bc+dfmpc] [--effnet PATH]
                                    [--effnet-samples 32] [--results FILE.json]

(a) ResNet-20/56 (../shared/data): top-1 on the 10,000 CIFAR-10 test images for uniform W4A8, W3A8
    and the mixed plan at `--avg-weight-bits 4` (the default allocator, synthetic scoring samples),
    each pass off/on (`dfq_onnx.quantize(..., cle=..., bias_absorption=..., bias_correction=...,
    dfmpc=...)`, analytic activation ranges, target ort-cpu).
(b) EfficientNet-Lite0 (ImageNet, depthwise): output SQNR vs FP32 at W4A8 and W8A8 on synthetic samples
    (`dfq_onnx.synthesize`), with and without the passes.

Rows are appended to `--results` (JSON) as they finish, and rows already there are not re-run, so an
interrupted run resumes. The markdown tables are printed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, load_cifar, machine_info, markdown_table, output_sqnr_db, session, top1  # noqa: E402

import dfq_onnx  # noqa: E402
from dfq_onnx.core import ir  # noqa: E402

CONFIGS = {"base": {}, "cle": {"cle": True}, "absorb": {"bias_absorption": True},
           "bc": {"bias_correction": True}, "dfmpc": {"dfmpc": True},
           "bc+dfmpc": {"bias_correction": True, "dfmpc": True},
           "cle+bc": {"cle": True, "bias_correction": True},
           "cle-act": {"cle": True, "cle_criterion": "activations"},
           "cle-act+bc": {"cle": True, "cle_criterion": "activations", "bias_correction": True}}
OFF = {"cle": False, "bias_absorption": False, "bias_correction": False, "dfmpc": False,
       "cle_criterion": "weights"}
PLANS = {"w4": {"weight_bits": 4, "act_bits": 8}, "w3": {"weight_bits": 3, "act_bits": 8},
         "w8": {"weight_bits": 8, "act_bits": 8}, "mixed4": {"avg_weight_bits": 4.0, "act_bits": 8}}


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, rows: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1, sort_keys=True))
    tmp.replace(path)


def _counts(report) -> dict:
    out = {}
    for key, field in (("cross_layer_equalization", "pairs"), ("bias_absorption", "pairs"),
                       ("bias_correction", "layers"), ("dfmpc", "pairs")):
        if key in report.notes:
            out[key] = len(report.notes[key][field])
    alloc = report.notes.get("allocation")
    if alloc:
        out["avg_weight_bits"] = round(alloc["avg_weight_bits"], 3)
    return out


def quantize_to(model: Path, out: Path, plan: str, config: str, **extra):
    start = time.perf_counter()
    qm, report = dfq_onnx.quantize(str(model), progress=False, **PLANS[plan], **{**OFF, **CONFIGS[config]},
                                   **extra)
    ir.save_model(qm, out)
    return time.perf_counter() - start, _counts(report)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resnet_rows(models, plans, configs, results: Path, rows: dict) -> None:
    """Top-1 per (model, plan, config); a model byte-identical to an earlier row's (a pass that found
    nothing to change) reuses its accuracy instead of re-running the 10,000 images."""
    x, y = load_cifar("test")
    seen = {r["sha256"]: r["top1"] for r in rows.values() if "sha256" in r}
    with tempfile.TemporaryDirectory(prefix="dfq_passes_") as td:
        for name in models:
            fp32 = SHARED_DATA / f"{name}_cifar10.onnx"
            key = f"{name}|fp32"
            if key not in rows:
                rows[key] = {"top1": top1(session(fp32), x, y)}
                _save(results, rows)
            for plan in plans:
                for config in configs:
                    key = f"{name}|{plan}|{config}"
                    if key in rows:
                        continue
                    out = Path(td) / f"{name}_{plan}_{config}.onnx"
                    seconds, counts = quantize_to(fp32, out, plan, config)
                    digest = _digest(out)
                    acc = seen[digest] if digest in seen else top1(session(out), x, y)
                    seen[digest] = acc
                    rows[key] = {"top1": acc, "compile_s": round(seconds, 1), "sha256": digest, **counts}
                    _save(results, rows)
                    logging.info("%s %s %s: %.2f (%s, %.0fs)", name, plan, config, acc, counts, seconds)


def effnet_rows(path: Path, plans, configs, n: int, results: Path, rows: dict, npz: str | None) -> None:
    """SQNR of the logits vs FP32 on synthetic samples (`npz` from `dfq-onnx synthesize`, else generated
    here) and on N(0, 1) noise."""
    key = f"effnet|samples{n}"
    samples_path = Path(npz) if npz else results.with_name(f"effnet_synth_{n}.npz")
    if not samples_path.is_file():
        start = time.perf_counter()
        from dfq_onnx.api import synthesize

        res = synthesize(str(path), output=str(samples_path), samples=n, progress=False)
        rows[key] = {"seconds": round(time.perf_counter() - start, 1), "objective": res.objective,
                     "loss_start": res.loss_start, "loss_end": res.loss_end}
        _save(results, rows)
    with np.load(samples_path) as z:
        feeds = {"input": z["input"]}
    noise = {"input": np.random.default_rng(0).standard_normal(feeds["input"].shape).astype(np.float32)}
    ref, ref_noise = session(path).run(None, feeds)[0], session(path).run(None, noise)[0]
    with tempfile.TemporaryDirectory(prefix="dfq_passes_") as td:
        for plan in plans:
            for config in configs:
                key = f"effnet|{plan}|{config}"
                if key in rows:
                    continue
                out = Path(td) / f"effnet_{plan}_{config}.onnx"
                seconds, counts = quantize_to(path, out, plan, config)
                sess = session(out)
                test, test_noise = sess.run(None, feeds)[0], sess.run(None, noise)[0]
                agree = float(np.mean(test.argmax(1) == ref.argmax(1)) * 100)
                rows[key] = {"sqnr_db": output_sqnr_db(ref, test), "top1_agreement": agree,
                             "sqnr_noise_db": output_sqnr_db(ref_noise, test_noise),
                             "compile_s": round(seconds, 1), **counts}
                _save(results, rows)
                logging.info("effnet %s %s: %.2f dB (%s)", plan, config, rows[key]["sqnr_db"], counts)


def tables(rows: dict) -> str:
    out = []
    models = sorted({k.split("|")[0] for k in rows if k.split("|")[0] != "effnet"})
    for name in models:
        fp32 = rows.get(f"{name}|fp32", {}).get("top1")
        plans = [p for p in PLANS if any(k.startswith(f"{name}|{p}|") for k in rows)]
        configs = [c for c in CONFIGS if any(k.endswith(f"|{c}") and k.startswith(name) for k in rows)]
        head = ["plan"] + [c for c in configs]
        body = []
        for p in plans:
            base = rows.get(f"{name}|{p}|base", {}).get("top1")
            cells = []
            for c in configs:
                r = rows.get(f"{name}|{p}|{c}")
                if r is None:
                    cells.append("-")
                elif c == "base" or base is None:
                    cells.append(f"{r['top1']:.2f}")
                else:
                    cells.append(f"{r['top1']:.2f} ({r['top1'] - base:+.2f})")
            body.append([p] + cells)
        out.append(f"**{name}** (FP32 {fp32:.2f})\n\n" + markdown_table(head, body))
    eff = {k: v for k, v in rows.items() if k.startswith("effnet|") and "samples" not in k}
    if eff:
        plans = [p for p in PLANS if any(k.startswith(f"effnet|{p}|") for k in eff)]
        configs = [c for c in CONFIGS if any(k.endswith(f"|{c}") for k in eff)]
        body = [[p] + [(f"{eff[f'effnet|{p}|{c}']['sqnr_db']:.2f} / "
                        f"{eff[f'effnet|{p}|{c}'].get('sqnr_noise_db', float('nan')):.2f} dB, "
                        f"{eff[f'effnet|{p}|{c}']['top1_agreement']:.1f} %")
                       if f"effnet|{p}|{c}" in eff else "-" for c in configs] for p in plans]
        out.append("**efficientnet_lite0** (logit SQNR vs FP32 on synthetic / noise samples, top-1 agreement "
                   "with FP32 on the synthetic samples)\n\n"
                   + markdown_table(["plan"] + configs, body))
    return "\n\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--plans", default="w4,w3,mixed4")
    ap.add_argument("--configs", default="base,cle,absorb,bc,dfmpc,bc+dfmpc")
    ap.add_argument("--effnet", default=None, help="EfficientNet-Lite0 ONNX path (skipped when absent)")
    ap.add_argument("--effnet-plans", default="w4,w8")
    ap.add_argument("--effnet-configs", default="base,cle,absorb,bc,cle+bc")
    ap.add_argument("--effnet-samples", type=int, default=32)
    ap.add_argument("--effnet-npz", default=None, help="synthetic samples from `dfq-onnx synthesize`")
    ap.add_argument("--results", default="dfq_passes_results.json")
    ap.add_argument("--tables-only", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dfq_onnx").setLevel(logging.WARNING)
    results = Path(args.results)
    rows = _load(results)
    if not args.tables_only:
        models = [m for m in args.models.split(",") if m]
        if models:
            resnet_rows(models, args.plans.split(","), args.configs.split(","), results, rows)
        if args.effnet and Path(args.effnet).is_file():
            effnet_rows(Path(args.effnet), args.effnet_plans.split(","), args.effnet_configs.split(","),
                        args.effnet_samples, results, rows, args.effnet_npz)
    print(machine_info())
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
