"""The weights the probe model holds, as EmitQDQ writes them for the same plan (probe.py's docstring).

`emitted_weight` gives the float values Emit's DequantizeLinear produces at a bit-width; activations
and elementwise constants get EmitQDQ's own encodings and Q/DQ (dfq_onnx/backends/act_qdq.py).
"""

from __future__ import annotations

import numpy as np

from dfq_onnx.backends.qdq import quantize_weight
from dfq_onnx.core import numerics


def emitted_weight(w: np.ndarray, bias: np.ndarray | None, x_scale: float | None, bits: int,
                   axis: int | None, target, importance: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Float values of W (and b) after Emit's DequantizeLinear at `bits` (mirrors EmitQDQ).

    s_w = alpha_c absmax_c(W) / (2^(b-1) - 1) (alpha_c = 1 at 8 bits; below, the clip ratio of least
    `importance`-weighted error, core/weight_clip.py), raised so that |b| / (s_x s_w) fits int32;
    W_hat = s_w * clip(round(W / s_w), -(2^(b-1) - 1), 2^(b-1) - 1);  b_hat = s_x s_w round(b / (s_x s_w)).
    Without an input scale (float input) the bias stays float.
    """
    q, scale, qb, bscale = quantize_weight(target, w, bias, x_scale, bits, axis, importance)
    axis = axis if target.per_channel else None
    w_hat = numerics.dequantize(q, scale, np.zeros(scale.shape, np.int64), axis)
    if qb is None:
        return w_hat, bias
    return w_hat, numerics.dequantize(qb, bscale, np.zeros(bscale.shape, np.int64),
                                      0 if bscale.ndim else None)
