"""H = E[x x^T] of a weighted layer's input rows, accumulated over calibration chunks. Pure numpy.

The rows x a weight row multiplies (core/gptq.py):

    Conv, x [n, C, H, W], W [O, C/G, kh, kw]: per output position (oy, ox) and group g, the patch
        x[c, oy sy - pt + ky dy, ox sx - pl + kx dx] for c in group g's C/G channels, (ky, kx) in the
        kernel, zero where padded, flattened in W's (c, ky, kx) order: D = C/G kh kw, one H per group
    MatMul / Gemm, x [.., K]: every leading index is a row: D = K

A row's positions are subsampled evenly (`positions`) so that a layer keeps about ROWS rows over the
calibration set: H's cost is rows G D^2 per layer; GPTQ's damping covers the rank it lacks.
Sums in float64 (`Accumulator`); the mean is sum / rows, and the rows' mean E[x] is kept beside it.

`channel_trusted` keeps what synthetic samples are made to match and drops what nothing constrains:
a sample search matches each channel's statistics (BN means and variances) and draws its spatial
structure from an image prior, but no objective ties one channel to another. So H keeps its blocks
within an input channel (a Conv's kh kw taps of one channel; a MatMul feature's diagonal entry) and
takes, across channels, the product of the channels' means, as if channels varied independently
around them:

    H'_ij = H_ij                 if i and j read the same input channel
          = E[x_i] E[x_j]        otherwise          (= blockdiag(Cov) + E[x] E[x]^T: positive semidefinite)

On EfficientNet-Lite0 GPTQ on the synthetic samples' full H lowers e^T H e 2-10x on those samples and
raises it on real images at the 1x1 convs reading the residual stream and the head (1.1-1.2x
round-to-nearest's); with H' the real-image error stays near or below round-to-nearest's
(BENCHMARKS.md, issue 17 session 14).
"""

from __future__ import annotations

import numpy as np

ROWS = 8192          # rows per layer over the whole calibration set (spatial positions subsampled)
MAX_DIM = 4096       # a row longer than this goes without H (H is D^2 floats per group)
MAX_BYTES = 512 << 20   # H of all layers (float64; GPTQ factors as much again); later layers go without


def positions(total: int, samples: int) -> np.ndarray:
    """Indices of the positions kept per sample: about ROWS / samples of `total`, evenly spaced."""
    keep = max(1, min(total, -(-ROWS // max(1, samples))))
    return np.unique(np.round(np.linspace(0, total - 1, keep)).astype(np.int64))


def conv_rows(x: np.ndarray, kernel, strides, pads, dilations, groups: int, samples: int) -> np.ndarray:
    """[G, rows, D] patches of x [n, C, H, W] (module docstring), positions subsampled for `samples`."""
    n, c, hh, ww = x.shape
    (kh, kw), (sy, sx), (dy, dx) = kernel, strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (hh + pads[0] + pads[2] - dy * (kh - 1) - 1) // sy + 1
    wo = (ww + pads[1] + pads[3] - dx * (kw - 1) - 1) // sx + 1
    keep = positions(ho * wo, samples)
    oy, ox = keep // wo, keep % wo
    taps = [xp[:, :, oy * sy + ky * dy, ox * sx + kx * dx] for ky in range(kh) for kx in range(kw)]
    pat = np.stack(taps, axis=2)                          # [n, C, k, P]
    per = c // groups
    pat = pat.reshape(n, groups, per * kh * kw, len(keep))
    return pat.transpose(1, 0, 3, 2).reshape(groups, n * len(keep), per * kh * kw)


def matmul_rows(x: np.ndarray, samples: int) -> np.ndarray:
    """[1, rows, K] of x [n, .., K]: the leading positions of each row subsampled for `samples`."""
    n = x.shape[0]
    flat = x.reshape(n, -1, x.shape[-1])
    keep = positions(flat.shape[1], samples)
    return flat[:, keep].reshape(1, -1, x.shape[-1])


def size(geo: tuple, shape) -> int:
    """Bytes of H (G D^2 float64) of a layer of geometry `geo` with weight `shape`."""
    if geo[0] == "conv":
        return 8 * geo[-1] * int(np.prod(shape[1:])) ** 2
    d = shape[1] if geo[0] == "gemm_t" else shape[0]
    return 8 * int(d) ** 2


class Accumulator:
    """Running sums of x x^T per group and the row count."""

    def __init__(self):
        self.sum: np.ndarray | None = None
        self.first: np.ndarray | None = None
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        r = np.asarray(rows, np.float32)
        part = np.matmul(r.transpose(0, 2, 1), r).astype(np.float64)
        first = r.sum(axis=1, dtype=np.float64)
        self.sum = part if self.sum is None else self.sum + part
        self.first = first if self.first is None else self.first + first
        self.rows += r.shape[1]

    def mean(self) -> np.ndarray | None:
        return None if self.sum is None else self.sum / max(1, self.rows)

    def row_mean(self) -> np.ndarray | None:
        """E[x] per group [G, D]."""
        return None if self.first is None else self.first / max(1, self.rows)


def channel_trusted(h: np.ndarray, mu: np.ndarray, taps: int) -> np.ndarray:
    """H' of H [G, D, D] (module docstring): entries within one input channel (`taps` consecutive row
    positions, W's (c, ky, kx) order) kept, the others mu_i mu_j (mu [G, D] the rows' mean)."""
    if taps < 1 or h.shape[-1] % taps:
        raise ValueError(f"rows of length {h.shape[-1]} do not split into channels of {taps} taps")
    channel = np.arange(h.shape[-1]) // taps
    same = channel[:, None] == channel[None, :]
    return np.where(same[None], h, mu[:, :, None] * mu[:, None, :])
