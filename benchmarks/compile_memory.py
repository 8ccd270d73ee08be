"""Compile memory against a reference build (issue 14): wall, peak RSS and byte-identity, paired.

    python benchmarks/compile_memory.py --ref /work/main/.venv/bin/dfq-onnx
        [--models ppocrv4_rec,ppocrv4_det,resnet20,ppocr_cls,efficientnet_lite0] [--work DIR]

Per model of `zoo.py`: `dfq-onnx -q quantize MODEL [--input-shape ...] -o OUT --no-cache` with the
reference executable (`--ref`, e.g. main's venv) and then with this checkout's, back to back (the pair
shares the machine's load), each under `/usr/bin/time -v`; the table gives both walls and peak RSS, the
1-minute load before each run, and whether the two outputs are byte-identical (`cmp`). Data-free
defaults throughout (synthetic calibration, the activation decision, the latency check).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, time_v_figures  # noqa: E402
from zoo import zoo  # noqa: E402

GB = 1 << 30
DEFAULT = "ppocrv4_rec,ppocrv4_det,resnet20,ppocr_cls,efficientnet_lite0"


def compile_once(exe: str, m, out: Path) -> tuple[float | None, int | None, float]:
    shape = [a for name, s in m.hints.items() for a in ("--input-shape", f"{name}:{','.join(map(str, s))}")]
    load = os.getloadavg()[0]
    cmd = ["nice", "-n", "5", "/usr/bin/time", "-v", exe, "-q", "quantize", str(m.path), *shape,
           "-o", str(out), "--no-cache"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{m.name}: {exe} failed: {res.stderr.strip().splitlines()[-1]}")
    wall, rss = time_v_figures(res.stderr)
    return wall, rss, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="the reference build's dfq-onnx executable")
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--work", default="compile_memory_work")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    here = shutil.which("dfq-onnx") or str(Path(sys.executable).with_name("dfq-onnx"))
    models = {m.name: m for m in zoo()}
    rows = []
    for name in args.models.split(","):
        m = models[name]
        if not m.available:
            rows.append([name, "model not installed", "-", "-", "-", "-"])
            continue
        ref, new = work / f"{name}.ref.onnx", work / f"{name}.new.onnx"
        rw, rr, rl = compile_once(args.ref, m, ref)
        nw, nr, nl = compile_once(here, m, new)
        same = filecmp.cmp(ref, new, shallow=False)
        rows.append([name, f"{rw:.1f} / {nw:.1f}", f"{rr / GB:.2f} / {nr / GB:.2f}", f"{rl:.1f} / {nl:.1f}",
                     "yes" if same else "**no**", f"{nr / rr:.2f}"])
        print(markdown_table(["model", "wall s ref / new", "peak RSS GiB ref / new", "load ref / new",
                              "byte-identical", "RSS new / ref"], rows[-1:]), flush=True)
    print(markdown_table(["model", "wall s ref / new", "peak RSS GiB ref / new", "load ref / new",
                          "byte-identical", "RSS new / ref"], rows))


if __name__ == "__main__":
    main()
