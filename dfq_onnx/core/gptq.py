"""Hessian-aware rounding of low-bit weights (GPTQ, Frantar et al. 2022) with the scales fixed. Pure numpy.

A layer computes y_r = w_r . x per output row r (a Conv's output channel over its im2col patch, a
MatMul's output column over K). With H = E[x x^T] of the row's input (per group of a grouped Conv), a
weight error e_r = w_hat_r - w_r moves the output by E[(e_r . x)^2] = e_r^T H e_r. Round-to-nearest
minimises each |e_ri| alone; GPTQ rounds the columns i = 1..D in order and moves the error of column i
onto the columns not yet rounded, along the row of the upper Cholesky factor U of (H + lambda I)^-1:

    q_i = clip(round(w_i / s) + z, q_lo, q_hi),   d_i = (w_i - (q_i - z) s) / U_ii
    w_j -= d_i U_ij  for j > i                     (the least-squares update of the remaining weights)

(lambda = DAMP * mean diag H; batched lazily in blocks of BLOCK columns: the updates of a block reach
the later columns in one matrix product). The scale s (and zero point z) of each row is fixed before,
so the encodings stay those of round-to-nearest's grid.

The guard: every row keeps the candidate of least e_r^T H e_r (undamped H) among round-to-nearest and
GPTQ on each given scale set (the first on ties: round-to-nearest on the first scales), so on the
measured H no row's output error is above round-to-nearest's. `LaidHessian` lays the rows out against
a weight: Conv W [O, I/G, *k] -> [G, O/G, D] (D = I/G prod k); MatMul W [K, N] -> [1, N, K] (rows =
W^T); Gemm transB W [N, K] -> [1, N, K]. Deterministic: same inputs, same integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DAMP = 0.1        # lambda = DAMP * mean diag H (GPTQ: 0.01; 0.1 keeps synthetic H from overfitting)
BLOCK = 128       # columns per lazy batch update


def inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factors U [G, D, D] of (H_g + lambda_g I)^-1 (module docstring); a group whose
    diagonal is all zero gets the identity (its rows round to nearest)."""
    h = np.asarray(h, np.float64)
    g, d, _ = h.shape
    out = np.empty_like(h)
    eye = np.eye(d)
    for i in range(g):
        diag = np.diag(h[i])
        lam = DAMP * float(np.mean(diag)) if d else 0.0
        if not lam > 0:
            out[i] = eye
            continue
        hd = h[i] + eye * (lam + np.where(diag > 0, 0.0, 1.0) * np.mean(diag))  # dead inputs: as if average
        low = np.linalg.cholesky(hd)
        inv_low = np.linalg.solve(low, eye)
        out[i] = np.linalg.cholesky(inv_low.T @ inv_low).T
    return out


def round_rows(w: np.ndarray, u: np.ndarray, scale: np.ndarray, zero: np.ndarray, lo: int,
               hi: int) -> np.ndarray:
    """GPTQ integers [G, R, D] of rows w [G, R, D] with factors u [G, D, D], scale / zero [G, R]."""
    w = np.array(w, np.float64)
    s, z = scale[..., None].astype(np.float64), zero[..., None].astype(np.float64)
    q = np.empty_like(w)
    d = w.shape[2]
    for a in range(0, d, BLOCK):
        b = min(a + BLOCK, d)
        wb, ub = w[:, :, a:b], u[:, a:b, a:b]
        err = np.empty_like(wb)
        for i in range(b - a):
            qi = np.clip(np.rint(wb[:, :, i:i + 1] / s) + z, lo, hi)
            q[:, :, a + i:a + i + 1] = qi
            e = (wb[:, :, i:i + 1] - (qi - z) * s) / ub[:, i, i][:, None, None]
            wb[:, :, i:] -= e * ub[:, None, i, i:]
            err[:, :, i:i + 1] = e
        if b < d:
            w[:, :, b:] -= np.matmul(err, u[:, a:b, b:])
    return q


