"""PP-OCRv4 through RapidOCR, unchanged, on rendered labelled text: FP32 vs ORT vs dfq-onnx (issue 17).

    apt-get install -y fonts-liberation          # fonts-dejavu-core is usually present
    pip install rapidocr-onnxruntime pillow      # with its dependencies (OpenCV, shapely, pyclipper)
    python benchmarks/ocr.py [--lines 500] [--pages 100] [--configs fp32,ort,dfq,dfq-avg6,dfq-avg4.5]

Data (benchmarks/ocr_data.py): `--lines` text lines and `--pages` pages rendered with the Debian
dejavu + liberation fonts from offline prose (seed `--seed`); ORT's calibration images are other
renderings of the same kind (seed `--seed + 1000`): 64 lines for rec, 64 lines (half upside down)
for cls, 16 pages for det, each preprocessed as RapidOCR does.

Configurations: every model of RapidOCR (det PP-OCRv4, cls mobile v2, rec PP-OCRv4) replaced by
  fp32        the shipped models;
  ort         onnxruntime quantize_static (QDQ, per-channel, MinMax, pre-processed) on the real images;
  dfq         `dfq-onnx quantize M -o OUT --input-shape x:...` (default, data-free), det 736 x 736,
              cls 48 x 192, rec 48 x 320;
  dfq-avgB    det and cls as dfq, rec with `--avg-weight-bits B` (data-free mixed precision).
RapidOCR runs with its default config (variable widths and page sizes, character dictionary from
the rec model's metadata): lines through its recognizer (exact match, CER), lines and their 180-degree
rotations through its angle classifier (accuracy), pages through the whole pipeline (CER of the page's
text in reading order). Every compile runs as its own process under /usr/bin/time -v (wall, peak RSS;
no cache). ORT latency: each model's outputs interleaved in one process (median ms). The rec loss
the tool predicts / measures for a mixed plan is read from its report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ocr_data  # noqa: E402
from common import interleaved_latency_ms, machine_info, markdown_table, ort_quantize_static  # noqa: E402
from dfq_onnx.models.corpus import corpus_model  # noqa: E402

MODELS = {"det": "ppocrv4_det", "cls": "ppocr_mobile_v2_cls", "rec": "ppocrv4_rec"}
SHAPES = {"det": "x:1,3,736,736", "cls": "x:1,3,48,192", "rec": "x:1,3,48,320"}
LATENCY_SHAPES = {"det": (1, 3, 736, 736), "cls": (6, 3, 48, 192), "rec": (6, 3, 48, 320)}


def load() -> str:
    return os.getloadavg().__repr__()


def timed(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time -v: wall seconds and peak RSS (MB); raises on failure."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = (float(wall.group(1) or 0), float(wall.group(2)), float(wall.group(3)))
    return {"wall_s": 3600 * h + 60 * m + s, "rss_mb": int(rss.group(1)) / 1024}


# --------------------------------------------------------------------------- calibration data for ORT


def rec_input(img: np.ndarray, width: int = 320) -> np.ndarray:
    """RapidOCR's rec preprocessing at one width (TextRecognizer.resize_norm_img)."""
    import cv2

    h, w = img.shape[:2]
    rw = min(width, int(np.ceil(48 * w / h)))
    x = cv2.resize(img, (rw, 48)).astype(np.float32).transpose(2, 0, 1) / 255.0
    out = np.zeros((3, 48, width), np.float32)
    out[:, :, :rw] = (x - 0.5) / 0.5
    return out


def det_input(img: np.ndarray, side: int = 736) -> np.ndarray:
    import cv2

    x = cv2.resize(img, (side, side)).astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def ort_calib(charset: set[str], seed: int, work: Path) -> dict[str, Path]:
    lines, _ = ocr_data.line_set(64, seed, charset)
    pages, _ = ocr_data.page_set(16, seed, charset)
    rot = [np.ascontiguousarray(im[::-1, ::-1]) if i % 2 else im for i, im in enumerate(lines)]
    arrays = {"rec": np.stack([rec_input(im) for im in lines]),
              "cls": np.stack([rec_input(im, 192) for im in rot]),
              "det": np.stack([det_input(im) for im in pages])}
    paths = {}
    for k, a in arrays.items():
        paths[k] = work / f"calib_{k}.npz"
        np.savez(paths[k], x=a)
    return paths


# --------------------------------------------------------------------------- compiles


def compile_all(configs: list[str], charset, args, work: Path) -> tuple[dict, dict]:
    """Paths of each config's three models, and the cost of each compile."""
    src = {k: str(corpus_model(v).path) for k, v in MODELS.items()}
    paths, costs = {"fp32": dict(src)}, {}
    if "ort" in configs:
        calib = ort_calib(charset, args.seed + 1000, work)
        paths["ort"] = {}
        for k in MODELS:
            out = work / f"ort_{k}.onnx"
            costs[f"ort/{k}"] = timed([sys.executable, __file__, "--ort-quantize", src[k], str(calib[k]),
                                       str(out)])
            paths["ort"][k] = str(out)
    for cfg in [c for c in configs if c.startswith("dfq")]:
        paths[cfg] = {}
        for k in MODELS:
            extra = ["--avg-weight-bits", cfg.split("avg")[1]] if ("avg" in cfg and k == "rec") else []
            if not extra and cfg != "dfq" and "dfq" in paths and k in paths["dfq"]:
                paths[cfg][k] = paths["dfq"][k]
                continue
            out, report = work / f"{cfg}_{k}.onnx", work / f"{cfg}_{k}.json"
            cmd = [str(Path(sys.executable).parent / "dfq-onnx"), "-q", "quantize", src[k], "-o", str(out),
                   "--input-shape", SHAPES[k], "--no-cache", "--report", str(report), *extra]
            costs[f"{cfg}/{k}"] = timed(cmd)
            paths[cfg][k] = str(out)
    return paths, costs


