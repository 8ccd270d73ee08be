"""Render ResNet-56's HTML report (mixed plan) in headless Chromium and save a PNG screenshot.

    apt-get install -y chromium
    python benchmarks/report_screenshot.py [--avg-weight-bits 5] [--out docs/report_resnet56.png]

Steps: `dfq-onnx quantize resnet56 --avg-weight-bits 5 --report report.html` (synthetic samples and the
sensitivity table come from the cache when present), then `chromium --headless --screenshot` of the
file. Chromium runs with networking pointed at a dead proxy, so a report that needed any external
resource would render broken; the script also checks the page holds no external URL.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESNET56, require_shared  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("[report_screenshot] no Chromium found; apt-get install -y chromium")


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4200) -> float:
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               f"--window-size={width},{height}", f"--screenshot={png}", html.resolve().as_uri()]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0 or not png.is_file():
            sys.exit(f"[report_screenshot] chromium failed ({proc.returncode}): {proc.stderr[-500:]}")
        seconds = time.perf_counter() - start
    _crop_blank_bottom(png)
    return seconds


def _crop_blank_bottom(png: Path, margin: int = 24) -> None:
    """The window is taller than the page: cut the white rows below the content."""
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    rows = np.flatnonzero((np.asarray(img) < 250).any(axis=(1, 2)))
    if rows.size:
        img.crop((0, 0, img.width, min(img.height, int(rows[-1]) + margin))).save(png, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--avg-weight-bits", default="5")
    ap.add_argument("--out", default=str(REPO / "docs" / "report_resnet56.png"))
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--html", default=None, help="keep the HTML report here")
    args = ap.parse_args()
    require_shared(["resnet56_cifar10.onnx"])
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(args.html) if args.html else Path(tmp) / "report.html"
        cmd = [sys.executable, "-m", "dfq_onnx.cli", "-q", "quantize", str(RESNET56), "-o",
               str(Path(tmp) / "q.onnx"),
               "--avg-weight-bits", args.avg_weight_bits, "--report", str(html)]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        compile_s = time.perf_counter() - start
        text = html.read_text()
        external = re.findall(r"""(?:src|href)=["']?(?!data:)[a-z]+://""", text) + re.findall(r"url\(", text)
        if external:
            sys.exit(f"[report_screenshot] the report references external resources: {external[:3]}")
        render_s = screenshot(html, Path(args.out))
    print(f"report {len(text) / 1e3:.0f} kB, {text.count('<img')} embedded plots, no external URL; "
          f"compile {compile_s:.1f} s, headless Chromium render + screenshot {render_s:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
