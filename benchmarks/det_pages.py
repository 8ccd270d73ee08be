"""Page CER of RapidOCR with only its detector swapped (issue 14: how a det compile's accuracy moved).

    python benchmarks/det_pages.py --pages 15 [--lines 0] NAME=DET.onnx [NAME=DET.onnx ...]

Pages rendered by `ocr_data.page_set` (seed `--seed`, the dejavu + liberation fonts, as benchmarks/ocr.py)
go through RapidOCR unchanged (its default page sizes, `engine` of benchmarks/ocr.py) with the shipped
FP32 cls and rec and, per row, the shipped FP32 det or one of the given det models: the page CER (%)
moves with the detector alone. Each det file is evaluated as given (compile it with `dfq-onnx quantize
DET --input-shape x:1,3,736,736 ...`, the size ocr.py uses).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ocr_data  # noqa: E402
from common import markdown_table  # noqa: E402
from dfq_onnx.models.corpus import corpus_model  # noqa: E402
from ocr import MODELS, engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dets", nargs="*", help="NAME=PATH of det models (FP32 is always a row)")
    ap.add_argument("--pages", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = {k: str(corpus_model(v).path) for k, v in MODELS.items()}
    charset = ocr_data.charset(src["rec"])
    pages, page_texts = ocr_data.page_set(args.pages, args.seed, charset)
    refs = [" ".join(t) for t in page_texts]
    rows = []
    for name, path in [("FP32", src["det"]), *(d.split("=", 1) for d in args.dets)]:
        eng, start = engine({**src, "det": path}), time.perf_counter()
        hyps = []
        for img in pages:
            res, _ = eng(img)
            hyps.append(" ".join(r[1] for r in (res or [])))
        rows.append([name, f"{ocr_data.cer(refs, hyps):.2f}", f"{time.perf_counter() - start:.1f}",
                     f"{os.getloadavg()[0]:.1f}"])
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"{args.pages} pages, seed {args.seed}; rec / cls FP32")
    print(markdown_table(["det", "page CER %", "eval s", "load"], rows))


if __name__ == "__main__":
    main()
