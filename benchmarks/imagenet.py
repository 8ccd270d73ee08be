"""ImageNet data-free acceptance (issue 13): EfficientNet-Lite0 on the 500 dev images, every row in one run.

    python benchmarks/imagenet.py [--model ../shared/data/efficientnet_lite0.onnx] [--seeds 0]
                                  [--rows default,analytic,noise,real,ort-real,ort-noise,w4,mixed4.5,mixed4]
                                  [--calib-images 256] [--max-rss-gb 6]

Every dfq-onnx row is the CLI as a user runs it (`dfq-onnx quantize MODEL -o OUT --no-cache --report
R.json ...` on the ort-cpu target) in a fresh process under `/usr/bin/time -v`: wall seconds, peak RSS
and the forward passes of the compile (from the report; the synthesis's own beside them). The real
rows calibrate on `--calib-images` dev images (a seeded subset, the same for dfq-onnx and ORT); every row
is evaluated on all 500 dev images (so the real rows see their calibration images again, as a real
calibration set would be drawn from the same distribution): top-1 and agreement with the FP32 argmax.
ORT rows are `quantize_static` (QDQ, per-channel, MinMax, uint8 activations, `quant_pre_process`) run
in this process (wall only). `--seeds` repeats the default row per seed (the synthetic samples' seed).
Rows: default = W8A8 with no data (synthetic calibration), views8 = the same with every sample's 8
views measured (`--synth-views 8`, the default before the work budget), analytic / noise =
`--calib analytic|noise`, real = `--calib` a .npz of the real images, w4 = uniform `--weight-bits 4`,
mixed4.5 / mixed4 = `--avg-weight-bits 4.5 / 4` (A8; GPTQ rounds the plan's low-bit weights after the
plan); the -gptq rows: the same with the table scored on GPTQ's weights (`--gptq`), the -rtn rows with
round-to-nearest weights (`--no-gptq`), the -dither rows with `--dither-scoring`. `--layout nhwc` runs
every row on the model behind an input Transpose [0, 3, 1, 2] reading [N, H, W, C] images (a TF export's
layout, `dfq_onnx.models.builders.channels_last`); `--layout pixels` also puts Keras-style preprocessing in
the graph (x / 255, then (x - mean) / std per channel) and feeds [0, 255] pixels; `--layout uint8`
the same with a uint8 input read through a Cast (a TF detection export's input); `--layout folded` runs
every row on the model with its BatchNormalization folded into the convolutions in the file (as PyTorch's
and tf2onnx's exporters write a model: no BN statistics for the compile to read).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SHARED_DATA,
    gaussian_calib,
    machine_info,
    markdown_table,
    ort_quantize_static,
    run_batched,
    time_v_figures,
    tree_rss,
    write_input_npz,
)
from dfq_onnx.models import builders  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
ROWS = ("default", "views8", "analytic", "noise", "real", "ort-real", "ort-noise", "w4", "mixed4.5", "mixed4",
        "w4-gptq", "mixed4.5-gptq", "mixed4.5-dither", "mixed4.5-gptq-dither", "w4-rtn", "mixed4.5-rtn")
FLAGS = {"default": [], "views8": ["--synth-views", "8"], "analytic": ["--calib", "analytic"],
         "noise": ["--calib", "noise"],
         "w4": ["--weight-bits", "4"], "mixed4.5": ["--avg-weight-bits", "4.5"],
         "mixed4": ["--avg-weight-bits", "4"], "w4-gptq": ["--weight-bits", "4", "--gptq"],
         "mixed4.5-gptq": ["--avg-weight-bits", "4.5", "--gptq"],
         "mixed4.5-dither": ["--avg-weight-bits", "4.5", "--dither-scoring"],
         "mixed4.5-gptq-dither": ["--avg-weight-bits", "4.5", "--gptq", "--dither-scoring"],
         "w4-rtn": ["--weight-bits", "4", "--no-gptq"],
         "mixed4.5-rtn": ["--avg-weight-bits", "4.5", "--no-gptq"]}


def load_imagenet_dev(path: Path = SHARED_DATA / "imagenet_dev.npz") -> tuple[np.ndarray, np.ndarray]:
    """The 500 dev images, preprocessed as the model expects: (x/255 - mean) / std, NCHW float32."""
    with np.load(path) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    x = (images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels


KB_GB = 1024e6   # bytes per "GB" as these rows report it: 1e6 kB


def time_v(cmd: list[str], max_rss_gb: float) -> dict:
    """Run `cmd` under /usr/bin/time -v; wall s, peak RSS GB, exit code (killed past `max_rss_gb`)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-v", "-o", tf.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rss = _watch(proc, max_rss_gb)
        wall = time.perf_counter() - start
        text = tf.read()
    peak = time_v_figures(text)[1]
    return {"wall": wall, "rss": peak / KB_GB if peak else rss, "code": proc.returncode,
            "killed": rss is not None and rss > max_rss_gb, "stderr": proc.stderr.read()[-300:]}


