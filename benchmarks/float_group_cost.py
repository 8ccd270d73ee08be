"""What one float activation group costs inside an integer model on ORT CPU: the number behind
targets/ort-cpu.toml's `[activation] element_cost` for 32 (float).

A float group in an A8 model is more than its weighted nodes running float (the `[candidates]` cost
per MAC, which the decision already counts): its elementwise readers and writers lose their integer
kernels (QLinearSigmoid, QLinearMul), ORT converts layouts around the float island (its integer
kernels run NHWC) and runs standalone Q / DQ at its edges. Those scale with the group's elements, so
the target prices them per element:

    model   conv1 (C -> C, 3x3) -> [conv1_out] -> Sigmoid, Mul (SiLU) -> conv2 (C -> C)   at H x H, batch B
    plans   all-A8;  the group of conv1_out float (conv1, Sigmoid, Mul float; conv2 stays integer)
    unit    u = T(FP32) / (B M)                  one FP32 multiply-accumulate (M: MACs per sample)
    e32     = (T(float group) - T(A8)) / (u B E)  -  macs(conv1) (c(8,32) - c(8,8)) / E

with E = C H H the group's elements per sample and c the target's per-MAC costs: the extra cost per
element of the group, in FP32-MAC units, beyond what the decision already charges for conv1's MACs.
Timing: ORT CPU, 2 threads, interleaved rounds (benchmarks/common.py), median ms.

Usage: python benchmarks/float_group_cost.py [--rounds 9] [--batch 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_latency_ms, machine_info, markdown_table  # noqa: E402
from dfq_onnx.passes.keep_float import integer_timing_model, timing_models  # noqa: E402

from dfq_onnx.core import ir  # noqa: E402
from dfq_onnx.core.options import QuantizeOptions  # noqa: E402
from dfq_onnx.core.pass_base import run_passes  # noqa: E402
from dfq_onnx.core.report import Report  # noqa: E402
from dfq_onnx.core.state import FLOAT_BITS, CompileState  # noqa: E402
from dfq_onnx.core.target import load_target  # noqa: E402
from dfq_onnx.pipeline import default_pipeline  # noqa: E402
from models import builders  # noqa: E402

SHAPES = [(16, 80), (32, 80), (64, 40), (128, 20)]      # (channels C, spatial H): 100-200 k elements


def prepared(model, target) -> CompileState:
    """The state after calibration (noise ranges), before the plan."""
    opts = QuantizeOptions(calib="noise", progress=False, use_cache=False, latency_check=False)
    src = ir.load_model(model)
    st = CompileState(graph=None, target=target, options=opts, report=Report(),
                      model_hash=ir.model_hash(src), source=src)
    passes = default_pipeline(target, opts)
    run_passes(passes[:[p.name for p in passes].index("UniformPlan")], st)
    return st


def row(c: int, h: int, batch: int, rounds: int, target) -> list:
    st = prepared(builders.conv_silu(c_in=c, c=c, c_out=c, hw=h), target)
    group = next(ag for ag in st.act_groups if "conv1_out" in ag.tensors)
    fp32, a8 = timing_models(st, batch)
    flt = integer_timing_model(st, batch, {group.id: FLOAT_BITS})
    x = np.random.default_rng(0).standard_normal((batch, c, h, h)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: ir.save_model(m, Path(tmp) / f"{k}.onnx") for k, m in
                 {"fp32": fp32, "a8": a8, "float": flt}.items()}
        ms = interleaved_latency_ms(paths, {"input": x}, rounds=rounds, runs=10, warmup=2)
    macs1 = c * c * 9 * h * h
    unit = ms["fp32"] / (batch * 2 * macs1)
    kern = macs1 * (target.cost[(8, 32)] - target.cost[(8, 8)])
    e32 = (ms["float"] - ms["a8"]) / (unit * batch * group.elements) - kern / group.elements
    return [c, h, group.elements, f"{ms['fp32']:.3f}", f"{ms['a8']:.3f}", f"{ms['float']:.3f}",
            f"{ms['float'] / ms['a8']:.3f}", f"{e32:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    target = load_target("ort-cpu")
    print(machine_info())
    rows = [row(c, h, args.batch, args.rounds, target) for c, h in SHAPES]
    print(markdown_table(["C", "H", "group elements E", "FP32 ms", "A8 ms", "group float ms",
                          "float / A8", "e32 (FP32-MAC units per element)"], rows))


if __name__ == "__main__":
    main()
