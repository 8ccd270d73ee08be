"""A YOLO-style detector's quantized outputs against FP32 on real photographs (no labels needed).

    python benchmarks/detector_agreement.py FP32.onnx NAME=Q.onnx [NAME=Q.onnx ...] [--size 320]

Images: the shared 500 ImageNet dev photographs (../shared/data/imagenet_dev.npz), resized to
size x size, RGB in [0, 1] (Ultralytics' input convention). Output [N, 4 + K, A] (box xywh, K class
scores per anchor). Per model, against FP32:

* output SQNR (dB) over the whole output;
* detections: anchors whose best class score is >= 0.25 in FP32 (the Ultralytics default confidence);
  `kept` = share of them whose quantized best class is the same and also >= 0.25, `spurious` = anchors
  >= 0.25 in the quantized output only, per FP32 detection; `box err` = mean |xywh| difference on the
  kept ones, in pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine_info, markdown_table, output_sqnr_db, session  # noqa: E402

CONF = 0.25


def images(size: int) -> np.ndarray:
    import onnxruntime  # noqa: F401  (the session helper imports it anyway)
    from PIL import Image

    raw = np.load(SHARED_DATA / "imagenet_dev.npz")["images"]
    out = [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in raw]
    return (np.stack(out).transpose(0, 3, 1, 2) / 255.0).astype(np.float32)


def outputs(path: str, x: np.ndarray, batch: int = 8) -> np.ndarray:
    sess = session(path, threads=2)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def agreement(ref: np.ndarray, out: np.ndarray) -> list:
    rs, qs = ref[:, 4:], out[:, 4:]
    rc, qc = rs.argmax(1), qs.argmax(1)
    rdet, qdet = rs.max(1) >= CONF, qs.max(1) >= CONF
    kept = rdet & qdet & (rc == qc)
    n = int(rdet.sum())
    box = np.abs(ref[:, :4] - out[:, :4]).transpose(0, 2, 1)[kept].mean() if kept.any() else float("nan")
    return [f"{output_sqnr_db(ref, out):.2f}", n, f"{100 * kept.sum() / max(n, 1):.1f}",
            f"{100 * (qdet & ~rdet).sum() / max(n, 1):.1f}", f"{box:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32")
    ap.add_argument("models", nargs="+", help="NAME=PATH")
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    print(machine_info())
    x = images(args.size)
    ref = outputs(args.fp32, x)
    rows = []
    for spec in args.models:
        name, path = spec.split("=", 1)
        rows.append([name, *agreement(ref, outputs(path, x))])
    print(markdown_table(["model", "output SQNR dB", "FP32 detections", "kept %", "spurious %",
                          "box err px"], rows))


if __name__ == "__main__":
    main()
