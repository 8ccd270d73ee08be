"""core/weight_clip.py: clipped low-bit weight scales never round worse than max-abs round-to-nearest."""

from __future__ import annotations

import numpy as np
import pytest

from dfq_onnx.core import blockwise, numerics, weight_clip


def _weights(seed: int = 0, shape=(16, 8, 3, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, size=shape) * 0.1).astype(np.float32)     # heavy tails: outliers to clip


def _error(w, scale, bits, axis, h) -> np.ndarray:
    """Per output channel sum h (w - w_hat)^2 (axis 0)."""
    w_hat = numerics.fake_quant(w, scale, np.zeros(np.shape(scale), np.int64), bits, True, axis, narrow=True)
    return np.sum(np.broadcast_to(h, w.shape) * (w_hat.astype(np.float64) - w) ** 2,
                  axis=tuple(range(1, w.ndim)))


@pytest.mark.parametrize("bits", [3, 4, 5, 6])
def test_weighted_error_never_above_round_to_nearest(bits):
    w = _weights(bits)
    h = np.random.default_rng(7).gamma(0.5, size=(1, w.shape[1], 1, 1))     # E[x_j^2] per input channel
    rtn = _error(w, numerics.weight_scales(w, bits, 0), bits, 0, h)
    clipped = _error(w, weight_clip.clipped_scales(w, bits, 0, h), bits, 0, h)
    assert np.all(clipped <= rtn)
    assert clipped.sum() < (0.9 if bits <= 4 else 1.0) * rtn.sum()     # heavy-tailed channels gain


def test_weighting_changes_the_choice_toward_the_loaded_inputs():
    w = _weights(1)
    h = np.ones((1, w.shape[1], 1, 1))
    h[0, :2] = 100.0                                 # two input channels carry most of the energy
    weighted = weight_clip.clipped_scales(w, 4, 0, h)
    plain = weight_clip.clipped_scales(w, 4, 0)
    assert not np.array_equal(weighted, plain)
    assert _error(w, weighted, 4, 0, h).sum() <= _error(w, plain, 4, 0, h).sum()
    np.testing.assert_array_equal(weight_clip.clipped_scales(w, 4, 0, np.ones_like(h)), plain)


def test_grid_points_are_kept_and_per_tensor_is_a_scalar():
    w = np.array([[-7, -3, 0, 1, 7], [2, 4, 6, -6, 0]], np.float32)     # on the 4-bit max-abs grid
    np.testing.assert_array_equal(weight_clip.clipped_scales(w, 4, 0), numerics.weight_scales(w, 4, 0))
    assert weight_clip.clipped_scales(_weights(2), 4, None).shape == ()
    zero = np.zeros((3, 4), np.float32)
    np.testing.assert_array_equal(weight_clip.clipped_scales(zero, 4, 0), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="importance"):
        weight_clip.clipped_scales(w, 4, 0, -np.ones_like(w))


def test_blockwise_importance_weighs_the_clip_search():
    w = _weights(3, shape=(8, 32))                  # rows x reduction length
    h = np.random.default_rng(4).gamma(0.5, size=(1, 32)) * np.ones((8, 1))

    def err(q, s, z):
        return float(np.sum(h * (blockwise.dequantize_blocks(q, s, z) - w) ** 2))
    assert err(*blockwise.quantize_blocks(w, 4, 32, clip=True, importance=h)) <= \
        err(*blockwise.quantize_blocks(w, 4, 32, clip=True))
