"""Bundled demo model: a small BN-unfolded CNN trained on scikit-learn's 8x8 digits.

``DEMO_MODEL`` takes ``input`` float32 [N,1,8,8] and returns ``logits`` [N,10].
``DEMO_EVAL`` holds the held-out test split (450 images), already preprocessed as
``x = (images / 16.0 - 0.5) / 0.5`` (range [-1, 1]). See ``models/train_digits.py``
for the training recipe. No calibration data is shipped: the compiler is data-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_DIR: Path = Path(__file__).resolve().parent / "demo"
DEMO_MODEL: Path = DEMO_DIR / "digits_cnn.onnx"
DEMO_EVAL: Path = DEMO_DIR / "digits_eval.npz"


def load_demo_eval() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Return ``({"input": x}, labels)``: x float32 [N,1,8,8] preprocessed, labels int64 [N]."""
    with np.load(DEMO_EVAL) as data:
        x = np.ascontiguousarray(data["input"], dtype=np.float32)
        labels = np.ascontiguousarray(data["labels"], dtype=np.int64)
    return {"input": x}, labels