def tool_loss(work: Path, cfg: str, configs: list[str]) -> str:
    """The rec loss the tool predicts / measures for a plan, on its own scoring samples and metric: a
    mixed plan's from its report; the uniform W8A8 plan's is the sensitivity table's base loss (every
    group at W8A8) of a mixed compile, measured on the same samples."""
    mixed = [c for c in configs if "avg" in c]
    name = cfg if "avg" in cfg else (mixed[0] if cfg == "dfq" and mixed else None)
    report = work / f"{name}_rec.json" if name else None
    if report is None or not report.is_file():
        return "-"
    notes = json.loads(report.read_text()).get("notes", {})
    if cfg == "dfq":
        sens = notes.get("sensitivity", {})
        return f"- / {sens['base_loss']:.4g} ({sens.get('metric')})" if "base_loss" in sens else "-"
    alloc = notes.get("allocation", {})
    return f"{alloc['predicted_loss']:.4g} / {alloc['measured_loss']:.4g}" if alloc else "-"


# --------------------------------------------------------------------------- evaluation


def engine(paths: dict):
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(det_model_path=paths["det"], cls_model_path=paths["cls"], rec_model_path=paths["rec"])


def evaluate(eng, lines, texts, pages, page_texts) -> dict:
    t0 = time.perf_counter()
    rec, _ = eng.text_rec(lines)
    hyps = [r[0] for r in rec]
    upside = [np.ascontiguousarray(im[::-1, ::-1]) for im in lines]
    _, cls, _ = eng.text_cls(lines + upside)
    truth = ["0"] * len(lines) + ["180"] * len(lines)
    t1 = time.perf_counter()
    page_hyps = []
    for img in pages:
        res, _ = eng(img)
        page_hyps.append(" ".join(r[1] for r in (res or [])))
    refs = [" ".join(t) for t in page_texts]
    return {"exact": ocr_data.exact(texts, hyps), "cer": ocr_data.cer(texts, hyps),
            "page_cer": ocr_data.cer(refs, page_hyps) if pages else float("nan"),
            "cls_acc": 100.0 * float(np.mean([c[0] == t for c, t in zip(cls, truth)])),
            "lines_s": t1 - t0, "pages_s": time.perf_counter() - t1}


def latencies(paths: dict, configs: list[str], rounds: int) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for k, shape in LATENCY_SHAPES.items():
        models = {}
        for c in configs:
            if paths[c][k] not in models.values():
                models[c] = paths[c][k]
        feeds = {"x": rng.uniform(-1, 1, shape).astype(np.float32)}
        runs = 3 if k == "det" else 10
        out[k] = interleaved_latency_ms(models, feeds, rounds=rounds, runs=runs, warmup=2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="fp32,ort,dfq,dfq-avg6,dfq-avg4.5")
    ap.add_argument("--work", default="/work/assets/ocr/bench")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds")
    ap.add_argument("--ort-quantize", nargs=3, metavar=("MODEL", "NPZ", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ort_quantize:
        model, npz, out = args.ort_quantize
        # ORT's calibrator keeps every batch's activations until it reduces them: at 736 x 736 (det)
        # 16 pages in batches of 8 peaked at 13.5 GB; one page per batch, reduced every 3 batches (ORT
        # 1.32 fails "No data is collected" when the batch count is a multiple of it: 64, 16 are not)
        ort_quantize_static(model, out, dict(np.load(npz)), calib_batch=1,
                            extra_options={"CalibMaxIntermediateOutputs": 3})
        return
    configs = args.configs.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    charset = ocr_data.charset(corpus_model(MODELS["rec"]).path)
    print(machine_info(), "\nload at start", load(), flush=True)
    lines, texts = ocr_data.line_set(args.lines, args.seed, charset)
    pages, page_texts = ocr_data.page_set(args.pages, args.seed, charset)
    paths, costs = compile_all(configs, charset, args, work)
    results = {c: evaluate(engine(paths[c]), lines, texts, pages, page_texts) for c in configs}
    lat = latencies(paths, configs, args.rounds)
    print("load at end", load())
    report(configs, results, costs, lat, work)
    (work / "results.json").write_text(json.dumps({"results": results, "costs": costs, "latency": lat,
                                                   "args": vars(args)}, indent=1))


def report(configs, results, costs, lat, work) -> None:
    rows = [[c, r["exact"], r["cer"], r["page_cer"], r["cls_acc"], tool_loss(work, c, configs)]
            for c, r in results.items()]
    print(markdown_table(["config", "rec line exact %", "rec CER %", "page CER %", "cls acc %",
                          "rec loss predicted / measured"], rows))
    print()
    print(markdown_table(["compile", "wall s", "peak RSS MB"],
                         [[k, v["wall_s"], round(v["rss_mb"])] for k, v in costs.items()]))
    print()
    rows = [[k, *[v.get(c, "=") for c in configs]] for k, v in lat.items()]
    print(markdown_table(["ORT ms (median)", *configs], rows))


if __name__ == "__main__":
    main()
