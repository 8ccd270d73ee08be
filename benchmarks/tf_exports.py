"""TensorFlow / Keras exports through tf2onnx: structure, compile cost and ORT latency (other exporters).

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf2onnx   # its own venv
    python benchmarks/tf_exports.py --tf-python /tmp/tfvenv/bin/python [--models mobilenetv2,...]

Keras applications (`--models`: mobilenetv2, efficientnetb0, resnet50) are built with random weights
(weights=None: nothing is downloaded), exported by tf2onnx (opset 17, input [N, 224, 224, 3]) in the TF
venv, then quantized here: `dfq-onnx -q quantize M -o OUT --no-cache --report R` (default, W8A8, ort-cpu)
under `/usr/bin/time -v`, and ORT quantize_static (QDQ, per-channel, MinMax) on 64 standard-normal
images. tf2onnx folds BatchNormalization into the convolutions (no BN statistics reach the tool) and
EfficientNetB0 carries Keras' Rescaling / Normalization in its graph (it reads [0, 255] pixels), so the
rows say what the tool found: channels-last input (synth/layout.py), an in-graph preprocessing prefix
(synth/preprocess.py), the synthesis objective. Weights are random, so there is no accuracy here
(`benchmarks/imagenet.py --layout nhwc|pixels` measures the same two findings on a trained network):
ORT latency (interleaved medians, batch 1 and 32, 2 threads) and the float ops ORT's optimized graph of
each output runs between a DequantizeLinear and a QuantizeLinear beyond those of ORT's own output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_latency_ms, machine_info, markdown_table, ort_quantize_static  # noqa: E402
from ocr import timed  # noqa: E402

from dfq_onnx.backends.fusion import float_ops_between_qdq  # noqa: E402

EXPORT = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf, tf2onnx
name, out = sys.argv[1], sys.argv[2]
apps = tf.keras.applications
ctor = {"mobilenetv2": apps.MobileNetV2, "efficientnetb0": apps.EfficientNetB0,
        "resnet50": apps.ResNet50}[name]
tf.keras.utils.set_random_seed(0)
m = ctor(weights=None, input_shape=(224, 224, 3), classes=1000)
spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)
tf2onnx.convert.from_keras(m, input_signature=spec, opset=17, output_path=out)
"""


def export(tf_python: str, name: str, work: Path) -> Path:
    out = work / f"tf_{name}.onnx"
    subprocess.run([tf_python, "-c", EXPORT, name, str(out)], check=True, capture_output=True)
    return out


def row(name: str, src: Path, work: Path, rounds: int) -> list[list]:
    dfq, report = work / f"{name}_dfq.onnx", work / f"{name}_dfq.json"
    cost = timed([str(Path(sys.executable).parent / "dfq-onnx"), "-q", "quantize", str(src), "-o", str(dfq),
                  "--no-cache", "--report", str(report)])
    synth = json.loads(report.read_text())["notes"].get("synthesis", {})
    rng = np.random.default_rng(0)
    images = {b: {"input": rng.standard_normal((b, 224, 224, 3)).astype(np.float32)} for b in (64, 1, 32)}
    ort = ort_quantize_static(src, work / f"{name}_ort.onnx", images[64], calib_batch=16)
    paths = {"fp32": src, "ort": ort, "dfq": dfq}
    lat = {b: interleaved_latency_ms(paths, images[b], rounds=rounds, runs=5 if b == 1 else 1, warmup=2)
           for b in (1, 32)}
    beyond = float_ops_between_qdq(dfq) - float_ops_between_qdq(ort)
    found = [f"objective {synth.get('objective')}"]
    if synth.get("channels_last_inputs"):
        found.append("channels-last input")
    if synth.get("sampled_after_preprocessing"):
        found.append("preprocessing prefix inverted")
    if synth.get("assumed_range"):
        found.append("range warning")
    return [[name, ", ".join(found), f"{cost['wall_s']:.0f} s / {cost['rss_mb'] / 1024:.2f} GB",
             " / ".join(f"{lat[b]['dfq']:.1f}" for b in (1, 32)),
             " / ".join(f"{lat[b]['dfq'] / lat[b]['ort']:.2f}" for b in (1, 32)),
             " / ".join(f"{lat[b]['dfq'] / lat[b]['fp32']:.2f}" for b in (1, 32)),
             ", ".join(f"{k} {v}" for k, v in sorted(beyond.items())) or "-"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf-python", required=True, help="python of a venv with tensorflow-cpu and tf2onnx")
    ap.add_argument("--models", default="mobilenetv2,efficientnetb0,resnet50")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--work", default=None, help="keep the models here (default: a temporary directory)")
    args = ap.parse_args()
    print(machine_info(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dfq-tf-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            rows += row(name, export(args.tf_python, name, work), work, args.rounds)
            print(rows[-1], flush=True)
    print(markdown_table(["Keras model (tf2onnx)", "what the tool found", "compile wall / peak RSS",
                          "dfq ms b1 / b32", "vs ORT b1 / b32", "vs FP32 b1 / b32",
                          "float ops ORT runs int"], rows))


if __name__ == "__main__":
    main()
