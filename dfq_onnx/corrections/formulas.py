"""Pure-numpy math of the data-free accuracy passes (equalization, absorption, bias correction, DF-MPC).

A linear layer is described by `Linear(op, group, trans_b)`; its weight's output-channel and
input-channel slices are addressed here so the passes never index weights themselves:

* Conv W [O, I/g, k...]: output channel o = W[o]; input channel i = (gi, j) with i = gi * I/g + j is the
  column W[gi*O/g:(gi+1)*O/g, j] (a depthwise conv, g = O = I, has one weight row per input channel);
* Gemm W [K, N] (transB=0): output n = W[:, n], input k = W[k, :]; transB=1 transposes both.

All functions take and return plain arrays; the per-channel vectors are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Linear:
    op: str            # "Conv" | "Gemm"
    group: int = 1
    trans_b: int = 0

    def out_axis(self) -> int:
        return 0 if self.op == "Conv" or self.trans_b else 1

    def _grouped(self, w: np.ndarray) -> np.ndarray:
        """Conv weight as [g, O/g, I/g, taps]; Gemm weight as [1, N, K, 1]."""
        if self.op == "Conv":
            o, ig = w.shape[0], w.shape[1]
            return w.reshape(self.group, o // self.group, ig, -1)
        m = w if self.trans_b else w.T        # [N, K]
        return m.reshape(1, m.shape[0], m.shape[1], 1)

    def _ungroup(self, g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.op == "Conv":
            return g.reshape(shape)
        m = g.reshape(g.shape[1], g.shape[2])
        return m if self.trans_b else m.T

    def in_channels(self, w: np.ndarray) -> int:
        g = self._grouped(w)
        return g.shape[0] * g.shape[2]


def out_absmax(w: np.ndarray, kind: Linear) -> np.ndarray:
    """max |W| of each output channel (the range per-channel weight quantization sees)."""
    axis = kind.out_axis()
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    return np.max(np.abs(np.asarray(w, np.float64)), axis=reduce)


def in_absmax(w: np.ndarray, kind: Linear) -> np.ndarray:
    """max |W| of each input channel's column (over the output channels that read it and the taps)."""
    g = np.abs(kind._grouped(np.asarray(w, np.float64)))
    return g.max(axis=(1, 3)).reshape(-1)


def scale_out(w: np.ndarray, s: np.ndarray, kind: Linear) -> np.ndarray:
    """W with output channel o multiplied by s[o]."""
    shape = [1] * w.ndim
    shape[kind.out_axis()] = -1
    return (np.asarray(w, np.float64) * np.asarray(s, np.float64).reshape(shape)).astype(w.dtype)


def scale_in(w: np.ndarray, s: np.ndarray, kind: Linear) -> np.ndarray:
    """W with input channel i's column multiplied by s[i]."""
    g = kind._grouped(np.asarray(w, np.float64))
    s = np.asarray(s, np.float64).reshape(g.shape[0], 1, g.shape[2], 1)
    return kind._ungroup(g * s, w.shape).astype(w.dtype)


def apply_to_input(w: np.ndarray, x: np.ndarray, kind: Linear, taps: np.ndarray | None = None) -> np.ndarray:
    """sum over input channels and taps of W[o, i, t] f_t x[i] for a per-input-channel vector x: the
    layer's output (without bias), averaged over output positions, for an input that is constant x[i]
    on channel i; f_t = fraction of output positions where tap t reads inside the (zero-padded) input
    (`valid_tap_fraction`; None: every tap always inside)."""
    g = kind._grouped(np.asarray(w, np.float64))
    if taps is not None:
        g = g * np.asarray(taps, np.float64).reshape(1, 1, 1, -1)
    xg = np.asarray(x, np.float64).reshape(g.shape[0], g.shape[2])
    return np.einsum("goit,gi->go", g, xg).reshape(-1)


def valid_tap_fraction(spatial: tuple[int, ...], kernel: tuple[int, ...], strides, pads, dilations
                       ) -> np.ndarray:
    """For each kernel tap (row-major over `kernel`), the fraction of a convolution's output positions at
    which it reads inside the input rather than its zero padding. `pads` = [begin..., end...]."""
    n = len(spatial)
    per_axis = []
    for a in range(n):
        size, k, s, d = spatial[a], kernel[a], strides[a], dilations[a]
        out = (size + pads[a] + pads[a + n] - d * (k - 1) - 1) // s + 1
        pos = np.arange(max(out, 1))[:, None] * s - pads[a] + np.arange(k)[None, :] * d
        per_axis.append(((pos >= 0) & (pos < size)).mean(axis=0))
    frac = per_axis[0]
    for f in per_axis[1:]:
        frac = np.multiply.outer(frac, f)
    return np.asarray(frac, np.float64).reshape(-1)


def cle_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Nagel et al. 2019, eq. (11): s_i = sqrt(r1_i / r2_i), so that r1_i / s_i = r2_i * s_i =
    sqrt(r1_i r2_i). Channels with a zero range on either side keep s_i = 1."""
    r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    ok = (r1 > 0) & (r2 > 0) & np.isfinite(r1) & np.isfinite(r2)
    return np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)


def absorb_amounts(beta: np.ndarray, gamma: np.ndarray, k: float = 3.0) -> np.ndarray:
    """High-bias absorption amount c_i = max(0, beta_i - k |gamma_i|) (Nagel et al. 2019, sec. 4.1)."""
    return np.maximum(0.0, np.asarray(beta, np.float64) - k * np.abs(np.asarray(gamma, np.float64)))


def mean_shift(w_hat: np.ndarray, w: np.ndarray, mu: np.ndarray, kind: Linear,
               taps: np.ndarray | None = None) -> np.ndarray:
    """E[W_hat x] - E[W x] = (W_hat - W) E[x] per output channel (E[x] per input channel), averaged
    over output positions when `taps` gives each tap's in-bounds fraction."""
    return apply_to_input(np.asarray(w_hat, np.float64) - np.asarray(w, np.float64), mu, kind, taps)


def dfmpc_gains(w: np.ndarray, w_hat: np.ndarray, mu: np.ndarray, var: np.ndarray, kind: Linear,
                taps: np.ndarray | None = None) -> np.ndarray:
    """Per-output-channel c_o minimizing E[((c W_hat_o - W_o) . x)^2] (see passes/dfmpc.py).

    With E[x x^T] = diag(var) + mu mu^T over (input channel, tap) -- channels and taps independent:
        c_o = (sum W Wh var + (W.mu)(Wh.mu)) / (sum Wh^2 var + (Wh.mu)^2)
    Channels whose denominator is 0 or whose c is not positive keep c = 1. `taps` weights each tap by
    the fraction of positions where it reads data rather than zero padding.
    """
    w64, wh = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
    mw, mh = apply_to_input(w64, mu, kind, taps), apply_to_input(wh, mu, kind, taps)
    num = apply_to_input(w64 * wh, var, kind, taps) + mw * mh
    den = apply_to_input(wh * wh, var, kind, taps) + mh ** 2
    ok = (den > 0) & np.isfinite(num) & np.isfinite(den)
    c = np.where(ok, num / np.where(ok, den, 1.0), 1.0)
    return np.where(c > 0, c, 1.0)
