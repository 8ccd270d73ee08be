"""Spectral envelopes picked by the BN statistics a model keeps after its activations.

A BN that follows an activation (Conv - Relu - BN: CREPE's blocks, Keras' Conv - Activation - BN) is
left in the graph (passes/fold_bn.py); its output was trained to be N(beta_c, gamma_c^2) per channel
over the training inputs. Unlike a folded BN's, nothing measured says the prior's samples fit it: CREPE
tiny's tonal 512-tap filters answer the prior's broadband frames 2-5x more weakly than real frames, and
every range calibrated on them is as low (BENCHMARKS.md, session 21). So the prior is measured there
first, on one forward pass of its samples:

    r_l = median_c  s_lc / |gamma_lc|       s_lc = std of kept BN l's output channel c over a sample
    off = median_l |log r_l|                (the kept BNs only; folded ones are not consulted)

and when off > log 2 -- the prior's activations are more than 2x (one bit of range) off the scale the
kept statistics give -- each sample is re-drawn: K candidates x_ik whose spectrum is the prior's with
a random gain per frequency band,

    x_ik = standardize( sum_b exp(a_ikb) * band_b(x_i) ),   a_ikb ~ N(0, 2^2),   a_i0 = 0 (the prior),

and the candidate with the lowest BN objective L_A (`objectives`: every BN, folded and kept, and the
input prior) is kept. The bands are half octaves of the last axis for a 1-D signal (a waveform [L],
channels [C, L], L >= 16) and the four octave bands of `search.frequency_bands` for an image; one gain
per band, shared by the channels. Concentrating a sample's energy in a few bands is what tonal filters
respond to; candidate 0 keeps the prior wherever nothing fits better, so no sample's loss rises.
A random pick rather than the ES search: on CREPE tiny 16 candidates (1,024 rows) lower L_A from 0.46
to 0.32 and keep 99.8 % of FP32's pitches (the prior: 98.55 %), where ES with the same band gains added to
its latent took 80 steps (20,480 rows) for 0.28 and 99.8 % (BENCHMARKS.md, session 22). The candidates
are evaluated one index k at a time over all samples, so memory is the samples twice.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.synth.search import frequency_bands, squash

CANDIDATES, LOG_GAIN_STD, MIN_CANDIDATES = 16, 2.0, 4
MISMATCH = math.log(2.0)     # |log r| above which the prior misses the kept statistics


def kept_tensors(graph: gs.Graph, bn_stats: dict) -> set[str]:
    """The statistics' tensors a BatchNormalization left in the graph writes (a folded BN's tensor is
    its layer's output)."""
    table = graph.tensors()
    return {s.tensor for s in bn_stats.values() if s.tensor in table and table[s.tensor].inputs
            and table[s.tensor].inputs[0].op == "BatchNormalization"}


def scale_ratios(stats: list[np.ndarray], targets) -> dict[str, float]:
    """r_l per spatial BN target: the median over channels of the samples' mean per-sample std over
    |gamma| (module docstring), from the stats model's (mean, mean square) outputs."""
    out, pos = {}, 0
    for t in targets:
        if not t.spatial:
            pos += 1
            continue
        mean = stats[pos].astype(np.float64)
        std = np.sqrt(np.maximum(stats[pos + 1] - mean ** 2, 0.0)).mean(axis=0)
        pos += 2
        out[t.tensor] = float(np.median(std / np.maximum(np.abs(t.gamma), 1e-12)))
    return out


def mismatch(ratios: dict[str, float], kept: set[str]) -> float | None:
    """median over the kept BNs of |log r_l| (None without a spatial kept BN)."""
    logs = [abs(math.log(max(r, 1e-12))) for name, r in ratios.items() if name in kept]
    return float(np.median(logs)) if logs else None


def line_bands(x: np.ndarray) -> np.ndarray:
    """[N, ..., L] -> [N, B, ..., L] float32: half octaves of the last axis, [1/4, 1/2], [2^-2.5, 1/4),
    ..., the rest below last; B = max(2, floor(2 log2(L / 8))). They sum to `x`."""
    length = x.shape[-1]
    count = max(2, int(2 * math.log2(length / 8)))
    f = np.fft.rfftfreq(length)
    edges = [np.inf] + [0.5 * 2 ** (-(k + 1) / 2) for k in range(count - 1)] + [-1.0]
    spec = np.fft.rfft(x, axis=-1)
    parts = [np.fft.irfft(spec * ((f >= lo) & (f < hi)), length, axis=-1) for hi, lo in zip(edges, edges[1:])]
    return np.stack(parts, axis=1).astype(np.float32)


def bands(x: np.ndarray) -> np.ndarray | None:
    """The bands of samples `x` [N, *shape]: images (rank 3, sides >= 4) octaves, 1-D signals (rank 1
    or 2, L >= 16) half octaves; None for other shapes."""
    if x.ndim == 4 and min(x.shape[2:]) >= 4:
        return frequency_bands(x)
    if x.ndim in (2, 3) and x.shape[-1] >= 16:
        return line_bands(x)
    return None


def pickable(latent: dict[str, np.ndarray]) -> bool:
    """Whether every input has bands to weigh (an image or a 1-D signal)."""
    return all(v.ndim == 4 and min(v.shape[2:]) >= 4 or v.ndim in (2, 3) and v.shape[-1] >= 16
               for v in latent.values())


def _standardize(x: np.ndarray) -> np.ndarray:
    """Per sample and channel (axis 1 of rank >= 3; the whole sample of rank 2): mean 0, std 1."""
    axes = tuple(range(2, x.ndim)) if x.ndim >= 3 else (1,)
    x = x - x.mean(axis=axes, keepdims=True)
    return x / np.maximum(x.std(axis=axes, keepdims=True), 1e-12)


def candidate(split: dict[str, np.ndarray], gains: np.ndarray) -> dict[str, np.ndarray]:
    """sum_b gains[n, b] band_b, standardized, for every input (gains [N, B])."""
    out = {}
    for k, b in split.items():
        g = gains[:, :b.shape[1]].reshape(gains.shape[0], b.shape[1], *([1] * (b.ndim - 2)))
        out[k] = _standardize((g * b).sum(axis=1))
    return out


def measure(latent: dict[str, np.ndarray], runner, objective, ranges: dict) -> tuple[np.ndarray, dict]:
    """(L_A per sample, r_l per spatial BN target) of the samples `latent`, from one run."""
    feeds = squash(latent, ranges)
    outs = runner.run(feeds)
    idx = np.arange(len(next(iter(feeds.values()))))
    losses = objective.losses(outs, list(feeds.values()), idx)
    return losses, scale_ratios(objective.split(outs)[0], objective.bn)


def pick(latent: dict[str, np.ndarray], first: np.ndarray, runner, objective, ranges: dict,
         rng: np.random.Generator, count: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(latent with each sample's best of `count` candidates, their L_A); candidate 0 is `latent`, whose
    losses are `first` (module docstring)."""
    split = {k: bands(v) for k, v in latent.items()}
    n = len(first)
    idx = np.arange(n)
    width = max(b.shape[1] for b in split.values())
    best, best_loss = {k: v.copy() for k, v in latent.items()}, first.copy()
    for _ in range(1, count):
        x = candidate(split, np.exp(LOG_GAIN_STD * rng.standard_normal((n, width))))
        feeds = squash(x, ranges)
        value = objective.losses(runner.run(feeds), list(feeds.values()), idx)
        better = value < best_loss
        for k in best:
            best[k][better] = x[k][better]
        best_loss = np.where(better, value, best_loss)
    return best, best_loss
