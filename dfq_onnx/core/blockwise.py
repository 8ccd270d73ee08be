"""Block-wise asymmetric weight quantization and the packed layouts of ORT's contrib kernels. Pure numpy.

A weight W is cut along its reduction axis into blocks of B values (a MatMul W [K, N]: B consecutive
k of one column n; a Gather table [V, D]: B consecutive d of one row). Per block, with b bits:

    lo = min(0, min x),  hi = max(0, max x)            (0 stays exactly representable)
    s  = (hi - lo) / (2^b - 1)   (1 for an all-zero block),   z = clip(round(-lo / s), 0, 2^b - 1)
    q  = clip(round(x / s) + z, 0, 2^b - 1),           x_hat = (q - z) s

(the asymmetric rule of ORT's MatMulNBitsQuantizer). `quantize_blocks` works on [R, L] rows (R
independent rows of length L, L a multiple of B); the callers move the reduction axis last. With
`clip`, each block's range is also tried shrunk to f [lo, hi] for f in CLIP_GRID (1, 0.95, .., 0.5) and the f
of least squared error sum h (x - x_hat)^2 is kept (h = 1, or a given importance per element: the input's
E[x_k^2], backends/input_moments.py) (whole-channel blocks have outliers a shrunk range
trades for finer steps; blocks of 32 gain little).

Packed layouts (4-bit: two values per byte, the even element in the low nibble):
    MatMulNBits B        uint8 [N, K/B, B*b/8]      scales float [N*K/B]   zero points uint8
                         [N * ceil(K/B * b/8)] (per column, 4-bit ones padded to whole bytes)
    GatherBlockQuantized uint8 [V, D*b/8]            scales float [V, D/B]  zero points uint8 [V, D/B*b/8]
"""

from __future__ import annotations

import numpy as np

CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(11))


def quantize_blocks(x: np.ndarray, bits: int, block: int, clip: bool = False,
                    importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [R, L], scales float32 [R, L/B], zero points uint8 [R, L/B]) of rows x [R, L];
    `importance` [R, L] weighs each element's squared error in the clip search (None: alike)."""
    x = np.asarray(x, np.float32)
    rows, length = x.shape
    if block < 1 or length % block:
        raise ValueError(f"block size {block} does not divide the reduction length {length}")
    if not 2 <= bits <= 8:
        raise ValueError(f"block-wise weights are 2..8 bits, got {bits}")
    top = (1 << bits) - 1
    xb = x.reshape(rows, length // block, block)
    hb = None if importance is None else np.asarray(importance, np.float64).reshape(xb.shape)
    lo0, hi0 = np.minimum(xb.min(axis=2), 0.0), np.maximum(xb.max(axis=2), 0.0)
    best = None
    for f in CLIP_GRID if clip else (1.0,):
        scale = (hi0 - lo0) * np.float32(f) / top
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        zero = np.clip(np.round(-lo0 * np.float32(f) / scale), 0, top)
        q = np.clip(np.round(xb / scale[..., None]) + zero[..., None], 0, top)
        err = ((q - zero[..., None]) * scale[..., None] - xb) ** 2
        err = np.sum(err if hb is None else err * hb, axis=2)
        if best is None:
            best = [q, scale, zero, err]
            continue
        keep = err < best[3]
        best = [np.where(keep[..., None], q, best[0]), np.where(keep, scale, best[1]),
                np.where(keep, zero, best[2]), np.minimum(err, best[3])]
    q, scale, zero = best[:3]
    return q.reshape(rows, length).astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """x_hat [R, L] float32 of `quantize_blocks`'s output."""
    rows, length = q.shape
    block = length // scale.shape[1]
    qb = q.reshape(rows, -1, block).astype(np.float32) - zero[..., None].astype(np.float32)
    return (qb * scale[..., None]).reshape(rows, length).astype(np.float32)


def fake_quantize(w: np.ndarray, bits: int, block: int, axis: int, clip: bool = False) -> np.ndarray:
    """W with blocks of `block` along `axis` quantized and dequantized (same shape and dtype float32)."""
    moved = np.moveaxis(np.asarray(w, np.float32), axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    out = dequantize_blocks(*quantize_blocks(flat, bits, block, clip))
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [R, L] of b-bit values -> [R, L*b/8] bytes (4-bit: even element in the low nibble; rows of
    odd length are padded with 0)."""
    if bits == 8:
        return np.ascontiguousarray(q, np.uint8)
    if bits != 4:
        raise ValueError(f"packed storage is 4 or 8 bits, got {bits}")
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), np.uint8)], axis=1)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def storage_bits(bits: int) -> int:
    """Bits of the packed storage of a b-bit value (values of 5..7 bits are stored in a byte)."""
    return 4 if bits <= 4 else 8


def matmul_nbits(w: np.ndarray, bits: int, block: int) -> dict[str, np.ndarray]:
    """MatMulNBits constants for W [K, N] ({B, scales, zero_points}) and the dequantized W_hat [K, N]."""
    k, n = w.shape
    q, scale, zero = quantize_blocks(np.asarray(w, np.float32).T, bits, block)      # [N, K]
    sb = storage_bits(bits)
    return {"B": pack(q, sb).reshape(n, k // block, block * sb // 8),
            "scales": scale.reshape(-1), "zero_points": pack(zero, sb).reshape(-1),
            "w_hat": dequantize_blocks(q, scale, zero).T}


def gather_blocks(table: np.ndarray, bits: int, block: int) -> dict[str, np.ndarray]:
    """GatherBlockQuantized constants for a table [V, D] ({data, scales, zero_points}) and its T_hat."""
    q, scale, zero = quantize_blocks(table, bits, block)
    sb = storage_bits(bits)
    return {"data": pack(q, sb), "scales": scale, "zero_points": pack(zero, sb),
            "w_hat": dequantize_blocks(q, scale, zero)}