def row_errors(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> np.ndarray:
    """e_r^T H e_r per row [G, R] (rows [G, R, D], H [G, D, D])."""
    e = np.asarray(w_hat, np.float64) - np.asarray(w, np.float64)
    return np.einsum("grd,grd->gr", np.matmul(e, h), e)


@dataclass
class LaidHessian:
    """H = E[x x^T] per group [G, D, D] of a weighted layer's input and how its weight's rows lie
    (`kind`: "conv" W [O, I/G, *k], "matmul" W [K, N], "gemm_t" W [N, K]); `clip`: also try the
    clip-searched scales (core/weight_clip.py) in the guard."""

    h: np.ndarray
    kind: str
    clip: bool = False
    _u: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def axis(self) -> int:
        """The weight's output-row axis (the per-channel axis the rows' scales run along)."""
        return 1 if self.kind == "matmul" else 0

    def rows(self, w: np.ndarray) -> np.ndarray:
        g = self.h.shape[0]
        flat = w.T if self.kind == "matmul" else w.reshape(w.shape[0], -1)
        return np.asarray(flat, np.float64).reshape(g, flat.shape[0] // g, flat.shape[1])

    def unrows(self, rows: np.ndarray, shape) -> np.ndarray:
        flat = rows.reshape(-1, rows.shape[2])
        return flat.T.reshape(shape) if self.kind == "matmul" else flat.reshape(shape)

    def fits(self, shape) -> bool:
        """Whether a weight of `shape` lays out against this H (row length D, rows divisible by G)."""
        g, d, _ = self.h.shape
        if self.kind == "matmul":
            return len(shape) == 2 and shape[0] == d and shape[1] % g == 0
        return len(shape) >= 2 and int(np.prod(shape[1:])) == d and shape[0] % g == 0

    def diagonal(self, shape) -> np.ndarray:
        """diag H laid out against the weight (the clip search's importance, broadcast to `shape`)."""
        d = np.diagonal(self.h, axis1=1, axis2=2)[:, None, :]
        g, _, n = d.shape
        rows = np.broadcast_to(d, (g, (shape[1] if self.kind == "matmul" else shape[0]) // g, n))
        return self.unrows(np.array(rows), shape)

    def factor(self) -> np.ndarray:
        if self._u is None:
            self._u = inverse_factor(self.h)
        return self._u

    def round(self, w: np.ndarray, scales: list[np.ndarray], zeros: list[np.ndarray] | None, lo: int,
              hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q int64 in w's layout, scale, zero) per row of least e^T H e over round-to-nearest and GPTQ on
        each candidate (scale, zero) set ([O] / [N] per row, or scalars: one choice for the tensor)."""
        rows = self.rows(w)
        g, r, _ = rows.shape
        zeros = zeros or [np.zeros(np.shape(s), np.int64) for s in scales]
        best = None
        for s, z in zip(scales, zeros):
            sr = np.broadcast_to(np.asarray(s, np.float64), (g * r,)).reshape(g, r)
            zr = np.broadcast_to(np.asarray(z, np.float64), (g * r,)).reshape(g, r)
            nearest = np.clip(np.rint(rows / sr[..., None]) + zr[..., None], lo, hi)
            for q in (nearest, round_rows(rows, self.factor(), sr, zr, lo, hi)):
                err = row_errors(rows, (q - zr[..., None]) * sr[..., None], self.h)
                if np.ndim(s) == 0:
                    err = np.full_like(err, err.sum())
                if best is None:
                    best = [q, sr, zr, err]
                    continue
                keep = err < best[3]
                best = [np.where(keep[..., None], q, best[0]), np.where(keep, sr, best[1]),
                        np.where(keep, zr, best[2]), np.minimum(err, best[3])]
        q, sr, zr = best[:3]
        scale = sr.reshape(-1).astype(np.float32)
        zero = zr.reshape(-1).astype(np.int64)
        if np.ndim(scales[0]) == 0:
            scale, zero = scale[:1].reshape(()), zero[:1].reshape(())
        return self.unrows(q, np.shape(w)).astype(np.int64), scale, zero
