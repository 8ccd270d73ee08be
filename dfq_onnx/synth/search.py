"""Gradient-free search for synthetic inputs: antithetic evolution strategies with Adam. Pure numpy.

Parameterization (per input, per sample). An image input (rank 4, [N, C, H, W]) is searched around
the images u0 of the current stage, split into NB = 4 octave bands b (FFT masks, sum_b u0_b = u0):

    u = M (sum_b exp(a_b) * u0_b) + A_H z A_W^T     A_H in R^{H x h}, A_W in R^{W x w} (bilinear,
    x = B tanh(u / B)                               half-pixel centres, as ONNX Resize)

with a_b in R^C the log-gain of each channel in band b (contrast per scale), M = I + dM a C x C
colour mix (C <= 4), and z in R^{C x h x w} a low-resolution residual latent. Each stage starts at
theta = 0 (u = u0) and uses a finer latent (short side 4, 8, 16: coarse to fine); the
gains and the mix reach every frequency, the latent adds new low-frequency structure. B = 2.5 keeps
the inputs standardized-looking (real CIFAR/ImageNet inputs lie in [-2.1, 2.6]). Other ranks are
searched directly: u = u0 + z. The first images are random fields with a 1/f^1.5 amplitude
spectrum and correlated channels (rho = 0.8), each channel standardized: natural-image statistics.

Search. For sample i with parameters theta_i (dimension d), P antithetic pairs per step:

    candidates  theta_i +- sigma eps_ik,  eps_ik ~ N(0, I_d),  k = 1..P
    r = centred ranks of the 2P losses of sample i, in [-1/2, 1/2]   (fitness shaping)
    g_i = 1 / (P sigma) sum_k (r_ik^+ - r_ik^-) eps_ik
    theta_i <- Adam(theta_i, g_i, lr_t),   lr_t cosine-decayed from lr to lr / 10 within a stage

The loss is per-sample separable, so the candidates of all samples go through the model as one
batch of N * 2P rows (one ORT call per step). Ranks are computed with a stable sort and all draws
come from one seeded generator, so the result is a deterministic function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

PINK_ALPHA, CHANNEL_CORR = 1.5, 0.8
BOUND = 2.5          # |x| < BOUND: standardized inputs rarely leave it
BANDS, MAX_MIX = 4, 4
LATENT_SIDES = (4, 8, 16)   # latent short side per stage, coarse to fine


@dataclass(frozen=True)
class ESConfig:
    population: int          # antithetic pairs per sample and step
    sigma: float = 0.3
    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.99


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation matrix with half-pixel centres and edge clamping."""
    a = np.zeros((n_out, n_in))
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    a[np.arange(n_out), lo] += 1.0 - frac
    a[np.arange(n_out), hi] += frac
    return a


