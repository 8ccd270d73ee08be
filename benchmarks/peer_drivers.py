"""One peer quantizer's int8 run on an ONNX model, called by benchmarks/peers.py in the peer's OWN venv.

    VENV/bin/python benchmarks/peer_drivers.py PEER MODEL OUT [--calib CALIB.npz]

PEER is one of ort, nncf, quark, aimet. CALIB.npz holds `{input_name: [N, ...] array}` (the samples the
peer calibrates on, fed one sample per batch); without it a peer that needs data exits with an error.
This file imports only numpy, onnx and the peer's own package (ort: benchmarks/common.py, run in the
project's venv), so dfq-onnx never depends on a peer and a peer's venv never needs dfq-onnx. ModelOpt is
not here: peers.py runs its own CLI (`python -m modelopt.onnx.quantization`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def load_calib(path: str | None) -> dict[str, np.ndarray]:
    if path is None:
        sys.exit("this peer needs calibration data: pass --calib CALIB.npz")
    with np.load(path) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def samples(calib: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed dict per calibration sample (batch 1), in order."""
    n = len(next(iter(calib.values())))
    return [{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)]


class Reader:
    """An ORT-style CalibrationDataReader (get_next / rewind) over the samples, without importing ORT's."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.feeds)


def run_ort(model: str, out: str, calib: dict[str, np.ndarray]) -> None:
    """ORT quantize_static as benchmarks/common.py runs it (QDQ, per-channel int8 weights, uint8
    activations, MinMax, quant_pre_process): today's reference in BENCHMARKS.md."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import ort_quantize_static

    ort_quantize_static(model, out, calib, calib_batch=16)


def run_nncf(model: str, out: str, calib: dict[str, np.ndarray]) -> None:
    """NNCF post-training quantization, ONNX backend, default preset; subset_size = every sample."""
    import nncf
    import onnx

    feeds = samples(calib)
    quantized = nncf.quantize(onnx.load(model), nncf.Dataset(feeds), subset_size=len(feeds))
    onnx.save(quantized, out)


def run_quark(model: str, out: str, calib: dict[str, np.ndarray], config: str = "INT8_CNN_DEFAULT") -> None:
    """AMD Quark for ONNX with one of its named default configs (INT8_CNN_DEFAULT: MinMax, QDQ, uint8
    activations, int8 weights; INT8_TRANSFORMER_DEFAULT for encoders), fed by an ORT CalibrationDataReader."""
    from onnxruntime.quantization import CalibrationDataReader
    from quark.onnx import ModelQuantizer
    from quark.onnx.quantization.config import Config, get_default_config

    class QuarkReader(Reader, CalibrationDataReader):
        pass

    quantizer = ModelQuantizer(Config(global_quant_config=get_default_config(config)))
    quantizer.quantize_model(model, out, QuarkReader(samples(calib)))


def run_aimet(model: str, out: str, calib: dict[str, np.ndarray]) -> None:
    """AIMET ONNX QuantizationSimModel with its defaults (int8 weights and activations, min_max), encodings
    computed on the samples, written as a QDQ model by `to_onnx_qdq()` (its defaults)."""
    import onnx
    from aimet_onnx.quantsim import QuantizationSimModel

    sim = QuantizationSimModel(onnx.load(model))
    sim.compute_encodings(samples(calib))
    onnx.save(sim.to_onnx_qdq(), out)


PEERS = {"ort": run_ort, "nncf": run_nncf, "quark": run_quark, "aimet": run_aimet}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", choices=sorted(PEERS))
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--calib", help=".npz of {input name: [N, ...] float32 samples}")
    ap.add_argument("--config", help="quark: the named default config (default INT8_CNN_DEFAULT)")
    args = ap.parse_args()
    np.random.seed(0)
    extra = {"config": args.config} if args.config else {}
    PEERS[args.peer](args.model, args.out, load_calib(args.calib), **extra)
    if not Path(args.out).exists():
        sys.exit(f"{args.peer} wrote no {args.out}")


if __name__ == "__main__":
    main()
