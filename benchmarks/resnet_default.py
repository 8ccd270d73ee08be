"""The shared ResNets through the default pipeline: a quick did-it-get-worse check after a merge.

    python benchmarks/resnet_default.py [--models resnet20,resnet56] [--configs default,w8a8]
                                        [--python OTHER_PYTHON ...]

Per model and configuration, `dfq-onnx quantize` (CLI, its own process under /usr/bin/time -v: wall,
peak RSS; no cache) and top-1 on the 10,000 CIFAR-10 test images:
  default   no flag (W8, synthetic calibration, activation precision decided per group)
  w8a8      --act-bits 8 (the uniform plan)
  w4a8      --weight-bits 4 --act-bits 8 (uniform W4A8; only when asked for with --configs)
Each `--python` interpreter (another checkout's venv, e.g. main's) compiles the same configurations in
the same run; the table adds whether its output is byte-identical to this checkout's.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, load_cifar, machine_info, markdown_table, time_v_figures, top1  # noqa: E402

CONFIGS = {"default": [], "w8a8": ["--act-bits", "8"], "w4a8": ["--weight-bits", "4", "--act-bits", "8"]}


def compile_cli(python: str, model: Path, out: Path, extra: list[str]) -> dict:
    cmd = ["/usr/bin/time", "-v", python, "-m", "dfq_onnx.cli", "-q", "quantize", str(model), "-o", str(out),
           "--no-cache", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"})
    if res.returncode != 0:
        raise SystemExit(f"compile failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    wall, rss = time_v_figures(res.stderr)
    return {"wall_s": wall, "rss_mb": rss / (1 << 20),
            "sha": hashlib.sha256(out.read_bytes()).hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--configs", default="default,w8a8", help=f"some of {', '.join(CONFIGS)}")
    ap.add_argument("--python", action="append", default=[], help="another interpreter to compare")
    args = ap.parse_args()
    print(machine_info())
    x, y = load_cifar("test")
    pythons = [sys.executable, *args.python]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = Path(SHARED_DATA) / f"{name}_cifar10.onnx"
            for cfg in args.configs.split(","):
                extra = CONFIGS[cfg]
                first = None
                for i, py in enumerate(pythons):
                    out = Path(tmp) / f"{name}_{cfg}_{i}.onnx"
                    cost = compile_cli(py, model, out, extra)
                    first = first or cost["sha"]
                    rows.append([name, cfg, py, round(top1(str(out), x, y), 2), round(cost["wall_s"], 1),
                                 round(cost["rss_mb"]), "yes" if cost["sha"] == first else "no"])
    print(markdown_table(["model", "config", "python", "top-1 %", "compile wall s", "peak RSS MB",
                          "same bytes as first"], rows))


if __name__ == "__main__":
    main()
