"""Multichannel 1-D signals: a float input [N, C, L] that a 1-D Conv reads along its last axis.

EEG and its scalograms, feature sequences, sensor traces: the synthesis prior for an input of another
rank than an image's was white noise N(0, 1), which a temporal Conv averages away -- a filter of k taps
sums k independent values, so its response is ~sqrt(k) where a real signal's (correlated over the
taps) is ~k. OpenSpindleNet's spindle detector (raw EEG [N, 1, 7500] and its 15-scale scalogram
[N, 15, 7500], no BN statistics in its backbone) saw every activation 4-10x below the real range and
its W8A8 model kept none of FP32's spindles.

Real 1-D signals are correlated along time as images are along space, so the prior is the image
prior's, restricted to a line: a 2-D field with amplitude spectrum 1/|f|^a has 1-D slices of
amplitude spectrum 1/f^(a - 1/2) (the power 1/f^(2a) integrated over the other frequency), a = 1.5
(`search.PINK_ALPHA`) gives 1/f along L; the channels share a component (`search.CHANNEL_CORR`) and
each is standardized, as the image prior's colour channels.

Which inputs: float inputs of per-sample shape [C, L] that reach a Conv / ConvTranspose with a rank-3
weight as its data input through ops that keep the axes where they are (Concat, Slice, Pad,
Identity, Cast, elementwise arithmetic). A waveform [N, T] (rank 1: `audio_range`), a plane a 2-D
Conv reads (`layout.plane_inputs`) and an input reaching a MatMul first (token states, a Dense) are
not.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.synth.search import CHANNEL_CORR, PINK_ALPHA

KEEP_AXES = {"Concat", "Slice", "Pad", "Identity", "Cast", "Mul", "Add", "Sub", "Div", "Neg", "Abs"}


def _reaches_1d_conv(t: gs.Tensor) -> bool:
    seen, todo = set(), [t]
    while todo:
        u = todo.pop()
        for node in u.outputs:
            if node.op in ("Conv", "ConvTranspose") and node.inputs[0] is u:
                w = node.inputs[1] if len(node.inputs) > 1 else None
                if w is not None and w.shape is not None and len(w.shape) == 3:
                    return True
            elif node.op in KEEP_AXES and id(node) not in seen:
                seen.add(id(node))
                todo += [o for o in node.outputs if o.shape is None or len(o.shape) == 3]
    return False


def signal_inputs(graph: gs.Graph, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Names of the float inputs of per-sample shape [C, L] a 1-D Conv reads along L (module docstring)."""
    found = []
    for t in graph.inputs:
        shape = shapes.get(t.name)
        floating = t.dtype is not None and np.dtype(t.dtype).kind == "f"
        if floating and shape is not None and len(shape) == 2 and shape[1] >= 8 and _reaches_1d_conv(t):
            found.append(t.name)
    return found


def pink_lines(rng: np.random.Generator, n: int, shape: tuple[int, int], alpha: float = PINK_ALPHA - 0.5,
               rho: float = CHANNEL_CORR) -> np.ndarray:
    """n samples [C, L] (float32): 1/f^alpha amplitude spectrum along L, channels correlated by a shared
    component (rho), each channel standardized; one sample at a time."""
    c, length = shape
    f = np.fft.rfftfreq(length)
    f[0] = 1.0 / length
    out = np.empty((n, c, length), np.float32)
    for i in range(n):
        spec = rng.standard_normal((c + 1, f.size)) + 1j * rng.standard_normal((c + 1, f.size))
        line = np.fft.irfft(spec / f ** alpha, length)
        line /= np.maximum(line.std(axis=1, keepdims=True), 1e-12)
        x = np.sqrt(rho) * line[:1] + np.sqrt(1.0 - rho) * line[1:]
        x -= x.mean(axis=1, keepdims=True)
        out[i] = x / np.maximum(x.std(axis=1, keepdims=True), 1e-12)
    return out


def prior(rng: np.random.Generator, n: int, shapes: dict[str, tuple[int, ...]], signals: list[str],
          images) -> dict[str, np.ndarray]:
    """The first samples of every input: `pink_lines` for `signals`, `images(rng, n, shape)` otherwise,
    in the inputs' order on one generator."""
    return {name: pink_lines(rng, n, shape) if name in signals else images(rng, n, shape)
            for name, shape in shapes.items()}
