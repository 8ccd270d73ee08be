"""PP-OCRv4 through RapidOCR, unchanged, on rendered labelled text: FP32 vs ORT vs dfq-onnx (issue 17).

    apt-get install -y fonts-liberation          # fonts-dejavu-core is usually present
    pip install rapidocr-onnxruntime pillow      # with its dependencies (OpenCV, shapely, pyclipper)
    python benchmarks/ocr.py [--lines 500] [--pages 100] [--configs fp32,ort,dfq,dfq-avg6,...]
                             [--rec-only dfq-w8a8,...] [--resume] [--work DIR]

Data (benchmarks/ocr_data.py): `--lines` text lines and `--pages` pages rendered with the Debian
dejavu + liberation fonts from offline prose (seed `--seed`); ORT's calibration images are other
renderings of the same kind (seed `--seed + 1000`): 64 lines for rec, 64 lines (half upside down)
for cls, 16 pages for det, each preprocessed as RapidOCR does.

`--family v6` runs PP-OCRv6 small det / rec (the rapidocr 3.x wheel: `pip install --no-deps rapidocr`)
in place of v4's, with the same cls, renderings and RapidOCR.
`--quantize cls,rec` leaves det FP32 in every row (its page CER is then that of det FP32).
Configurations: every model of RapidOCR (det PP-OCRv4, cls mobile v2, rec PP-OCRv4) replaced by
  fp32          the shipped models;
  ort           onnxruntime quantize_static (QDQ, per-channel, MinMax, pre-processed) on the real images;
  dfq           `dfq-onnx quantize M -o OUT --input-shape x:...` (the default: data-free, W8, activation
                precision decided per group), det 736 x 736, cls 48 x 192, rec 48 x 320;
  dfq-w8a8      the same with `--act-bits 8` (uniform W8A8);
  dfq-analytic  the same with `--calib analytic` (BN statistics, no data);
  dfq-no-twin   the same with `--no-twin-ranges` (the line drawings' ranges only: the default before
                session 11);
  dfq-real      the same with `--calib` the 64 / 64 / 16 real images ORT calibrates on;
  dfq-avgB      det and cls as dfq, rec with `--avg-weight-bits B` (data-free mixed precision).
A config varying rec only (dfq-avgB, and those given to `--rec-only`) keeps dfq's det and cls and is
evaluated on the lines through rec only (its cls and page figures would be dfq's models again).
`--resume` keeps the configs WORK/results.json already holds (a run stopped early goes on).
RapidOCR runs with its default config (variable widths and page sizes, character dictionary from
the rec model's metadata): lines through its recognizer (exact match, CER), lines and their 180-degree
rotations through its angle classifier (accuracy), pages through the whole pipeline (CER of the page's
text in reading order). Every compile runs as its own process under /usr/bin/time -v (wall, peak RSS,
load average before it; no cache). Each configuration is evaluated as soon as its models exist and the
results so far are written to WORK/results.json (a run stopped early keeps its finished rows). ORT
latency: each model's outputs interleaved in one process (median ms). The rec loss the tool measures
(on its own scoring samples and metric) is read from its reports: the default compile's all-A8 and
chosen plans, a mixed plan's predicted / measured loss.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ocr_data  # noqa: E402
from common import (  # noqa: E402
    interleaved_latency_ms,
    machine_info,
    markdown_table,
    ort_quantize_static,
    time_v_figures,
    tree_rss,
)
from dfq_onnx.models.corpus import corpus_model  # noqa: E402

MODELS = {"det": "ppocrv4_det", "cls": "ppocr_mobile_v2_cls", "rec": "ppocrv4_rec"}
# --family v6: PP-OCRv6 small det / rec of the rapidocr 3.x wheel (held-out models: the tool was built
# against v4), run through the same RapidOCR (its v6 config has v4's pre- and post-processing values)
FAMILIES = {"v4": MODELS, "v6": {**MODELS, "det": "ppocrv6_det", "rec": "ppocrv6_rec"}}
SHAPES = {"det": "x:1,3,736,736", "cls": "x:1,3,48,192", "rec": "x:1,3,48,320"}
LATENCY_SHAPES = {"det": (1, 3, 736, 736), "cls": (6, 3, 48, 192), "rec": (6, 3, 48, 320)}


def load() -> str:
    return os.getloadavg().__repr__()


def timed(cmd: list[str], max_rss_gb: float = 6.0) -> dict:
    """Run `cmd` under /usr/bin/time -v: wall s, peak RSS (MB), 1-min load before. A run past
    `max_rss_gb` (the machine is shared) is stopped and raises, as does a failing one."""
    before = round(os.getloadavg()[0], 1)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=err,
                                text=True, start_new_session=True)
        while proc.poll() is None:
            time.sleep(0.5)
            rss = tree_rss(proc.pid)
            if rss > max_rss_gb * (1 << 30):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"stopped at {rss / (1 << 30):.1f} GB RSS after "
                                   f"{time.perf_counter() - start:.0f} s: {' '.join(cmd)}")
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    wall, rss = time_v_figures(stderr)
    return {"wall_s": wall, "rss_mb": rss / (1 << 20), "load": before}


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


FLAGS = {"dfq": [], "dfq-w8a8": ["--act-bits", "8"], "dfq-analytic": ["--calib", "analytic"],
         "dfq-no-twin": ["--no-twin-ranges"]}


def compile_config(cfg: str, src: dict, calib: dict, paths: dict, work: Path, rec_only: set,
                   quantized: set = frozenset(MODELS), flags: tuple = ()) -> dict:
    """Compile the three models of `cfg` (reusing the default's det / cls for a rec-only variant: the
    mixed ones and those in `rec_only`; a model not in `quantized` stays FP32; `flags` added to every
    dfq-onnx compile); returns the cost of each compile."""
    costs, paths[cfg] = {}, {k: src[k] for k in MODELS if k not in quantized}
    if cfg == "ort":
        for k in sorted(quantized):
            out = work / f"ort_{k}.onnx"
            costs[f"ort/{k}"] = timed([sys.executable, __file__, "--ort-quantize", src[k],
                                       str(calib[k]), str(out)])
            paths["ort"][k] = str(out)
        return costs
    for k in [k for k in MODELS if k in quantized]:
        if ("avg" in cfg or cfg in rec_only) and k != "rec" and k in paths.get("dfq", {}):
            paths[cfg][k] = paths["dfq"][k]
            continue
        extra = (["--avg-weight-bits", cfg.split("avg")[1]] if "avg" in cfg else
                 ["--calib", str(calib[k])] if cfg == "dfq-real" else FLAGS[cfg])
        out, report = work / f"{cfg}_{k}.onnx", work / f"{cfg}_{k}.json"
        cmd = [str(Path(sys.executable).parent / "dfq-onnx"), "-q", "quantize", src[k],
               "-o", str(out), "--input-shape", SHAPES[k], "--no-cache", "--report", str(report), *extra,
               *flags]
        costs[f"{cfg}/{k}"] = timed(cmd)
        paths[cfg][k] = str(out)
    return costs


def tool_loss(work: Path, cfg: str) -> str:
    """The rec loss the tool measures for a plan, on its own scoring samples and metric: the default
    compile's report holds the all-A8 plan's (dfq-w8a8's plan) and the chosen plan's; a mixed compile's
    report its plan's predicted / measured loss."""
    name = "dfq" if cfg in ("dfq", "dfq-w8a8") else cfg
    report = work / f"{name}_rec.json"
    if not report.is_file() or cfg in ("dfq-analytic", "dfq-real"):
        return "-"
    notes = json.loads(report.read_text()).get("notes", {})
    if "avg" in cfg:
        alloc = notes.get("allocation", {})
        return f"{alloc['predicted_loss']:.4g} / {alloc['measured_loss']:.4g}" if alloc else "-"
    measured = notes.get("activations", {}).get("measured")
    if not measured:
        return "-"
    return f"- / {measured['all_base' if cfg == 'dfq-w8a8' else 'chosen']:.4g}"


# --------------------------------------------------------------------------- evaluation


def engine(paths: dict):
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(det_model_path=paths["det"], cls_model_path=paths["cls"], rec_model_path=paths["rec"])


def evaluate(eng, lines, texts, pages, page_texts, rec_only: bool = False) -> dict:
    """Lines through rec; unless `rec_only` (det and cls are the default's: their figures are dfq's),
    lines and their rotations through cls and the pages through the whole pipeline."""
    t0 = time.perf_counter()
    rec, _ = eng.text_rec(lines)
    hyps = [r[0] for r in rec]
    if rec_only:
        return {"exact": ocr_data.exact(texts, hyps), "cer": ocr_data.cer(texts, hyps),
                "page_cer": "= dfq", "cls_acc": "= dfq", "lines_s": time.perf_counter() - t0, "pages_s": 0.0}
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
    ap.add_argument("--configs", default="fp32,ort,dfq,dfq-w8a8,dfq-avg6,dfq-avg4.5,dfq-analytic,dfq-real")
    ap.add_argument("--work", default="/work/assets/ocr/bench")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds")
    ap.add_argument("--rec-only", default="", help="configs that vary rec only (det / cls from dfq)")
    ap.add_argument("--quantize", default="det,cls,rec",
                    help="models the ort / dfq configs quantize (the others stay FP32 in every row)")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="v4",
                    help="which PP-OCR det / rec (v6: pip install --no-deps rapidocr)")
    ap.add_argument("--dfq-flags", default="", help="extra dfq-onnx flags of every compile (e.g. '--gptq')")
    ap.add_argument("--resume", action="store_true", help="keep the finished configs of WORK/results.json")
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
    names = FAMILIES[args.family]
    charset = ocr_data.charset(corpus_model(names["rec"]).path)
    print(machine_info(), "\nload at start", load(), flush=True)
    lines, texts = ocr_data.line_set(args.lines, args.seed, charset)
    pages, page_texts = ocr_data.page_set(args.pages, args.seed, charset)
    src = {k: str(corpus_model(v).path) for k, v in names.items()}
    calib = ort_calib(charset, args.seed + 1000, work) if {"ort", "dfq-real"} & set(configs) else {}
    paths, costs, results = {"fp32": dict(src)}, {}, {}
    rec_only = set(filter(None, args.rec_only.split(",")))
    if args.resume and (work / "results.json").is_file():
        done = json.loads((work / "results.json").read_text())
        results, costs = done["results"], done["costs"]
        for c in results:
            paths[c] = {k: (src[k] if c == "fp32" else str(work / f"{c}_{k}.onnx")
                            if (work / f"{c}_{k}.onnx").is_file() else str(work / f"dfq_{k}.onnx"))
                        for k in MODELS}
    for c in [c for c in configs if c not in results]:
        try:
            quantized = set(args.quantize.split(","))
            if c != "fp32":
                costs.update(compile_config(c, src, calib, paths, work, rec_only, quantized,
                                                tuple(args.dfq_flags.split())))
        except RuntimeError as exc:       # stopped (memory) or failed: the row says so, the run goes on
            print(c, "not compiled:", str(exc)[:400], flush=True)
            paths.pop(c, None)
            continue
        results[c] = evaluate(engine(paths[c]), lines, texts, pages, page_texts,
                              rec_only="avg" in c or c in rec_only)
        results[c]["load_after"] = load()
        print(c, {k: round(v, 2) if isinstance(v, float) else v for k, v in results[c].items()},
              {k: v for k, v in costs.items() if k.startswith(c + "/")}, flush=True)
        _save(work, results, costs, {}, args)
    lat = latencies(paths, [c for c in configs if c in paths], args.rounds)
    print("load at end", load())
    report(configs, results, costs, lat, work)
    _save(work, results, costs, lat, args)


def _save(work: Path, results, costs, lat, args) -> None:
    (work / "results.json").write_text(json.dumps({"results": results, "costs": costs, "latency": lat,
                                                   "args": vars(args)}, indent=1))


def report(configs, results, costs, lat, work) -> None:
    rows = [[c, r["exact"], r["cer"], r["page_cer"], r["cls_acc"], tool_loss(work, c)]
            for c, r in results.items()]
    print(markdown_table(["config", "rec line exact %", "rec CER %", "page CER %", "cls acc %",
                          "rec loss predicted / measured"], rows))
    print()
    print(markdown_table(["compile", "wall s", "peak RSS MB", "load before"],
                         [[k, v["wall_s"], round(v["rss_mb"]), v["load"]] for k, v in costs.items()]))
    print()
    rows = [[k, *[v.get(c, "=") for c in configs]] for k, v in lat.items()]
    print(markdown_table(["ORT ms (median)", *configs], rows))


if __name__ == "__main__":
    main()
