"""Per-channel Gaussian estimates of activations, for data-free (analytic) ranges. Pure numpy.

An `Est` describes a tensor as clip(N(mu_c, sigma_c^2), lo, hi) for each component c. When
`aligned` is true the components are the channels (axis 1) in order; otherwise they are an unordered
mixture whose union still bounds the tensor's range. Linear layers need aligned inputs; anything
else is handled through the mixture's overall mean and variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import erf, sqrt

import numpy as np

from dfq_onnx.core.numerics import relu_normal_moments

_erf = np.vectorize(erf)


@dataclass(frozen=True)
class Est:
    mu: np.ndarray
    sigma: np.ndarray
    lo: float = -np.inf
    hi: float = np.inf
    aligned: bool = True

    @staticmethod
    def of(mu, sigma, lo=-np.inf, hi=np.inf, aligned=True) -> "Est":
        mu, sigma = np.broadcast_arrays(np.atleast_1d(np.asarray(mu, np.float64)),
                                        np.atleast_1d(np.abs(np.asarray(sigma, np.float64))))
        return Est(mu.copy(), sigma.copy(), float(lo), float(hi), aligned)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of each component after clipping to [lo, hi]."""
        return clipped_moments(self.mu, self.sigma, self.lo, self.hi)

    def pooled(self) -> tuple[float, float]:
        """Overall mean and variance of the mixture (equal weights)."""
        m, v = self.moments()
        mean = float(np.mean(m))
        return mean, float(np.mean(v + (m - mean) ** 2))

    def clip(self, lo: float, hi: float) -> "Est":
        new_lo, new_hi = max(self.lo, lo), min(self.hi, hi)
        if new_lo > new_hi:
            new_lo = new_hi = min(max(self.lo, lo), hi)
        return Est(self.mu, self.sigma, new_lo, new_hi, self.aligned)

    def as_mixture(self) -> "Est":
        return Est(self.mu, self.sigma, self.lo, self.hi, False)

    def range(self, k: float) -> tuple[float, float]:
        lo = max(self.lo, float(np.min(self.mu - k * self.sigma)))
        hi = min(self.hi, float(np.max(self.mu + k * self.sigma)))
        return min(lo, hi), max(lo, hi)


def _phi(x):
    return np.exp(-0.5 * x * x) / sqrt(2.0 * np.pi)


def _cdf(x):
    return 0.5 * (1.0 + _erf(np.asarray(x, np.float64) / sqrt(2.0)))


def clipped_moments(mu, sigma, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of clip(X, lo, hi) for X ~ N(mu, sigma^2), elementwise."""
    mu = np.asarray(mu, np.float64)
    sigma = np.maximum(np.asarray(sigma, np.float64), 1e-12)
    if np.isneginf(lo) and np.isposinf(hi):
        return mu, sigma ** 2
    if lo == 0.0 and np.isposinf(hi):
        m, s = relu_normal_moments(mu, sigma)
        return m, s ** 2
    # general case by quadrature on a fixed grid (deterministic, accurate to ~1e-4 relative)
    z = np.linspace(-8.0, 8.0, 801)
    w = _phi(z)
    w = w / w.sum()
    x = np.clip(mu[..., None] + sigma[..., None] * z, lo, hi)
    m = np.sum(x * w, axis=-1)
    v = np.sum((x - m[..., None]) ** 2 * w, axis=-1)
    return m, v


@lru_cache(maxsize=None)
def laplace_clip_k(bits: int) -> float:
    """MSE-optimal clipping threshold (in std units) of a uniform 2^bits grid for unit-variance
    Laplace data (scale b = 1/sqrt(2)); ACIQ (Banner et al. 2019) finds activations closer to Laplace
    than to Gaussian in their tails.

    Minimizes  (2a / (2^b - 1))^2 / 12 * (1 - e^(-a/b))  +  2 b^2 e^(-a/b)  over a.
    """
    a = np.linspace(0.5, 20.0, 7801)
    scale = 1.0 / sqrt(2.0)
    step = 2.0 * a / (2 ** bits - 1)
    tail = np.exp(-a / scale)
    mse = step ** 2 / 12.0 * (1.0 - tail) + 2.0 * scale ** 2 * tail
    return float(a[int(np.argmin(mse))])


@lru_cache(maxsize=None)
def gaussian_clip_k(bits: int) -> float:
    """MSE-optimal clipping threshold (in std units) of a uniform 2^bits grid for N(0, 1) data.

    Minimizes  (2a / (2^b - 1))^2 / 12 * P(|X| < a)  +  2 E[(|X| - a)^2 ; |X| > a]  over a
    (Banner et al. 2019, "Post-training 4-bit quantization"), solved numerically.
    """
    a = np.linspace(0.5, 12.0, 4601)
    step = 2.0 * a / (2 ** bits - 1)
    inside = 2.0 * _cdf(a) - 1.0
    # E[(X - a)^2 ; X > a] = (1 + a^2)(1 - Phi(a)) - a phi(a)
    tail = (1.0 + a * a) * (1.0 - _cdf(a)) - a * _phi(a)
    mse = step ** 2 / 12.0 * inside + 2.0 * tail
    return float(a[int(np.argmin(mse))])