def _watch(proc: subprocess.Popen, max_rss_gb: float) -> float | None:
    """Poll the child's RSS; kill it past the limit (the shared machine). Returns the last RSS seen (GB)."""
    last = None
    while proc.poll() is None:
        time.sleep(0.5)
        rss = tree_rss(proc.pid) / KB_GB or None
        last = rss if rss is not None else last
        if rss is not None and rss > max_rss_gb:
            proc.kill()
            proc.wait()
            return rss
    return last


def dfq_row(model: Path, flags: list[str], work: Path, tag: str, seed: int, max_rss_gb: float) -> dict:
    out, rep = work / f"{tag}.onnx", work / f"{tag}.json"
    cmd = [sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(model), "-o", str(out), "--no-cache",
           "--report", str(rep), "--seed", str(seed), *flags]
    res = time_v(cmd, max_rss_gb)
    shown = ["dfq-onnx quantize MODEL -o OUT", *flags] + (["--seed", str(seed)] if seed else [])
    res["cmd"] = " ".join(shown)
    if res["code"] != 0 or not out.exists():
        res["error"] = "killed: peak RSS above --max-rss-gb" if res["killed"] else res["stderr"].strip()
        return res
    report = json.loads(rep.read_text())
    synth = report.get("notes", {}).get("synthesis") or {}
    res.update(path=out, passes=report.get("forward_passes"), synth_passes=synth.get("forward_passes"),
               synth_s=next((p["seconds"] for p in report["passes"] if p["pass"] == "Synthesize"), None))
    return res


def bn_folded(path: Path) -> onnx.ModelProto:
    """The model with every BatchNormalization folded into its convolution (dfq-onnx's Normalize +
    FoldBatchNorm, `synthetic.folded_state`), written back as a plain FP32 model."""
    from synthetic import folded_state

    from dfq_onnx.core import ir

    state = folded_state(path)
    assert all(n.op != "BatchNormalization" for n in state.graph.nodes)
    return ir.to_model(state.graph, ir_version=ir.min_ir_version(state.graph.opset))


