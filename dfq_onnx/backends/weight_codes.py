"""A form candidate's weights as 8-bit codes, a scale and a zero point per block: what the probe stores.

`forms.weight_hat` gives the float weights a form computes with; every MatMul form the sensitivity probe
switches over (dynamic int8 per column, block-wise W<b>A32-b<B> and "row") computes them as

    W_hat[k, n] = (q[k, n] - z[g, n]) * s[g, n],     g = k // B   (B: the block along K; K for a column)

with integer codes q, z of at most 8 bits and float32 scales. Stored as uint8 codes (q shifted by 128
where the form keeps them signed, z with it) and float32 z, s per block, a candidate's weights take a
quarter of their float size, and the dequantization is exact: q - z is an integer below 2^9, so the float32
subtraction is exact and the product rounds once, as numpy's `(q - z).astype(float32) * s` does -- the
same bits as `weight_hat` (tests/test_weight_codes.py). `WeightCodes.expand` puts slots of different
blocks on one block (their gcd) so one switch picks any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dfq_onnx.backends import forms
from dfq_onnx.core import blockwise, candidates

SHIFT = 128      # signed codes (dynamic int8) to uint8


@dataclass(frozen=True)
class WeightCodes:
    """q uint8 [K, N], z and s float32 [K / block, N] (module docstring)."""

    codes: np.ndarray
    zero: np.ndarray
    scale: np.ndarray

    @property
    def block(self) -> int:
        return self.codes.shape[0] // self.scale.shape[0]

    def expand(self, block: int) -> "WeightCodes":
        """The same weights with z, s repeated onto blocks of `block` (a divisor of this one's)."""
        r = self.block // block
        return self if r == 1 else WeightCodes(self.codes, np.repeat(self.zero, r, axis=0),
                                               np.repeat(self.scale, r, axis=0))

    def dequantize(self) -> np.ndarray:
        k, n = self.codes.shape
        q = self.codes.reshape(self.scale.shape[0], self.block, n).astype(np.float32)
        return ((q - self.zero[:, None]) * self.scale[:, None]).reshape(k, n)


def weight_codes(op: str, w: np.ndarray, cand, importance: np.ndarray | None = None) -> WeightCodes | None:
    """`cand`'s weights of the MatMul weight `w` [K, N] as codes (module docstring), the values
    `forms.weight_hat(op, w, cand, importance)` computes; None for a form stored otherwise (float,
    per-tensor, a Gather table) or codes outside 8 bits."""
    if op not in forms.COLUMN_WEIGHTS or np.ndim(w) != 2:
        return None
    w = np.asarray(w, np.float32)
    f = candidates.form(cand)
    if f == "dyn":
        q, scale, zero, _ = forms.dynamic_weight(w, cand[0], importance)
        q, zero = np.asarray(q, np.int64) + SHIFT, np.asarray(zero, np.int64) + SHIFT
        codes, zero, scale = q, zero.reshape(1, -1), np.asarray(scale, np.float32).reshape(1, -1)
    elif candidates.block(cand, w.shape[0]):
        q, scale, zero = blockwise.quantize_blocks(w.T, cand[0], candidates.block(cand, w.shape[0]))
        codes, zero, scale = q.T, zero.T, scale.T
    else:
        return None
    if codes.min() < 0 or codes.max() > 255 or zero.min() < 0 or zero.max() > 255:
        return None
    return WeightCodes(np.ascontiguousarray(codes, np.uint8), np.ascontiguousarray(zero, np.float32),
                       np.ascontiguousarray(scale, np.float32))


def common_block(slots: list[WeightCodes]) -> int:
    """The largest block every slot's blocks are made of."""
    return math.gcd(*(s.block for s in slots))
