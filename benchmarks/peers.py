"""dfq-onnx beside other int8 quantizers (ORT, NNCF, ModelOpt, Quark, AIMET): one table per model, one run.

    python benchmarks/peers.py [--models efficientnet_lite0,resnet56] [--peers ort,nncf,modelopt,...]
                               [--venvs /work/assets/peers/venvs] [--calib-samples N] [--rounds 5]
                               [--no-latency] [--keep DIR]

Every row is a compile in a fresh process under `/usr/bin/time -v` (wall s, peak RSS), then top-1 and
agreement with the FP32 argmax on held-out images in ONNX Runtime (CPU, 2 threads), the output's size,
and CPU latency at batch 1 and 32 in ORT and OpenVINO (2 threads; per runtime and batch, every model
timed once per round, the median over rounds of its median ms per call, FP32 in the same rounds).

- dfq-onnx: `dfq-onnx quantize MODEL -o OUT --no-cache --seed 0` (default W8A8, no data).
- Each peer runs in its OWN venv, `VENVS/<venv>/bin/python` (ort: this venv), through
  benchmarks/peer_drivers.py or the peer's own CLI (ModelOpt); a peer whose venv or package is missing
  is skipped with one line. The peers calibrate on real samples the evaluation never sees:
  EfficientNet-Lite0: a seeded permutation of the 500 labelled dev images, the first `--calib-samples`
  (default 100) calibrate and the other 400 are evaluated; ResNet-56: the first `--calib-samples`
  (default 300, NNCF's default subset size) of cifar10_calib.npz, evaluated on the 10000 test images.
  modelopt-random is ModelOpt without calibration data (its random calibration: a data-free peer).
The column "needs" says what each quantizer asked of its user.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SHARED_DATA,
    machine_info,
    markdown_table,
    preprocess,
    run_batched,
    time_v_figures,
    tree_rss,
    write_input_npz,
)
from imagenet import KB_GB, dfq_row, load_imagenet_dev  # noqa: E402
from peer_latency import latency_columns  # noqa: E402

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "peer_drivers.py"
DEFAULT_VENVS = Path(os.environ.get("DFQ_PEERS_VENVS", "/work/assets/peers/venvs"))

# peer -> (venv name or None for this venv, package to import, what the user had to give it)
PEERS = {
    "ort": (None, "onnxruntime.quantization",
            "N samples (CalibrationDataReader), quant_pre_process, per_channel=True"),
    "nncf": ("nncf", "nncf", "N samples (nncf.Dataset), subset_size=N"),
    "modelopt": ("modelopt", "modelopt.onnx.quantization",
                 "N samples (.npz), --calibration_eps cpu --high_precision_dtype fp32"),
    "modelopt-random": ("modelopt", "modelopt.onnx.quantization",
                        "nothing (random calibration), --calibration_eps cpu --high_precision_dtype fp32"),
    "quark": ("quark", "quark.onnx", "N samples (CalibrationDataReader), config INT8_CNN_DEFAULT"),
    "aimet": ("aimet", "aimet_onnx", "N samples (feeds), QuantizationSimModel + to_onnx_qdq defaults"),
}


def imagenet_split(data: Path, n_calib: int | None):
    x, y = load_imagenet_dev(data / "imagenet_dev.npz")
    n = n_calib or 100
    perm = np.random.default_rng(0).permutation(len(x))
    calib, held = np.sort(perm[:n]), np.sort(perm[n:])
    return x[calib], x[held], y[held], f"{n} of the 500 dev images calibrate, the other {len(held)} evaluate"


def load_cifar(path: Path, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return preprocess(z["images"][:n]), z["labels"][:n].astype(np.int64)


def cifar_split(data: Path, n_calib: int | None):
    n = n_calib or 300
    calib, _ = load_cifar(data / "cifar10_calib.npz", n)
    x, y = load_cifar(data / "cifar10_test.npz")
    return calib, x, y, f"first {n} of cifar10_calib calibrate, the {len(x)} test images evaluate"


MODELS = {"efficientnet_lite0": ("efficientnet_lite0.onnx", imagenet_split),
          "resnet56": ("resnet56_cifar10.onnx", cifar_split)}


def peer_python(peer: str, venvs: Path) -> tuple[str | None, str]:
    """(python to run the peer with, or None; why not)."""
    venv, module, _ = PEERS[peer]
    python = sys.executable if venv is None else str(venvs / venv / "bin" / "python")
    if not Path(python).exists():
        return None, f"no venv {venvs / venv}"
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"`import {module}` fails: {probe.stderr.strip().splitlines()[-1][:120]}"
    return python, ""


def peer_cmd(peer: str, python: str, model: Path, out: Path, calib: Path) -> list[str]:
    if peer.startswith("modelopt"):
        data = [] if peer == "modelopt-random" else ["--calibration_data", str(calib)]
        return [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(model),
                "--quantize_mode", "int8", *data, "--calibration_eps", "cpu",
                "--high_precision_dtype", "fp32", "--output_path", str(out)]
    return [python, str(DRIVER), peer, str(model), str(out), "--calib", str(calib)]


def timed(cmd: list[str], log: Path, max_rss_gb: float) -> dict:
    """`cmd` under /usr/bin/time -v, its output in `log`; wall s, peak RSS GB, exit code, log tail."""
    tv = log.with_suffix(".time")
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(tv), *cmd], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONHASHSEED": "0"},
                                cwd=log.parent)  # peers that write side files (Quark) write them there
        killed = False
        while proc.poll() is None:
            time.sleep(0.5)
            if tree_rss(proc.pid) / KB_GB > max_rss_gb:
                proc.kill()
                killed = True
        proc.wait()
    wall = time.perf_counter() - start
    peak = time_v_figures(tv.read_text())[1] if tv.exists() else None
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
    error = ("killed past --max-rss-gb" if killed else " | ".join(tail)[-160:]) if proc.returncode else ""
    rss = peak / KB_GB if peak else float("nan")
    return {"wall": wall, "rss": rss, "code": proc.returncode, "error": error}


def evaluate(path: Path, x: np.ndarray, y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    pred = run_batched(path, {"input": x}, batch=50).argmax(1)
    return 100.0 * float(np.mean(pred == y)), 100.0 * float(np.mean(pred == ref))


def run_model(name: str, args, venvs: Path, work: Path) -> None:
    model, split = Path(args.data) / MODELS[name][0], MODELS[name][1]
    calib, x, y, split_text = split(Path(args.data), args.calib_samples)
    if args.eval_samples and args.eval_samples < len(x):
        x, y = x[:args.eval_samples], y[:args.eval_samples]
        split_text += f" (the first {len(x)} of them)"
    calib_npz = write_input_npz(work / f"{name}_calib.npz", {"input": calib})
    ref_logits = run_batched(model, {"input": x}, batch=50)
    ref = ref_logits.argmax(1)
    rows = {"FP32": {"needs": "-", "top1": 100.0 * float(np.mean(ref == y)), "agree": 100.0, "path": model}}
    print(f"\n## {name}: {split_text}; load {os.getloadavg()}", flush=True)
    res = dfq_row(model, [], work, f"{name}_dfq", 0, args.max_rss_gb)
    rows["dfq-onnx"] = {"needs": "nothing (no data, no flags)", **_finish(res, res.get("path"), x, y, ref)}
    print(f"  dfq-onnx: {rows['dfq-onnx']}", flush=True)
    for peer in args.peers.split(","):
        python, why = peer_python(peer, venvs)
        if python is None:
            print(f"  skip {peer}: {why}", flush=True)
            continue
        out = work / f"{name}_{peer}.onnx"
        log = work / f"{name}_{peer}.log"
        res = timed(peer_cmd(peer, python, model, out, calib_npz), log, args.max_rss_gb)
        needs = PEERS[peer][2].replace("N samples", f"{len(calib)} samples")
        done = out if out.exists() and not res["code"] else None
        rows[peer] = {"needs": needs, **_finish(res, done, x, y, ref)}
        print(f"  {peer}: {rows[peer]}", flush=True)
    lat = latency_columns({k: r["path"] for k, r in rows.items() if r.get("path")}, x.shape[1:], args) \
        if args.latency else {}
    _print_table(name, rows, lat, split_text)
    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        for k, r in rows.items():
            if r.get("path") and k != "FP32":
                Path(r["path"]).replace(keep / f"{name}_{k}.onnx")


def _finish(res: dict, path, x, y, ref) -> dict:
    row = {"wall": res["wall"], "rss": res["rss"], "error": res.get("error", "")}
    if path is None or not Path(path).exists():
        return {**row, "error": row["error"] or "no output"}
    try:
        top1, agree = evaluate(Path(path), x, y, ref)
    except Exception as exc:  # a peer's output that ORT cannot load or run is a result, not a crash
        return {**row, "error": f"ORT cannot run it: {str(exc).splitlines()[0][:120]}"}
    return {**row, "top1": top1, "agree": agree, "path": Path(path), "mb": Path(path).stat().st_size / 1e6}


def _print_table(name: str, rows: dict, lat: dict, split_text: str) -> None:
    heads = ["row", "needs from the user", "top-1 %", "agreement %", "wall s", "peak RSS GB", "size MB",
             *lat.get("heads", [])]
    table = []
    for k, r in rows.items():
        if "top1" not in r:
            table.append([k, r["needs"], r["error"], "", f"{r['wall']:.0f}", f"{r['rss']:.2f}", "",
                          *[""] * len(lat.get("heads", []))])
            continue
        compile_ = ["", ""] if k == "FP32" else [f"{r['wall']:.0f}", f"{r['rss']:.2f}"]
        mb = f"{r['mb']:.1f}" if "mb" in r else f"{Path(r['path']).stat().st_size / 1e6:.1f}"
        table.append([k, r["needs"], f"{r['top1']:.1f}", f"{r['agree']:.1f}", *compile_, mb,
                      *lat.get(k, [""] * len(lat.get("heads", [])))])
    print(f"\n### {name} ({split_text}); load at end {os.getloadavg()}\n")
    print(markdown_table(heads, table), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--data", default=str(SHARED_DATA), help="folder of the shared models and data")
    ap.add_argument("--venvs", default=str(DEFAULT_VENVS), help="folder of the peers' venvs (VENVS/<peer>)")
    ap.add_argument("--calib-samples", type=int, help="peers' calibration samples (default 100 / 300)")
    ap.add_argument("--eval-samples", type=int, help="evaluate on the first N held-out samples only")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--no-latency", dest="latency", action="store_false")
    ap.add_argument("--max-rss-gb", type=float, default=8.0, help="stop a compile past this peak RSS")
    ap.add_argument("--keep", help="keep the quantized models in this folder")
    args = ap.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    unknown += sorted(set(args.peers.split(",")) - set(PEERS))
    if unknown:
        sys.exit(f"unknown model / peer: {', '.join(unknown)}")
    print(machine_info())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        for name in args.models.split(","):
            run_model(name, args, Path(args.venvs), Path(tmp))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
