"""Quantization numerics in plain numpy: no ONNX types, plain ints for `bits` and `signed`.

Conventions (identical to ONNX QuantizeLinear / DequantizeLinear):

    q = saturate(round_half_even(x / scale) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale

Weights are symmetric (zero point exactly 0) and may be per-channel along `axis`; the signed range is
narrowed to [-(2^(b-1) - 1), 2^(b-1) - 1] so that the grid is symmetric around 0.  Activations are
asymmetric with a range that always contains 0, so that 0 (padding, ReLU) is exactly representable.
A degenerate range (all values equal to 0; for activations also one so close to 0 that its step is not
a normal float32) gets scale 1. A weight channel of subnormal values keeps its subnormal scale: the int32
bias check raises it to what the bias needs (a dead channel's bias stays exact).
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
TINY = np.finfo(np.float32).tiny        # the smallest normal float32: a scale below it is degenerate


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer range of a `bits`-wide (un)signed type; `narrow` drops the most negative value."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bit-width {bits}; expected one of {SUPPORTED_BITS}")
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return (lo + 1 if narrow else lo), hi
    if narrow:
        raise ValueError("narrow range is only defined for signed types")
    return 0, (1 << bits) - 1


def symmetric_scale(absmax: np.ndarray | float, bits: int) -> np.ndarray:
    """Scale for a symmetric narrow signed grid covering [-absmax, absmax]; 1.0 where absmax is 0."""
    absmax = np.asarray(absmax, dtype=np.float64)
    if np.any(~np.isfinite(absmax)) or np.any(absmax < 0):
        raise ValueError("absmax must be finite and non-negative")
    _, qmax = qrange(bits, signed=True, narrow=True)
    scale = absmax / qmax
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def affine_params(lo: float, hi: float, bits: int, signed: bool) -> tuple[np.float32, int]:
    """Scale and zero point mapping [lo, hi] (widened to contain 0) onto the full integer range."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"invalid range [{lo}, {hi}]")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = qrange(bits, signed)
    scale = np.float32((hi - lo) / (qmax - qmin))
    if scale < TINY:
        return np.float32(1.0), 0
    zp = int(np.clip(np.rint(qmin - lo / float(scale)), qmin, qmax))
    return scale, zp


def symmetric_act_params(lo: float, hi: float, bits: int, signed: bool) -> tuple[np.float32, int]:
    """Zero-point-0 encoding: signed grid over [-m, m], or unsigned over [0, hi] for non-negative data."""
    if signed:
        m = max(abs(float(lo)), abs(float(hi)))
        return np.float32(symmetric_scale(m, bits)), 0
    if lo < 0:
        raise ValueError(f"unsigned zero-point-0 encoding cannot represent negative values (min {lo})")
    _, qmax = qrange(bits, signed=False)
    return np.float32(hi / qmax if hi > 0 else 1.0), 0


def _broadcast(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    p = np.asarray(p)
    if axis is None or p.ndim == 0:
        return p
    shape = [1] * ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x: np.ndarray, scale, zero_point, bits: int, signed: bool, axis: int | None = None,
             narrow: bool = False) -> np.ndarray:
    """QuantizeLinear: integers (int64 array) in the (un)signed `bits` range."""
    qmin, qmax = qrange(bits, signed, narrow)
    s = _broadcast(np.asarray(scale, np.float32), np.ndim(x), axis)
    z = _broadcast(np.asarray(zero_point, np.int64), np.ndim(x), axis)

    def rows(xs, ss, zs):
        q = np.rint(np.asarray(xs, np.float32).astype(np.float64) / ss) + zs  # saturate before the int cast
        return np.clip(q, qmin, qmax).astype(np.int64)
    return _by_rows(rows, x, np.int64, s, z)


CHUNK = 1 << 22     # elements per block of float64 temporaries (32 MB) in the row-wise helpers


