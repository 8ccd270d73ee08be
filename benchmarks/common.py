"""Shared helpers for the benchmark scripts in ``benchmarks/``.

Imported by sibling scripts as ``from common import ...`` (this module does not
import itself as a package). Everything here is deliberately small and
dependency-free beyond numpy / onnx / onnxruntime (and dfq_onnx's timing loop).

Data lives outside the repository in ``<repo>/../shared/data`` (see
:data:`SHARED_DATA`): the CIFAR-10 ResNet-20/56 ONNX models (opset 17, BN
unfused, input ``input`` [N,3,32,32] float32, output ``logits`` [N,10]) and the
``cifar10_test.npz`` / ``cifar10_calib.npz`` image sets (uint8 NHWC RGB).
"""

from __future__ import annotations

import collections
import datetime
import functools
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from dfq_onnx.backends.latency import interleaved_medians, median_ms

# --------------------------------------------------------------------------- #
# Shared data
# --------------------------------------------------------------------------- #

SHARED_DATA: Path = Path(__file__).resolve().parents[2] / "shared" / "data"

RESNET20 = SHARED_DATA / "resnet20_cifar10.onnx"
RESNET56 = SHARED_DATA / "resnet56_cifar10.onnx"

CIFAR_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
CIFAR_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_REQUIRED_FILES = (
    "resnet20_cifar10.onnx",
    "resnet56_cifar10.onnx",
    "cifar10_test.npz",
    "cifar10_calib.npz",
)


def require_shared(files: Iterable[str] = _REQUIRED_FILES) -> Path:
    """Exit with a clear message if the shared data directory (or a file) is missing."""
    missing = [f for f in files if not (SHARED_DATA / f).is_file()]
    if not SHARED_DATA.is_dir() or missing:
        what = "directory is missing" if not SHARED_DATA.is_dir() else f"missing files: {', '.join(missing)}"
        sys.exit(
            f"[benchmarks] shared data not available at {SHARED_DATA} ({what}).\n"
            "Expected resnet20/56_cifar10.onnx and cifar10_{test,calib}.npz in "
            "<repo>/../shared/data; these benchmarks cannot run without them."
        )
    return SHARED_DATA


def preprocess(images_nhwc_u8: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW, (x/255 - mean)/std with ImageNet stats."""
    x = images_nhwc_u8.astype(np.float32) / 255.0
    x = (x - CIFAR_MEAN) / CIFAR_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def load_cifar(split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 ``split`` ('test' or 'calib'), preprocessed to NCHW float32.

    Returns ``(x, labels)``; ``n`` keeps only the first ``n`` samples.
    """
    if split not in ("test", "calib"):
        raise ValueError(f"split must be 'test' or 'calib', got {split!r}")
    require_shared([f"cifar10_{split}.npz"])
    with np.load(SHARED_DATA / f"cifar10_{split}.npz") as z:
        images = z["images"]
        labels = z["labels"]
    if n is not None:
        images, labels = images[:n], labels[:n]
    return preprocess(images), labels.astype(np.int64)


def gaussian_calib(n: int, shape: Sequence[int] = (3, 32, 32), seed: int = 0) -> np.ndarray:
    """Standard-normal "noise" calibration inputs of shape ``(n, *shape)``, float32.

    ``shape`` may also be given including the batch dim (``(n, 3, 32, 32)``).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        shape = shape[1:]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape), dtype=np.float32)


def write_input_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Save ``{input_name: array}`` with ``np.savez`` (uncompressed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


# --------------------------------------------------------------------------- #
# Running models
# --------------------------------------------------------------------------- #


def session(
    model_path: str | os.PathLike,
    threads: int = 2,
    optimized_path: str | None = None,
) -> ort.InferenceSession:
    """CPU InferenceSession with ORT_ENABLE_ALL and ``threads`` intra-op threads, whose idle threads do
    not spin. A benchmark keeps several sessions alive and times them in turn: with ORT's default
    spinning, the threads of the session that ran last spin on the cores the next one runs on (2 cores:
    ResNet-20 b32 dfq / ORT ratios 0.46-2.14 round to round, 0.92-1.09 without spinning, same files;
    BENCHMARKS.md, session 21). dfq_onnx's own timing sessions (backends/cpu_work.py) run so too."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])


def _as_session(model_or_sess, threads: int = 2) -> ort.InferenceSession:
    if isinstance(model_or_sess, ort.InferenceSession):
        return model_or_sess
    return session(model_or_sess, threads=threads)


def run_batched(
    model_path_or_session,
    feeds: Mapping[str, np.ndarray],
    batch: int = 500,
) -> np.ndarray:
    """Run in chunks of ``batch`` along axis 0 and concatenate the first output."""
    sess = _as_session(model_path_or_session)
    n = len(next(iter(feeds.values())))
    outs = []
    for s in range(0, n, batch):
        chunk = {k: v[s : s + batch] for k, v in feeds.items()}
        outs.append(sess.run(None, chunk)[0])
    return np.concatenate(outs, axis=0)


def top1(model_path, x: np.ndarray, labels: np.ndarray, input_name: str = "input", batch: int = 500) -> float:
    """Top-1 accuracy in percent (``model_path`` may also be a session)."""
    logits = run_batched(model_path, {input_name: x}, batch=batch)
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean() * 100.0)


