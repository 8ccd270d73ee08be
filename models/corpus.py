"""Structure corpus: real exported ONNX models that benchmarks and tests run on.

The corpus is made of model files that ship inside Python packages, so no
network access is needed at run time:

* ``onnx`` (a project dependency): ``onnx/backend/test/data/light/*.onnx``.
  These are nine model-zoo structures (AlexNet, DenseNet-121, Inception v1/v2,
  ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512) exported by
  onnx-caffe2 at opset 9 / IR 3. Their conv/gemm weights are produced by
  ``ConstantOfShape`` nodes (value 0.02) whose shape tensors are INT64
  initializers that are also listed as graph inputs; BatchNormalization
  statistics are real FLOAT initializers.
* ``rapidocr-onnxruntime``: PaddleOCR models exported by paddle2onnx,
  ``ch_PP-OCRv4_det_infer`` (DB text detector, opset 12),
  ``ch_PP-OCRv4_rec_infer`` (SVTR-LCNet CTC recognizer, opset 12) and
  ``ch_ppocr_mobile_v2.0_cls_infer`` (MobileNetV3 angle classifier, opset 11).
  All weights are ``Constant`` nodes (no initializers); inputs are dynamic.
* ``rapidocr`` (3.x, the successor package): ``PP-OCRv6_det_small`` and ``PP-OCRv6_rec_small``
  (paddle2onnx, opset 11; GELU through Erf, an 18,710-character CTC recognizer with its dictionary in
  ``metadata_props``) and the same mobile v2 angle classifier. Held-out OCR models: the tool was built
  against PP-OCRv4.
* ``nudenet``: ``320n.onnx``, an Ultralytics YOLOv8n detector (PyTorch 2.3
  export, opset 17, dynamic batch/height/width).

Install the optional packages without their (heavy) dependencies, only to get
the model files::

    pip install --no-deps rapidocr-onnxruntime rapidocr nudenet

Packages are located with :func:`importlib.util.find_spec`, which does not
import them (importing ``rapidocr_onnxruntime`` would pull in OpenCV etc.).
Models of packages that are not installed are skipped, or listed with
``path=None`` when ``include_missing=True``.

This module uses only the standard library.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CorpusModel",
    "INSTALL_HINT",
    "corpus_model",
    "corpus_models",
    "default_input_shapes",
]

INSTALL_HINT = "pip install --no-deps rapidocr-onnxruntime rapidocr nudenet"


@dataclass(frozen=True)
class CorpusModel:
    """One corpus model.

    ``name`` is unique and stable across machines, ``path`` is the ``.onnx``
    file (``None`` only for a missing package listed with
    ``include_missing=True``), ``source`` is the package that ships it.
    """

    name: str
    path: Path | None
    source: str

    @property
    def available(self) -> bool:
        return self.path is not None and self.path.is_file()


# source package -> (folder inside the package, glob), in listing order.
_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("onnx", "backend/test/data/light", "*.onnx"),
    ("rapidocr_onnxruntime", "models", "*.onnx"),
    ("rapidocr", "models", "PP-OCRv6_*.onnx"),
    ("nudenet", ".", "*.onnx"),
)

# Files known to ship in the packages (used for include_missing and naming).
_KNOWN_FILES: dict[str, tuple[str, ...]] = {
    "onnx": (
        "light_bvlc_alexnet",
        "light_densenet121",
        "light_inception_v1",
        "light_inception_v2",
        "light_resnet50",
        "light_shufflenet",
        "light_squeezenet",
        "light_vgg19",
        "light_zfnet512",
    ),
    "rapidocr_onnxruntime": (
        "ch_PP-OCRv4_det_infer",
        "ch_PP-OCRv4_rec_infer",
        "ch_ppocr_mobile_v2.0_cls_infer",
    ),
    "rapidocr": ("PP-OCRv6_det_small", "PP-OCRv6_rec_small"),
    "nudenet": ("320n",),
}

# file stem -> corpus name (anything else keeps its file stem).
_NAMES: dict[tuple[str, str], str] = {
    ("rapidocr_onnxruntime", "ch_PP-OCRv4_det_infer"): "ppocrv4_det",
    ("rapidocr_onnxruntime", "ch_PP-OCRv4_rec_infer"): "ppocrv4_rec",
    ("rapidocr_onnxruntime", "ch_ppocr_mobile_v2.0_cls_infer"): "ppocr_mobile_v2_cls",
    ("rapidocr", "PP-OCRv6_det_small"): "ppocrv6_det",
    ("rapidocr", "PP-OCRv6_rec_small"): "ppocrv6_rec",
    ("nudenet", "320n"): "yolov8n_320",
}

# Concrete shapes for the dynamic inputs of the PyPI models.
#  * det: rapidocr's config.yaml has limit_side_len 736 / limit_type min and
#    rounds both sides to a multiple of 32 (other sizes fail in Add broadcast);
#    640x640 also works and is ~2x faster.
#  * rec: config rec_img_shape [3, 48, 320]; width is dynamic (T = W / 8).
#  * cls: config cls_image_shape [3, 48, 192].
#  * yolov8n: nudenet runs it at inference_resolution 320 (letterboxed square);
#    sides must be multiples of 32.
_DEFAULT_SHAPES: dict[str, dict[str, list[int]]] = {
    "ppocrv4_det": {"x": [1, 3, 736, 736]},
    "ppocrv4_rec": {"x": [1, 3, 48, 320]},
    "ppocr_mobile_v2_cls": {"x": [1, 3, 48, 192]},
    "ppocrv6_det": {"x": [1, 3, 736, 736]},      # rapidocr 3.x config: the same sizes as v4
    "ppocrv6_rec": {"x": [1, 3, 48, 320]},
    "yolov8n_320": {"images": [1, 3, 320, 320]},
}


def _package_dir(package: str) -> Path | None:
    """Directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _name(source: str, stem: str) -> str:
    return _NAMES.get((source, stem), stem)


def corpus_models(include_missing: bool = False) -> list[CorpusModel]:
    """All corpus models, sorted by (source order, name).

    Models whose package is not installed are skipped, or listed with
    ``path=None`` if ``include_missing`` is true (then with the file names
    known to ship in that package).
    """
    out: list[CorpusModel] = []
    for source, sub, pattern in _SOURCES:
        pkg = _package_dir(source)
        found: list[CorpusModel] = []
        if pkg is not None:
            folder = pkg / sub
            if folder.is_dir():
                files = folder.glob(pattern) if sub == "." else folder.rglob(pattern)
                for f in files:
                    if f.is_file():
                        found.append(CorpusModel(_name(source, f.stem), f.resolve(), source))
        if not found and include_missing:
            found = [CorpusModel(_name(source, s), None, source) for s in _KNOWN_FILES[source]]
        found.sort(key=lambda m: (m.name, str(m.path)))
        out.extend(found)
    return out


def corpus_model(name: str) -> CorpusModel:
    """Look a model up by its corpus name (raises KeyError, with a hint)."""
    for m in corpus_models(include_missing=True):
        if m.name == name:
            if m.path is None:
                raise KeyError(f"corpus model {name!r} not installed; run: {INSTALL_HINT}")
            return m
    raise KeyError(f"unknown corpus model {name!r}")


def default_input_shapes(model: CorpusModel) -> dict[str, list[int]] | None:
    """Concrete feed shapes for a model's dynamic inputs.

    Returns ``None`` for fully static models (all onnx light models take a
    static ``[1, 3, 224, 224]`` float input).
    """
    shapes = _DEFAULT_SHAPES.get(model.name)
    if shapes is None:
        return None
    return {k: list(v) for k, v in shapes.items()}
