"""Tasks for benchmarks/range_swap.py: a model, its real calibration inputs and a task metric.

* imagenet: EfficientNet-Lite0 on the 500 dev images (top-1, agreement with the FP32 argmax); real
  calibration = the seeded subset of `n_real` dev images benchmarks/imagenet.py calibrates on.
* ocr-cls: PP-OCR mobile-v2 direction classifier on 500 rendered lines and their 180-degree rotations
  (benchmarks/ocr_data.py, seed 0), preprocessed as RapidOCR does (48 x 192); accuracy and agreement
  with the FP32 argmax. Real calibration = `n_real` other lines (seed 1000), every other one rotated.
* ocr-rec: PP-OCRv4 rec through RapidOCR's recognizer (its variable widths) on the 500 lines: line
  exact match and CER. Real calibration = `n_real` other lines at 48 x 320.
* yolo: a YOLO-style detector (default NudeNet's YOLOv8n 320) on the 500 dev photographs at 320 x 320
  (benchmarks/detector_agreement.py): FP32 detections kept % and output SQNR dB; real calibration =
  a seeded subset of `n_real` of those photographs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from common import SHARED_DATA, run_batched


@dataclass
class Task:
    model: Path
    input_shapes: dict            # compile hints (--input-shape)
    real: dict                    # real calibration inputs, {input name: array}
    evaluate: Callable[[Path], tuple[float, float]]
    metrics: tuple[str, str]
    notes: list[str] = field(default_factory=list)


def imagenet(model: str | None, n_real: int) -> Task:
    from imagenet import evaluate, start_run

    path = Path(model or SHARED_DATA / "efficientnet_lite0.onnx")
    x, y, subset, ref = start_run(path, n_real)
    ref = ref.argmax(1)
    return Task(path, {}, {"input": x[subset]}, lambda p: evaluate(p, x, y, ref),
                ("top-1 %", "agreement %"), [f"{len(x)} dev images, real = {len(subset)} of them"])


def _ocr_lines(n: int, seed: int):
    import ocr_data
    from dfq_onnx.models.corpus import corpus_model
    from ocr import MODELS

    charset = ocr_data.charset(corpus_model(MODELS["rec"]).path)
    return ocr_data.line_set(n, seed, charset)


def _rotate(images, every: int = 1) -> list[np.ndarray]:
    return [np.ascontiguousarray(im[::-1, ::-1]) if i % every == every - 1 else im
            for i, im in enumerate(images)]


def ocr_cls(model: str | None, n_real: int, lines: int = 500) -> Task:
    from dfq_onnx.models.corpus import corpus_model
    from ocr import MODELS, rec_input

    path = Path(model or corpus_model(MODELS["cls"]).path)
    images, _ = _ocr_lines(lines, 0)
    x = np.stack([rec_input(im, 192) for im in images + _rotate(images)])
    truth = np.r_[np.zeros(len(images), int), np.ones(len(images), int)]
    calib, _ = _ocr_lines(n_real, 1000)
    real = np.stack([rec_input(im, 192) for im in _rotate(calib, 2)])
    ref = run_batched(path, {"x": x}, batch=100).argmax(1)

    def evaluate(p: Path) -> tuple[float, float]:
        pred = run_batched(p, {"x": x}, batch=100).argmax(1)
        return 100.0 * float(np.mean(pred == truth)), 100.0 * float(np.mean(pred == ref))

    print(f"FP32 cls accuracy {100.0 * np.mean(ref == truth):.1f}", flush=True)
    return Task(path, {"x": (1, 3, 48, 192)}, {"x": real}, evaluate, ("cls acc %", "agreement %"),
                [f"{len(x)} inputs ({lines} lines and their rotations), real = {n_real} other lines"])


def ocr_rec(model: str | None, n_real: int, lines: int = 500) -> Task:
    import ocr_data
    from dfq_onnx.models.corpus import corpus_model
    from ocr import MODELS, rec_input

    path = Path(model or corpus_model(MODELS["rec"]).path)
    images, texts = _ocr_lines(lines, 0)
    calib, _ = _ocr_lines(n_real, 1000)
    real = np.stack([rec_input(im) for im in calib])

    def evaluate(p: Path) -> tuple[float, float]:
        from rapidocr_onnxruntime import RapidOCR

        hyps = [r[0] for r in RapidOCR(rec_model_path=str(p)).text_rec(images)[0]]
        return ocr_data.exact(texts, hyps), ocr_data.cer(texts, hyps)

    print(f"FP32 rec exact / CER {evaluate(path)}", flush=True)
    return Task(path, {"x": (1, 3, 48, 320)}, {"x": real}, evaluate, ("line exact %", "CER %"),
                [f"{lines} lines through RapidOCR's recognizer, real = {n_real} other lines"])


def yolo(model: str | None, n_real: int, size: int = 320) -> Task:
    from detector_agreement import agreement, images, outputs
    from dfq_onnx.models.corpus import corpus_model

    path = Path(model or corpus_model("yolov8n_320").path)
    x = images(size)
    subset = np.random.default_rng(0).choice(len(x), n_real, replace=False)
    ref = outputs(str(path), x)

    def evaluate(p: Path) -> tuple[float, float]:
        sqnr, _, kept, _, _ = agreement(ref, outputs(str(p), x))
        return float(kept), float(sqnr)

    return Task(path, {"images": (1, 3, size, size)}, {"images": x[subset]}, evaluate,
                ("kept %", "SQNR dB"), [f"{len(x)} photographs at {size}, real = {n_real} of them"])


TASKS = {"imagenet": imagenet, "ocr-cls": ocr_cls, "ocr-rec": ocr_rec, "yolo": yolo}


def make(name: str, model: str | None, n_real: int) -> Task:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    return TASKS[name](model, n_real)