def frequency_bands(u: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """[N, C, H, W] -> [N, bands, C, H, W] float32: octaves of the radial frequency f (cycles/pixel),
    [1/4, inf), [1/8, 1/4), ..., and [0, 1/2^bands) last; they sum to `u`."""
    h, w = u.shape[-2:]
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    edges = [np.inf] + [0.5 / 2 ** (k + 1) for k in range(bands - 1)] + [-1.0]
    spec = np.fft.fft2(u)
    out = [np.fft.ifft2(spec * ((radius >= lo) & (radius < hi))).real for hi, lo in zip(edges, edges[1:])]
    return np.stack(out, axis=1).astype(np.float32)


class Decoder:
    """(theta [B, d], sample index [B]) -> u [B, *shape] around the stage's images u0 of one input."""

    def __init__(self, u0: np.ndarray, factor: int):
        shape = u0.shape[1:]
        self.image = len(shape) == 3 and min(shape[1:]) >= 4
        self.base, self.mix, self.gain, self.ah = u0, 0, 0, None
        self.latent = shape
        if self.image:
            c, h, w = shape
            self.base = frequency_bands(u0)
            self.mix, self.gain = (c * c if c <= MAX_MIX else 0), c * BANDS
            if factor > 1:
                self.latent = (c, max(1, -(-h // factor)), max(1, -(-w // factor)))
                self.ah, self.aw = bilinear_matrix(h, self.latent[1]), bilinear_matrix(w, self.latent[2])
        self.dims = self.mix + self.gain + int(np.prod(self.latent))

    def __call__(self, theta: np.ndarray, idx: np.ndarray) -> np.ndarray:
        z = theta[:, self.mix + self.gain:].reshape((-1,) + self.latent)
        if not self.image:
            return self.base[idx] + z
        c = self.latent[0]
        u = self.banded(np.exp(theta[:, self.mix:self.mix + self.gain]).reshape(-1, BANDS, c), idx)
        if self.mix:
            u = u + np.einsum("bij,bjhw->bihw", theta[:, :self.mix].reshape(-1, c, c), u, optimize=True)
        if self.ah is not None:
            z = np.einsum("hi,bcij,wj->bchw", self.ah, z, self.aw, optimize=True)
        return u + z

    def banded(self, gains: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """sum_b gains[r, b, c] * u0_b[idx[r], c], summed band after band as a loop over b would; when `idx`
        repeats each sample m times in order (the search's candidates) without gathering the bands per row
        (the gather was half of a step's decoding at 64 x 64)."""
        n = len(self.base)
        m = len(idx) // n
        if n * m == len(idx) and np.array_equal(idx, np.repeat(np.arange(n), m)):
            out = np.einsum("nmbc,nbchw->nmchw", gains.reshape(n, m, *gains.shape[1:]), self.base)
            return out.reshape(len(idx), *out.shape[2:])
        return np.einsum("rbc,rbchw->rchw", gains, self.base[idx])


class Stage:
    """The decoders of every input for one stage: theta [B, sum of dims] -> {input: u [B, ...]}."""

    def __init__(self, latent: dict[str, np.ndarray], factor: int):
        self.decoders = {k: Decoder(u, factor) for k, u in latent.items()}
        self.samples = len(next(iter(latent.values())))
        self.bounds = np.cumsum([0] + [d.dims for d in self.decoders.values()])
        self.dims = int(self.bounds[-1])

    def __call__(self, theta: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
        b = self.bounds
        return {k: dec(theta[:, b[i]:b[i + 1]], idx) for i, (k, dec) in enumerate(self.decoders.items())}


def stage_factors(shape: tuple[int, ...], stages: int) -> list[int]:
    """Latent down-sampling factors, coarse to fine (1 = direct, for non-images): the latent's short
    side is 4, 8, 16 pixels whatever the input size (factors 8, 4, 2 at 32 x 32; 56, 28, 14 at 224 x
    224), because ES with a few candidates per step only estimates a descent direction in a few
    hundred dimensions per sample; finer detail comes from the band gains."""
    if len(shape) != 3:
        return [1]
    side = min(shape[1:])
    factors = [side // s for s in LATENT_SIDES if side // s >= 2]
    return factors[-stages:] if factors else [1]


def pink_noise(rng: np.random.Generator, n: int, shape: tuple[int, ...], alpha: float = PINK_ALPHA,
               rho: float = CHANNEL_CORR) -> np.ndarray:
    """n samples (float32) with an isotropic 1/f^alpha amplitude spectrum over the trailing two axes,
    channels correlated by a shared component (rho), each channel standardized; drawn one sample at
    a time (memory: the samples, not their complex spectra). Non-image shapes: N(0, 1)."""
    if len(shape) != 3 or min(shape[1:]) < 4:
        return rng.standard_normal((n,) + shape).astype(np.float32)
    h, w = shape[1:]
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    radius[0, 0] = 1.0 / max(h, w)
    out = np.empty((n,) + shape, np.float32)
    for i in range(n):
        spec = rng.standard_normal((shape[0] + 1, h, w)) + 1j * rng.standard_normal((shape[0] + 1, h, w))
        field = np.fft.ifft2(spec / radius ** alpha).real
        field /= np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-12)
        x = np.sqrt(rho) * field[:1] + np.sqrt(1.0 - rho) * field[1:]
        x -= x.mean(axis=(1, 2), keepdims=True)
        out[i] = x / np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-12)
    return out


def squash(latent: dict[str, np.ndarray], ranges: Mapping[str, tuple[float, float]] | None = None
           ) -> dict[str, np.ndarray]:
    """x = BOUND tanh(u / BOUND) as float32: identity near 0, keeps inputs in (-BOUND, BOUND); inputs
    with a declared range (lo, hi) (`--input-range`: a model that reads [0, 1] or [0, 255] pixels, not
    standardized ones) are then mapped affinely onto it, lo + (hi - lo) (x + BOUND) / (2 BOUND)."""
    out = {}
    for k, u in latent.items():      # in place: one temporary of the samples' size, not three
        x = u / BOUND
        np.tanh(x, out=x)
        x *= BOUND
        if ranges and k in ranges:
            to_range(x, *ranges[k])
        out[k] = x.astype(np.float32, copy=False)
    return out


def to_range(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """In place: (-BOUND, BOUND) onto (lo, hi), x -> lo + (hi - lo) (x + BOUND) / (2 BOUND)."""
    x += BOUND
    x *= (hi - lo) / (2.0 * BOUND)
    x += lo
    return x


def unsquash(x: np.ndarray) -> np.ndarray:
    """The latent u with squash(u) = x, for |x| < BOUND (images a search starts from)."""
    return BOUND * np.arctanh(np.clip(np.asarray(x, np.float64) / BOUND, -0.999, 0.999))


def centred_ranks(losses: np.ndarray) -> np.ndarray:
    """Per row: rank 0 (lowest loss) .. M-1 mapped to [-1/2, 1/2]; ties broken by position."""
    m = losses.shape[1]
    order = np.argsort(losses, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(m)[None, :].repeat(len(losses), 0), axis=1)
    return ranks / max(m - 1, 1) - 0.5


class Adam:
    def __init__(self, shape: tuple[int, ...], cfg: ESConfig):
        self.m, self.v, self.t, self.cfg = np.zeros(shape), np.zeros(shape), 0, cfg

    def step(self, grad: np.ndarray, lr: float) -> np.ndarray:
        """The update to add to the parameters for a descent direction `grad`."""
        c = self.cfg
        self.t += 1
        self.m = c.beta1 * self.m + (1 - c.beta1) * grad
        self.v = c.beta2 * self.v + (1 - c.beta2) * grad ** 2
        mhat, vhat = self.m / (1 - c.beta1 ** self.t), self.v / (1 - c.beta2 ** self.t)
        return -lr * mhat / (np.sqrt(vhat) + 1e-8)


def cosine_lr(lr: float, t: int, steps: int, floor: float = 0.1) -> float:
    """lr_t = lr (floor + (1 - floor) (1 + cos(pi t / steps)) / 2): decays to floor * lr."""
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * t / max(steps, 1))))


def es_minimize(loss: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, cfg: ESConfig, steps: int,
                rng: np.random.Generator, on_step: Callable[[float], None] | None = None) -> np.ndarray:
    """Run `steps` ES steps on theta [N, d]; `loss` maps candidates [N, M, d] to losses [N, M].

    Returns the final parameters; `on_step` receives the mean candidate loss of each step.
    """
    n, d = theta.shape
    p = cfg.population
    adam = Adam(theta.shape, cfg)
    for t in range(steps):
        eps = rng.standard_normal((n, p, d))
        cand = theta[:, None, :] + cfg.sigma * np.concatenate([eps, -eps], axis=1)
        f = loss(cand)
        u = centred_ranks(f)
        grad = np.einsum("nk,nkd->nd", u[:, :p] - u[:, p:], eps) / (p * cfg.sigma)
        theta = theta + adam.step(grad, cosine_lr(cfg.lr, t, steps))
        if on_step is not None:
            on_step(float(f.mean()))
    return theta