def output_sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10*log10(sum ref^2 / sum (ref-test)^2) in dB; inf if identical."""
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    noise = float(np.sum((ref - test) ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(float(np.sum(ref**2)) / noise))


# --------------------------------------------------------------------------- #
# ONNX Runtime static quantization baseline
# --------------------------------------------------------------------------- #


class DictCalibReader(CalibrationDataReader):
    """CalibrationDataReader over ``{input_name: array}`` yielding batches of ``batch``."""

    def __init__(self, calib: Mapping[str, np.ndarray], batch: int = 64):
        self._calib = {k: np.ascontiguousarray(v) for k, v in calib.items()}
        self._n = len(next(iter(self._calib.values())))
        self._batch = int(batch)
        self._pos = 0

    def get_next(self):
        if self._pos >= self._n:
            return None
        s = self._pos
        self._pos += self._batch
        return {k: v[s : s + self._batch] for k, v in self._calib.items()}

    def rewind(self):
        self._pos = 0



def ort_quantize_static(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib: Mapping[str, np.ndarray],
    weight_bits: int = 8,
    per_channel: bool = True,
    act_type: str = "uint8",
    calib_batch: int = 64,
    pre_process: bool = True,
    extra_options: Mapping | None = None,
) -> Path:
    """Baseline: ``onnxruntime.quantization.quantize_static`` (QDQ, MinMax).

    Activations QUInt8 (``act_type="uint8"``) or QInt8 (``"int8"``); weights
    QInt8 for ``weight_bits=8`` or QInt4 for ``weight_bits=4``; per-channel
    weights by default. Calibration reads ``calib`` in batches of
    ``calib_batch`` (MinMax takes the global min/max, so the batch size does
    not change the ranges).

    Pre-processing (``pre_process=True``, default): the fp32 model is first
    run through ``onnxruntime.quantization.shape_inference.quant_pre_process``
    (symbolic + ONNX shape inference and ORT graph optimisation), as the ORT
    quantization docs / the "Please consider pre-processing" warning
    recommend. On these BN-unfused ResNets its optimisation step folds
    BatchNormalization into Conv, so weights are quantised post-fold and
    Conv+Relu outputs get one uint8 range. Without it, BN stays a float op
    between QLinearConv and the next Q, i.e. the Conv output is quantised
    at pre-BN ranges; that is much worse at 4 bit. Measured ResNet-20 top-1
    (ORT 1.32, 1000 real calib images): W8A8 81.26 with / 80.83 without,
    W4A8 70.24 with / 62.86 without; ResNet-56 W4A8 80.46 with / 81.54
    without. The W4A8 reference figures (70.08, 80.57) match the
    pre-processed path; the W8A8 reference (80.71) matches neither exactly.
    Pass ``pre_process=False`` for the raw-graph variant. Where ORT's symbolic shape inference fails
    (it asserts on Paddle's non-zero-axis shape Concats) pre-processing runs without it, as ORT's error
    message suggests.

    Per-channel weights need opset 13 (DequantizeLinear's ``axis``): ORT 1.32 writes the attribute on
    an opset 11/12 model anyway (an invalid model ORT then refuses to load), so such models (Paddle
    exports) are converted to opset 13 first.

    4-bit: ``QuantType.QInt4`` needs opset 21 for standard-domain Q/DQ. ORT
    1.32 does *not* upgrade the opset for 4-bit weights; on an opset<21 model
    it silently switches the Q/DQ ops to the ``com.microsoft`` domain
    instead. To keep standard ONNX Q/DQ we upgrade the model to opset 21 with
    ``onnx.version_converter`` into a temp file first.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if weight_bits not in (4, 8):
        raise ValueError(f"weight_bits must be 4 or 8, got {weight_bits}")
    if act_type not in ("uint8", "int8"):
        raise ValueError(f"act_type must be 'uint8' or 'int8', got {act_type!r}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    act_q = QuantType.QUInt8 if act_type == "uint8" else QuantType.QInt8
    w_q = QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4

    with tempfile.TemporaryDirectory(prefix="bench_ortq_") as td:
        model_in = Path(fp32_path)
        if pre_process:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre_path = Path(td) / "preprocessed.onnx"
            try:
                quant_pre_process(str(model_in), str(pre_path))
            except Exception:  # noqa: BLE001 - ORT's symbolic shape inference asserts on some exports
                quant_pre_process(str(model_in), str(pre_path), skip_symbolic_shape=True)
            model_in = pre_path
        need = 21 if weight_bits == 4 else 13 if per_channel else 0
        m = onnx.load(str(model_in))
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < need:
            m = onnx.version_converter.convert_version(m, need)
            model_in = Path(td) / f"opset{need}.onnx"
            onnx.save(m, str(model_in))
        quantize_static(
            str(model_in),
            str(out_path),
            DictCalibReader(calib, batch=calib_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=act_q,
            weight_type=w_q,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(extra_options or {}),
        )
    return out_path


# --------------------------------------------------------------------------- #
# Latency / graph inspection
# --------------------------------------------------------------------------- #

_ORT_TO_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def random_feeds(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random input for a model with one float input whose dim 0 is the (dynamic) batch."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"random_feeds needs a single-input model, got {[i.name for i in inputs]}")
    inp = inputs[0]
    dtype = _ORT_TO_NP.get(inp.type)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        raise ValueError(f"input {inp.name} is {inp.type}, expected a float tensor")
    shape = list(inp.shape)
    if shape and isinstance(shape[0], int) and shape[0] != batch:
        raise ValueError(f"input {inp.name} has a static batch dim {shape[0]} != {batch}")
    shape[0] = batch
    if any(not isinstance(d, int) for d in shape[1:]):
        raise ValueError(f"input {inp.name} has dynamic non-batch dims {inp.shape}")
    rng = np.random.default_rng(seed)
    return {inp.name: rng.standard_normal(shape).astype(dtype)}


def latency_ms(
    model_path,
    feeds_or_batch: Mapping[str, np.ndarray] | int,
    runs: int = 30,
    warmup: int = 5,
    threads: int = 2,
) -> float:
    """Median wall-clock latency (ms) of one ``sess.run`` call.

    ``feeds_or_batch`` is either a feed dict or a batch size (random normal input
    is generated for a single float input with a dynamic batch dim).
    """
    sess = _as_session(model_path, threads=threads)
    feeds = random_feeds(sess, feeds_or_batch) if isinstance(feeds_or_batch, int) else dict(feeds_or_batch)
    return float(median_ms(lambda: sess.run(None, feeds), runs, warmup))


def interleaved_latency_ms(paths: Mapping[str, str | os.PathLike], feeds: Mapping[str, np.ndarray],
                           rounds: int, runs: int, warmup: int, threads: int = 2) -> dict[str, float]:
    """Per model, the median over `rounds` interleaved rounds of its median ms per ``sess.run`` (one
    session per model; see dfq_onnx.backends.latency.interleaved_medians)."""
    sessions = {k: session(p, threads=threads) for k, p in paths.items()}
    calls = {k: functools.partial(s.run, None, dict(feeds)) for k, s in sessions.items()}
    return {k: float(statistics.median(v))
            for k, v in interleaved_medians(calls, rounds, runs, warmup).items()}


def optimized_op_counts(model_path: str | os.PathLike, threads: int = 1) -> collections.Counter:
    """Counter of op types in ORT's optimised (ORT_ENABLE_ALL, CPU EP) graph.

    Uses ``SessionOptions.optimized_model_filepath``; the saved graph shows
    the fused kernels (QLinearConv, QLinearAdd, QGemm,
    QLinearGlobalAveragePool, ...). Keys are plain op_type (no domain).
    """
    with tempfile.TemporaryDirectory(prefix="bench_opt_") as td:
        out = os.path.join(td, "optimized.onnx")
        session(model_path, threads=threads, optimized_path=out)
        m = onnx.load(out, load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.2f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    """GitHub markdown table; floats are formatted with two decimals."""
    rows = [[_fmt(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row has {len(r)} cells, expected {len(headers)}: {r}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> str:
    """One-line description of the machine and library versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return (
        f"CPU: {_cpu_model()} ({os.cpu_count()} logical cores, {usable} usable); "
        f"Python {platform.python_version()}; onnxruntime {ort.__version__}; "
        f"onnx {onnx.__version__}; numpy {np.__version__}; "
        f"date {datetime.date.today().isoformat()}"
    )


__all__ = [
    "SHARED_DATA",
    "RESNET20",
    "RESNET56",
    "require_shared",
    "preprocess",
    "load_cifar",
    "gaussian_calib",
    "write_input_npz",
    "session",
    "run_batched",
    "top1",
    "output_sqnr_db",
    "ort_quantize_static",
    "random_feeds",
    "latency_ms",
    "interleaved_latency_ms",
    "optimized_op_counts",
    "markdown_table",
    "machine_info",
]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (/proc): what a compile holds right now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def time_v_figures(text: str) -> tuple[float | None, int | None]:
    """(wall seconds, peak RSS bytes) from `/usr/bin/time -v`'s report (None where it is missing)."""
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    seconds = None
    if wall:
        h, m, sec = (float(x) if x else 0.0 for x in wall.groups())
        seconds = 3600 * h + 60 * m + sec
    return seconds, int(rss.group(1)) * 1024 if rss else None
