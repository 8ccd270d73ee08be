"""ResNet-20 on CIFAR-10 from ../shared/data: W8A8 data-free within 1.5 points of FP32 (first 1000 images).

The full-test-set acceptance lives in benchmarks/; this is the quick check.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import session

import dfq_onnx

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _cifar(data, n: int):
    path = data / "cifar10_test.npz"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    with np.load(path) as z:
        images, labels = z["images"][:n], z["labels"][:n]
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels


def _top1(model, x, labels) -> float:
    logits = session(model).run(None, {"input": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels) * 100.0)


def test_resnet20_w8a8_analytic(shared_data, tmp_path):
    path = shared_data / "resnet20_cifar10.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    out, report = dfq_onnx.quantize(path, output=tmp_path / "resnet20_w8a8.onnx", calib="analytic",
                                    progress=False)
    onnx.checker.check_model(str(tmp_path / "resnet20_w8a8.onnx"), full_check=True)
    assert report.forward_passes == 0 and report.notes["bn_folded"] == 19
    x, labels = _cifar(shared_data, 1000)
    fp32, q = _top1(onnx.load(path), x, labels), _top1(out, x, labels)
    assert fp32 > 70.0                   # 74.8 % on these 1000 images (81.03 % on the full JPEG set)
    assert abs(q - fp32) <= 1.5, (fp32, q)
