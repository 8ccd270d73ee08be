"""Clipped symmetric weight scales below 8 bits: per output channel, the clip ratio of least weighted error.

Round-to-nearest on a max-abs grid, s_c = max_i |W_ci| / q_max (q_max = 2^(b-1) - 1), spends the grid on
the channel's largest weight; at 4-6 bits the bulk of a channel's weights then sits on a few levels. A
shrunk range alpha max|W_c| trades clipping the outliers for finer steps everywhere else. Per channel c:

    s_c(alpha) = alpha max_i |W_ci| / q_max
    W_hat_c(alpha) = s_c(alpha) clip(round(W_c / s_c(alpha)), -q_max, q_max)
    alpha_c = argmin_{alpha in CLIP_GRID} sum_i h_i (W_ci - W_hat_ci(alpha))^2

(the first alpha of least error in the grid's descending order, so alpha = 1 -- today's max-abs scale --
unless a shrunk range is strictly better). `h` is an importance per weight element, broadcast against W:
with h_i = E[x_j^2] of the input channel j the weight W_ci multiplies, sum_i h_i e_ci^2 is the diagonal
term of the channel's output error E[(e_c . x)^2] = e_c^T E[x x^T] e_c (the diagonal Hessian of the
layer's output MSE); without h, every element counts alike (the weight MSE). Since alpha = 1 is in the
grid, the chosen error is never above round-to-nearest's under the same h.

Pure numpy; float64 error sums; channels are processed in blocks so that temporaries stay ~CHUNK elements.
"""

from __future__ import annotations

import numpy as np

from dfq_onnx.core import numerics

CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))      # 1.0, 0.975, .., 0.5
CHUNK = 1 << 21


def _channel_errors(w: np.ndarray, h: np.ndarray | None, scale: np.ndarray, qmax: int) -> np.ndarray:
    """sum_i h_i (w_ci - w_hat_ci)^2 per row c of w [C, K] on the grid `scale` [C]."""
    s = scale.astype(np.float64)[:, None]
    err = np.clip(np.rint(w / s), -qmax, qmax) * s - w
    err = np.square(err)
    return np.sum(err if h is None else err * h, axis=1)


def _rows_best(w: np.ndarray, h: np.ndarray | None, bits: int, grid) -> np.ndarray:
    """Scales [C] of rows w [C, K] (float64) of least weighted error over the clip grid."""
    _, qmax = numerics.qrange(bits, signed=True, narrow=True)
    absmax = np.max(np.abs(w), axis=1) if w.shape[1] else np.zeros(w.shape[0])
    best_scale, best_err = None, None
    for alpha in grid:
        scale = numerics.symmetric_scale(absmax * alpha, bits)
        err = _channel_errors(w, h, scale, qmax)
        if best_scale is None:
            best_scale, best_err = scale, err
            continue
        better = err < best_err
        best_scale = np.where(better, scale, best_scale).astype(np.float32)
        best_err = np.where(better, err, best_err)
    return best_scale


def clipped_scales(w: np.ndarray, bits: int, axis: int | None, importance: np.ndarray | None = None,
                   grid=CLIP_GRID) -> np.ndarray:
    """Symmetric per-channel (axis given) or per-tensor scales of least (weighted) rounding error
    (module docstring); `importance` broadcasts against `w` (None: uniform)."""
    w = np.asarray(w, np.float32)
    if importance is not None:
        importance = np.broadcast_to(np.asarray(importance, np.float64), w.shape)
        if np.any(~np.isfinite(importance)) or np.any(importance < 0):
            raise ValueError("weight importance must be finite and non-negative")
    if axis is None:
        h = None if importance is None else importance.reshape(1, -1)
        return _rows_best(w.reshape(1, -1).astype(np.float64), h, bits, grid).reshape(())
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    h_rows = None if importance is None else np.moveaxis(importance, axis, 0).reshape(rows.shape)
    out = np.empty(rows.shape[0], np.float32)
    step = max(1, CHUNK // max(1, rows.shape[1]))
    for i in range(0, rows.shape[0], step):
        h = None if h_rows is None else h_rows[i:i + step]
        out[i:i + step] = _rows_best(rows[i:i + step].astype(np.float64), h, bits, grid)
    return out