def _by_rows(fn, x, dtype, *params) -> np.ndarray:
    """fn(x[i:j], p[i:j] ...) over blocks of rows, so float64 temporaries stay ~CHUNK elements for any
    tensor size (a 2 GB weight would otherwise need several 4 GB temporaries). Parameters broadcast
    along axis 0 are sliced with the rows; element-wise `fn` gives the same result as one call."""
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim == 0 or x.size <= CHUNK:
        return fn(x, *params)
    out = np.empty(x.shape, dtype)
    step = max(1, CHUNK // max(1, x.size // x.shape[0]))
    for i in range(0, x.shape[0], step):
        part = [p[i:i + step] if np.ndim(p) == x.ndim and np.shape(p)[0] > 1 else p for p in params]
        out[i:i + step] = fn(x[i:i + step], *part)
    return out


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear in float32."""
    s = _broadcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _broadcast(np.asarray(zero_point, np.int64), q.ndim, axis)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def fake_quant(x: np.ndarray, scale, zero_point, bits: int, signed: bool, axis: int | None = None,
               narrow: bool = False) -> np.ndarray:
    """Quantize then dequantize (the QDQ pair's function)."""
    return dequantize(quantize(x, scale, zero_point, bits, signed, axis, narrow), scale, zero_point, axis)


def weight_scales(w: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """Symmetric per-channel (axis given) or per-tensor scales from the weight's absolute maximum."""
    w = np.asarray(w, np.float32)
    if axis is None:
        return symmetric_scale(np.max(np.abs(w)) if w.size else 0.0, bits)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    return symmetric_scale(np.max(np.abs(w), axis=reduce), bits)


def bias_int32(b: np.ndarray, input_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bias as int32 with scale input_scale * w_scale (zero point 0), the integer kernels' convention."""
    scale = (np.float32(input_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.rint(np.asarray(b, np.float64) / scale.astype(np.float64))
    lim = np.iinfo(np.int32)
    return np.clip(q, lim.min, lim.max).astype(np.int32), scale


def fold_bn(w: np.ndarray, b: np.ndarray | None, gamma, beta, mean, var, eps: float,
            out_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fold y = gamma * (x - mean) / sqrt(var + eps) + beta into the producing layer's W and b.

        W' = W * gamma / sqrt(var + eps)          (scaled along the output-channel axis)
        b' = (b - mean) * gamma / sqrt(var + eps) + beta
    """
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in (gamma, beta, mean, var))
    if np.any(var + eps <= 0):
        raise ValueError("BatchNormalization variance + epsilon must be positive")
    factor = gamma / np.sqrt(var + eps)
    b0 = np.zeros_like(mean) if b is None else np.asarray(b, np.float64)
    w_new = _by_rows(lambda ws, fs: (np.asarray(ws, np.float64) * fs).astype(np.float32), w, np.float32,
                     _broadcast(factor, np.ndim(w), out_axis))
    b_new = ((b0 - mean) * factor + beta).astype(np.float32)
    return w_new, b_new


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def mse(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean((np.asarray(ref, np.float64) - np.asarray(test, np.float64)) ** 2))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def kl_softmax(ref_logits: np.ndarray, test_logits: np.ndarray, axis: int = -1) -> float:
    """Mean KL(softmax(ref) || softmax(test)) over all rows."""
    p, q = softmax(ref_logits, axis), softmax(test_logits, axis)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=axis)
    return float(np.mean(kl))


def relu_normal_moments(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of max(0, X) for X ~ N(mu, sigma^2) (clipped-normal moments, per channel)."""
    from math import erf, pi, sqrt

    mu = np.asarray(mu, np.float64)
    sigma = np.maximum(np.asarray(sigma, np.float64), 1e-12)
    a = mu / sigma
    cdf = 0.5 * (1.0 + np.vectorize(erf)(a / sqrt(2.0)))
    pdf = np.exp(-0.5 * a * a) / sqrt(2.0 * pi)
    mean = mu * cdf + sigma * pdf
    second = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    return mean, np.sqrt(np.maximum(second - mean * mean, 0.0))