def start_run(model: Path, calib_images: int, layout: str = "nchw"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(dev images, labels, the seeded subset real rows calibrate on, FP32 logits); prints the machine."""
    x, y = load_imagenet_dev()
    if layout == "nhwc":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if layout in ("pixels", "uint8"):
        pixels = (x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]) * np.float32(255.0)
        x = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8) if layout == "uint8" else x
    subset = np.sort(np.random.default_rng(0).permutation(len(x))[:calib_images])
    print(machine_info())
    print(f"load average at start: {os.getloadavg()}")
    return x, y, subset, run_batched(model, {"input": x}, batch=50)


def evaluate(path: Path, x: np.ndarray, y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    logits = run_batched(path, {"input": x}, batch=50)
    return 100.0 * float(np.mean(logits.argmax(1) == y)), 100.0 * float(np.mean(logits.argmax(1) == ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED_DATA / "efficientnet_lite0.onnx"))
    ap.add_argument("--seeds", default="0", help="seeds of the default (synthetic) row")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--max-rss-gb", type=float, default=6.0, help="stop a compile past this peak RSS")
    ap.add_argument("--layout", choices=("nchw", "nhwc", "pixels", "uint8", "folded"), default="nchw",
                    help="nhwc: the model behind an input Transpose [0, 3, 1, 2] (as tf2onnx exports TF); "
                         "pixels: also behind Keras-style x / 255, (x - mean) / std in the graph; "
                         "uint8: the same reading uint8 pixels through a Cast; folded: BN folded in the file")
    args = ap.parse_args()
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        sys.exit(f"--rows: unknown {', '.join(unknown)}; expected some of {', '.join(ROWS)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_imagenet_") as tmp:
        work = Path(tmp)
        model = Path(args.model)
        if args.layout == "folded":
            model = work / f"{model.stem}_folded.onnx"
            onnx.save(bn_folded(Path(args.model)), model)
        elif args.layout != "nchw":
            model = work / f"{model.stem}_{args.layout}.onnx"
            pre = (dict(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD, uint8=args.layout == "uint8")
                   if args.layout in ("pixels", "uint8") else {})
            onnx.save(builders.channels_last(onnx.load(args.model), **pre), model)
        x, y, subset, ref = start_run(model, args.calib_images, args.layout)
        fp32 = 100.0 * float(np.mean(ref.argmax(1) == y))
        table = [["FP32", "-", f"{fp32:.1f}", "100.0", "", "", "", ""]]
        real_npz = write_input_npz(work / "real.npz", {"input": x[subset]})
        for name in rows:
            table += _rows(name, args, model, work, real_npz, x, y, ref, subset)
    print(f"\n### {model.name}, ort-cpu, top-1 / agreement with the FP32 argmax on the {len(x)} dev images "
          f"(real rows calibrated on {len(subset)} of them)\n")
    print(markdown_table(["row", "command", "top-1 %", "agreement %", "wall s", "peak RSS GB",
                          "forward passes (synthesis)", "synthesis s"], table))
    print(f"\nload average at end: {os.getloadavg()}; total {time.perf_counter() - t0:.0f} s")


def _rows(name, args, model, work, real_npz, x, y, ref, subset) -> list[list]:
    ref_arg = ref.argmax(1)
    if name.startswith("ort-"):
        calib = x[subset] if name == "ort-real" else gaussian_calib(64, x.shape[1:], seed=0)
        start = time.perf_counter()
        path = ort_quantize_static(model, work / f"{name}.onnx", {"input": calib}, calib_batch=16)
        wall = time.perf_counter() - start
        top, agree = evaluate(path, x, y, ref_arg)
        what = f"{len(subset)} real images" if name == "ort-real" else "64 N(0, 1) images"
        return [[name, f"ORT quantize_static, {what}", f"{top:.1f}", f"{agree:.1f}", f"{wall:.0f}", "-", "-",
                 "-"]]
    flags = FLAGS.get(name, ["--calib", str(real_npz)])
    seeds = [int(s) for s in args.seeds.split(",")] if name in ("default", "views8") else [0]
    out = []
    for seed in seeds:
        res = dfq_row(model, flags, work, f"{name}_{seed}", seed, args.max_rss_gb)
        cmd = res["cmd"].replace(str(real_npz), "real256.npz")
        if "error" in res:
            out.append([name, cmd, res["error"][:80], "", f"{res['wall']:.0f}", f"{res['rss']:.2f}", "", ""])
            continue
        top, agree = evaluate(res["path"], x, y, ref_arg)
        synth = f" ({res['synth_passes']})" if res["synth_passes"] is not None else ""
        synth_s = f"{res['synth_s']:.1f}" if res["synth_s"] is not None else "-"
        out.append([name if len(seeds) == 1 else f"{name}, seed {seed}", cmd, f"{top:.1f}", f"{agree:.1f}",
                    f"{res['wall']:.0f}", f"{res['rss']:.2f}", f"{res['passes']}{synth}", synth_s])
        print(f"  {out[-1]}", flush=True)
        res["path"].unlink()
    return out


if __name__ == "__main__":
    main()
