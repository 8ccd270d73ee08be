"""dfq_onnx.core.moments: clipped-Gaussian moments and the MSE-optimal clipping threshold."""

from __future__ import annotations

import numpy as np
import pytest

from dfq_onnx.core.moments import Est, clipped_moments, gaussian_clip_k

INF = float("inf")


@pytest.mark.parametrize("mu, sigma, lo, hi", [
    (0.0, 1.0, -1.0, 1.0),      # symmetric two-sided clip
    (0.5, 2.0, 0.0, 3.0),       # ReLU6-like
    (-1.0, 1.0, 0.0, INF),      # ReLU (closed-form path)
    (2.0, 0.5, -INF, 2.2),      # upper clip only
    (0.3, 1.5, -INF, INF),      # no clip
])
def test_clipped_moments_vs_monte_carlo(mu, sigma, lo, hi):
    x = np.clip(np.random.default_rng(0).normal(mu, sigma, 400_000), lo, hi)
    mean, var = clipped_moments(np.array([mu]), np.array([sigma]), lo, hi)
    # MC standard error ~ sigma / 630; the quadrature is accurate to ~1e-4 relative.
    assert mean[0] == pytest.approx(x.mean(), abs=0.01 * sigma)
    assert np.sqrt(var[0]) == pytest.approx(x.std(), abs=0.01 * sigma)


def test_gaussian_clip_k_increases_with_bits():
    ks = [gaussian_clip_k(b) for b in (2, 3, 4, 8, 16)]
    assert all(a < b for a, b in zip(ks, ks[1:], strict=False)), ks


def test_gaussian_clip_k_close_to_banner():
    # Banner et al. (2019), Gaussian prior: 1.71 (2 b), 2.15 (3 b), 2.55 (4 b) with 2^b bins. The
    # implementation uses the exact 2^b - 1 steps of a grid ending at +-a, which moves the 2-bit optimum
    # down to 1.498 (4 bits: 2.514); the bounds accept both conventions.
    assert 1.45 <= gaussian_clip_k(2) <= 1.75
    assert 2.0 <= gaussian_clip_k(3) <= 2.2
    assert 2.5 <= gaussian_clip_k(4) <= 2.6
    assert 3.5 <= gaussian_clip_k(8) <= 4.5


def test_est_range_respects_clip_interval():
    e = Est.of([0.0, 1.0], [1.0, 2.0]).clip(0.0, INF)
    assert e.range(2.0) == (0.0, 5.0)               # max(mu + 2 sigma) = 1 + 4; lower end clipped to 0
    assert Est.of(0.0, 1.0).clip(-0.5, 0.5).range(3.0) == (-0.5, 0.5)
