"""Output losses per sample, so the loss on any subset of the samples is a ratio of sums, not a rerun.

Each metric (table.py's docstring) is written as sum_i num_i / sum_i den_i over the samples i:

    kl, kl@k   num_i = mean over positions of KL(p_ref || p_test) in sample i,        den_i = 1
    ce         num_i = CE(test_i, label_i) - CE(ref_i, label_i),                       den_i = 1
    mse        num_i = mean of (ref_i - test_i)^2,                                     den_i = 1
    cosine     num_i = 1 - cos(ref_i, test_i),                                         den_i = 1
    sqnr       num_i = sum (ref_i - test_i)^2,   den_i = sum ref_i^2   (noise / signal power)

(every sample has the same number of positions, so the mean of per-sample means is the mean over all
positions). The sensitivity evaluator scores each configuration on all samples and on two halves (its
noise estimate): one pass over the outputs gives all three.
"""

from __future__ import annotations

import numpy as np

from dfq_onnx.core import numerics
from dfq_onnx.core.errors import UsageError

Stats = tuple[np.ndarray, np.ndarray]      # (num_i, den_i), one entry per sample
CHUNK_ELEMENTS = 1 << 20                   # elements per float64 temporary of the KL (8 MB)


def _per_sample_mean(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).mean(axis=1) if x.ndim > 1 else x


def _is_distribution(ref: np.ndarray, axis: int) -> bool:
    """The reference already is a distribution on `axis` (non-negative, summing to 1: a Softmax)."""
    return bool(ref.size and ref.min() >= 0.0
                and np.allclose(ref.sum(axis=axis, dtype=np.float64), 1.0, atol=1e-3))


def _log_probs(y: np.ndarray, axis: int, distribution: bool) -> tuple[np.ndarray, np.ndarray]:
    """(log p, p) on `axis`: p = y / sum(y) (y floored at 1e-12) for a distribution, else softmax(y)."""
    y = np.asarray(y, np.float64)
    if distribution:
        y = np.maximum(y, 1e-12)
        total = np.sum(y, axis=axis, keepdims=True)
        return np.log(y) - np.log(total), y / total
    shifted = y - np.max(y, axis=axis, keepdims=True)
    logp = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return logp, np.exp(logp)


def _axis(kind: str) -> int:
    return int(kind[3:]) if kind.startswith("kl@") else -1


def is_distribution(kind: str, ref: np.ndarray) -> bool | None:
    """For a KL output, whether the reference rows `ref` are distributions on its axis (`_kl`; True for a
    set of rows iff True for each of its parts); None for other metrics."""
    return _is_distribution(ref, _axis(kind)) if kind.startswith("kl") else None


def _kl(ref: np.ndarray, test: np.ndarray, axis: int, distribution: bool | None = None) -> np.ndarray:
    """Per-sample KL, a few samples at a time: the float64 temporaries of a wide output (a CTC head's
    [N, T, 6625]) stay near CHUNK_ELEMENTS each instead of N times a sample's size. `distribution`: whether
    the reference is one on `axis` over every sample (read from `ref` when not given)."""
    if distribution is None:
        distribution = _is_distribution(ref, axis)
    step = max(1, CHUNK_ELEMENTS // max(1, ref[0].size))
    out = []
    for i in range(0, len(ref), step):
        logp, p = _log_probs(ref[i:i + step], axis, distribution)
        logq, _ = _log_probs(test[i:i + step], axis, distribution)
        out.append(_per_sample_mean(np.sum(p * (logp - logq), axis=axis)))
    return np.concatenate(out) if out else np.zeros(0)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = numerics.softmax(logits, axis=1)[np.arange(len(labels)), labels]
    return -np.log(np.maximum(p, 1e-30))


def _cosine(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    a = np.asarray(ref, np.float64).reshape(len(ref), -1)
    b = np.asarray(test, np.float64).reshape(len(test), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-30)
    return 1.0 - np.where((na == 0) & (nb == 0), 1.0, cos)


def sample_stats(kind: str, ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None = None,
                 distribution: bool | None = None) -> Stats:
    """(num_i, den_i) of one output (see the module docstring); `distribution`: `is_distribution` of the
    whole reference when `ref` holds only some of its rows."""
    ones = np.ones(len(ref))
    if kind.startswith("kl"):
        return _kl(ref, test, _axis(kind), distribution), ones
    if kind == "cosine":
        return _cosine(ref, test), ones
    if kind == "ce":
        return _cross_entropy(test, labels) - _cross_entropy(ref, labels), ones
    diff = (np.asarray(ref, np.float64) - np.asarray(test, np.float64)) ** 2
    if kind == "mse":
        return _per_sample_mean(diff), ones
    if kind == "sqnr":
        energy = np.asarray(ref, np.float64) ** 2
        return diff.reshape(len(diff), -1).sum(axis=1), energy.reshape(len(energy), -1).sum(axis=1)
    raise UsageError(f"unknown metric '{kind}'")


def combine(kind: str, stats: Stats, rows: np.ndarray | None = None) -> float:
    """The output's loss on the samples `rows` (all when None)."""
    num, den = stats if rows is None else (stats[0][rows], stats[1][rows])
    noise, signal = float(np.sum(num)), float(np.sum(den))
    if kind != "sqnr":
        return noise / max(signal, 1.0)
    if noise == 0.0:
        return 0.0
    return float("inf") if signal == 0.0 else noise / signal


def output_loss(kind: str, ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The loss of one output on all samples."""
    return combine(kind, sample_stats(kind, ref, test, labels))


def all_stats(kinds, refs, tests, labels=None, distribution=None) -> list[Stats]:
    distribution = distribution or [None] * len(kinds)
    return [sample_stats(k, r, t, labels, d) for k, r, t, d in zip(kinds, refs, tests, distribution)]


def total_loss(kinds, stats: list[Stats], rows: np.ndarray | None = None) -> float:
    """Sum over outputs of their loss on the samples `rows` (all when None)."""
    return float(sum(combine(k, s, rows) for k, s in zip(kinds, stats)))
