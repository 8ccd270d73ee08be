"""Large models: load -> quantize -> emit a generated model above 2 GB (external data), peak memory.

    python benchmarks/large_model.py [--gb 2.5] [--dir /tmp/dfq-large] [--keep]

The model is a chain of 3x3 convolutions (C -> C, C = 2048, tiny 4x4 maps) each followed by
BatchNormalization and ReLU; its weights are written straight into one external-data file, so the
generator never holds the model in memory either. `dfq-onnx quantize` (default pipeline, W8A8,
analytic ranges) then runs in a child process; its peak resident memory is read from
`getrusage(RUSAGE_CHILDREN).ru_maxrss` (what `/usr/bin/time -v` reports as "Maximum resident set
size"). The quantized model is run in ORT next to the FP32 one on Gaussian inputs (SQNR).

The budget to beat: the FP32 weights once (the folded weights are new arrays; the memory-mapped
originals are released layer by layer) plus the int8 output; loading the proto with its data and
importing it into the graph would hold the weights at least twice.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, output_sqnr_db, session  # noqa: E402

C, HW = 2048, 4


def _external(name: str, shape, offset: int, length: int) -> onnx.TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def generate(directory: Path, gb: float, seed: int = 0) -> Path:
    """Write model.onnx + weights.bin (about `gb` GB) and return the model path."""
    rng = np.random.default_rng(seed)
    per_layer = C * C * 9 * 4
    layers = max(1, round(gb * 1e9 / per_layer))
    directory.mkdir(parents=True, exist_ok=True)
    nodes, inits, x = [], [], "input"
    with open(directory / "weights.bin", "wb") as fh:
        for i in range(layers):
            w = rng.standard_normal((C, C, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / (C * 9)))
            inits.append(_external(f"conv{i}.weight", w.shape, fh.tell(), w.nbytes))
            fh.write(w.tobytes())
            del w
            bn = [rng.uniform(0.5, 1.5, C), rng.normal(0, 0.3, C), rng.normal(0, 0.3, C),
                  rng.uniform(0.5, 2, C)]
            names = [f"bn{i}.{p}" for p in ("scale", "bias", "mean", "var")]
            inits += [onnx.numpy_helper.from_array(v.astype(np.float32), n) for n, v in zip(names, bn)]
            nodes += [helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], name=f"conv{i}",
                                       pads=[1] * 4),
                      helper.make_node("BatchNormalization", [f"c{i}", *names], [f"b{i}"], name=f"bn{i}"),
                      helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}")]
            x = f"r{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("input", 1, ["N", C, HW, HW])],
                              [helper.make_tensor_value_info("output", 1, ["N", C, HW, HW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _rss_gb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1e6 for line in text.splitlines() if line.startswith("VmRSS")), 0.0)


def quantize_child(model: Path, out: Path, report: bool) -> tuple[float, float, str, dict]:
    """(seconds, peak RSS GB, last line, peak RSS GB per phase) of `dfq-onnx quantize` in a child.

    The overall peak is `getrusage(RUSAGE_CHILDREN).ru_maxrss`; the per-phase peaks come from sampling
    /proc/<pid>/status every 50 ms and attributing each sample to the pass running then (the pass log
    prints one line as each pass ends; 'load' is before the first, 'write' after the last).
    """
    cmd = [sys.executable, "-m", "dfq_onnx.cli", "quantize", str(model), "-o", str(out)]
    if report:
        cmd += ["--report", str(out.with_suffix(".json"))]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    names = ["Normalize", "FoldBatchNorm", "FindQuantGroups", "AnalyticRanges", "Calibrate", "UniformPlan",
             "EmitQDQ"]
    done: list[str] = []
    err_lines: list[str] = []

    def read():
        for line in proc.stderr:
            err_lines.append(line)
            if line.split() and line.split()[0] in names:
                done.append(line.split()[0])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    phases: dict[str, float] = {}
    while proc.poll() is None:
        phase = names[len(done)] if len(done) < len(names) else "check + report + write"
        phase = "load + Normalize" if phase == "Normalize" else phase
        phases[phase] = max(phases.get(phase, 0.0), _rss_gb(proc.pid))
        time.sleep(0.05)
    reader.join()
    out_text = proc.stdout.read()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        return seconds, peak_kb / 1e6, "FAILED: " + "".join(err_lines).strip().splitlines()[-1], phases
    return seconds, peak_kb / 1e6, out_text.strip().splitlines()[-1], phases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.5)
    ap.add_argument("--dir", default="/tmp/dfq-large")
    ap.add_argument("--keep", action="store_true", help="keep the generated model")
    ap.add_argument("--reuse", action="store_true", help="reuse a model generated with --keep")
    ap.add_argument("--no-report", action="store_true", help="no --report (no FP32-vs-quantized comparison)")
    args = ap.parse_args()
    root = Path(args.dir)
    path = root / "fp32" / "model.onnx"
    start = time.perf_counter()
    if not (args.reuse and path.is_file()):
        shutil.rmtree(root, ignore_errors=True)
        generate(root / "fp32", args.gb)
    gen_s = time.perf_counter() - start
    shutil.rmtree(root / "q", ignore_errors=True)
    data_gb = (root / "fp32" / "weights.bin").stat().st_size / 1e9
    out = root / "q" / "model_q.onnx"
    seconds, peak_gb, line, phases = quantize_child(path, out, report=not args.no_report)
    print(line, file=sys.stderr)
    rows = [["FP32 model (external data)", f"{data_gb:.2f}", f"{gen_s:.1f} (generate)", "-", "-"]]
    if out.is_file():
        files = [p for p in out.parent.iterdir() if p.name.startswith(out.name)]
        out_gb = sum(p.stat().st_size for p in files) / 1e9
        x = np.random.default_rng(0).standard_normal((2, C, HW, HW)).astype(np.float32)
        ref = session(str(path)).run(None, {"input": x})[0]
        got = session(str(out)).run(None, {"input": x})[0]
        onnx.checker.check_model(str(out), full_check=True)
        rows.append(["dfq-onnx quantize (W8A8, analytic)", f"{out_gb:.2f}", f"{seconds:.1f}",
                     f"{peak_gb:.2f}", f"{output_sqnr_db(ref, got):.1f}"])
    else:
        rows.append(["dfq-onnx quantize", "-", f"{seconds:.1f}", f"{peak_gb:.2f}", line])
    print(machine_info())
    layers = round(data_gb * 1e9 / (C * C * 36))
    print(f"\n{layers} conv layers {C}x{C}x3x3 (+BN, ReLU), input [N, {C}, {HW}, {HW}]; "
          f"report: {'no' if args.no_report else 'JSON (with the FP32-vs-quantized comparison)'}\n")
    print(markdown_table(["step", "size GB", "seconds", "peak RSS GB", "output SQNR dB"], rows))
    print("\npeak RSS (GB) sampled per phase: "
          + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
