"""What the LSTM form buys on ORT CPU: a float LSTM against the DynamicQuantizeLSTM dfq-onnx writes for it
(backends/recurrent.py), the number behind targets/ort-cpu.toml's `[forms] LSTM`.

    model   X [T, N, I] -> LSTM (hidden H, D directions; random weights, scaled 1 / sqrt(fan-in)) -> Y
    plans   float LSTM;  the same node as DynamicQuantizeLSTM (int8 W / R per gate row)

at the sizes of the held-out models (Silero VAD: H 128, one step per call or a sequence of frames;
Resemblyzer: H 256, 160 frames; a CRNN's BiLSTM: H 512, ~20-60 steps), 1 and 2 threads, sessions
without spinning, interleaved rounds (benchmarks/common.py), median ms per call.

Usage: python benchmarks/recurrent_forms.py [--rounds 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import interleaved_latency_ms, markdown_table  # noqa: E402
from dfq_onnx.backends import recurrent  # noqa: E402
from dfq_onnx.core import ir  # noqa: E402

# (hidden, input, directions, steps, batch)
SIZES = [(64, 64, 1, 1, 1), (128, 128, 1, 1, 1), (128, 128, 1, 312, 1), (128, 128, 1, 312, 10),
         (256, 256, 1, 1, 1), (256, 256, 1, 160, 1), (256, 256, 1, 160, 10),
         (128, 256, 2, 40, 1), (256, 512, 2, 40, 1), (512, 512, 2, 21, 1), (512, 512, 2, 64, 1),
         (512, 512, 2, 21, 8)]


def lstm_model(hidden: int, width: int, dirs: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((dirs, 4 * hidden, width)) / np.sqrt(width)).astype(np.float32)
    r = (rng.standard_normal((dirs, 4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b = (0.1 * rng.standard_normal((dirs, 8 * hidden))).astype(np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], name="lstm", hidden_size=hidden,
                            direction="bidirectional" if dirs == 2 else "forward")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["T", "N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, k) for a, k in ((w, "W"), (r, "R"), (b, "B"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def integer_model(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    recurrent.emit_lstm(graph, graph.nodes[0], 8)
    return ir.to_model(graph.cleanup().toposort())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden, width, dirs, steps, batch in SIZES:
            paths = {"float": Path(tmp) / f"f_{hidden}_{width}_{dirs}.onnx",
                     "int8": Path(tmp) / f"q_{hidden}_{width}_{dirs}.onnx"}
            if not paths["float"].exists():
                model = lstm_model(hidden, width, dirs)
                onnx.save(model, paths["float"])
                onnx.save(integer_model(model), paths["int8"])
            x = np.random.default_rng(1).standard_normal((steps, batch, width)).astype(np.float32)
            for threads in args.threads:
                ms = interleaved_latency_ms(paths, {"x": x}, rounds=args.rounds, runs=20, warmup=3,
                                            threads=threads)
                rows.append([hidden, width, dirs, steps, batch, threads, round(ms["float"], 3),
                             round(ms["int8"], 3), ms["int8"] / ms["float"]])
                print(rows[-1], flush=True)
    print(markdown_table(["H", "I", "D", "T", "N", "threads", "float ms", "int8 ms", "int8 / float"], rows))


if __name__ == "__main__":
    main()
