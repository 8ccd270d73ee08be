"""Fewer configurations on many-group models: each group scored at three weight widths at most, the
others interpolated from the weights' own quantization noise.

Scoring every candidate width of every group costs G x K configurations (PP-OCRv4 rec: 43 weighted
groups x 6 widths + 1 = 257 probe forwards of 64 samples, each a [64, 40, 6625] KL; 2-13 s apiece on
2 shared cores). Here, per group g with static candidates (form groups keep every candidate):

    N_g(b) = sum over g's weighted layers l of ||W_hat_l(b) - W_l||^2 / ||W_l||^2

is the relative weight-noise power of Emit's weights at b bits (computed exactly in numpy, cheap). For a
small perturbation the output loss is quadratic in it (KL ~ 1/2 dW' F dW; MSE and noise/signal power
alike) and per-channel rounding noise has the same shape at every width, so the loss grows like
c_g N_g(b), about 4x per bit removed. With quantized activations there is also a floor f_g: any weight
change moves values across activation rounding steps downstream, which costs about the same at 6 as at
8 bits (ResNet-20: Omega(8) is 0.2-1.0 of Omega(6)). So, with the ladder of widths

    l = the lowest width,  a = the anchor (the median width below the base),  t = the widest (the base)
    ({2,3,4,5,6,8} -> 2, 4, 8; {2,4,8} -> every width is measured, as before),

  1. measure l. When the samples cannot tell Omega_g(l) from 0 (its shrunk value is 0: the half-sample
     noise estimate of `scoring.shrink` exceeds it), no wider width can matter: stop;
  2. else measure a; stop when it is negligible; else measure t;
  3. every other width b < t lies on the line through a and t in the noise power (floor + quadratic):
         Omega_g(b) = Omega_g(t) + (Omega_g(a) - Omega_g(t)) (N_g(b) - N_g(t)) / (N_g(a) - N_g(t));
     with an average-bits budget B whose widest width below it, n (`budget_width`), lies between a and
     t, n is measured too (after a, before t) and widths between a and t lie on the line through their
     measured neighbours (a..n, n..t). Far from a small perturbation the loss bends away from one line
     (PP-OCRv4 rec's per-step KL saturates: Conv.24 measured 0.33 at W5 where the a..t line gave 0.14),
     and n is the width the plan's groups go to first when others stay wider: its value decides the
     budget's trades, so it is measured rather than read off a line (<= G more configurations);
     a group stopped early takes the nearest measured width above b (else below) times
     N_g(b) / N_g(that width) (then it shrinks to 0 as that one did).

Each interpolated value is formed on the term and its two half-sample values alike, so the shrinkage sees
them as it sees measured ones. The lowest width is measured, not interpolated: at 2 bits most weights
round to 0 and the loss is far off the line (`fit_error`, in the report: the line's value there over the
measurement). Cost: at most 3 G + 1 configurations (4 G + 1 with a budget's width; fewer where groups
stop early) instead of K G + 1, whatever K; the fit against full tables: `benchmarks/sensitivity_fit.py`
(BENCHMARKS.md, issue 17 session 7: ResNet-20 W5 / W6 within 2x of the measured value for 19 of 20
groups, W3 for 16; session 8: the budget's width).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from dfq_onnx.backends.input_moments import importance
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.sensitivity.probe_qdq import emitted_weight

Vector = np.ndarray        # [term, term on even samples, term on odd samples] (Evaluator.relative)


def noise_powers(graph, spec, groups, bits, target, moments=None) -> dict[str, dict[int, float]]:
    """N_g(b) of every group with weights at every width of `bits` (module docstring), of Emit's weights
    (clip search weighted by the layers' input `moments`, backends/input_moments.py)."""
    nodes = {node_label(n): n for n in graph.nodes}
    out: dict[str, dict[int, float]] = {}
    for g in groups:
        total = dict.fromkeys(bits, 0.0)
        for name in g.layers:
            layer = spec.layers[name]
            w = const_values(nodes[name].inputs[1]).astype(np.float32)
            energy = float(np.sum(np.square(w, dtype=np.float64)))
            if energy == 0.0:
                continue
            for b in bits:
                h = importance(nodes[name], layer, moments)
                w_hat, _ = emitted_weight(w, None, None, b, layer.axis, target, h)
                total[b] += float(np.sum(np.square(w_hat.astype(np.float64) - w))) / energy
        out[g.id] = total
    return out


def anchor_width(bits, base: int) -> int:
    """The median width below `base` (the widest width when none is below)."""
    below = sorted(b for b in bits if b < base)
    return below[len(below) // 2] if below else max(bits)


def budget_width(bits, base: int, budget: float | None) -> int | None:
    """The widest width strictly below an average-bits `budget` when it lies between the anchor and the
    base (None otherwise, or without a budget): where the plan's groups go first when others stay wider."""
    if budget is None:
        return None
    below = [b for b in bits if b < budget]
    near = max(below) if below else None
    return near if near is not None and anchor_width(bits, base) < near < base else None


def ladder(bits, base: int, budget: float | None = None) -> tuple[int, ...]:
    """The widths measured, in order: the lowest, the anchor (`anchor_width`), the budget's width
    (`budget_width`, when there is one) and the widest (the base); fewer when they coincide."""
    near = budget_width(bits, base, budget)
    return tuple(dict.fromkeys(b for b in (min(bits), anchor_width(bits, base), near, max(bits))
                               if b is not None))


def _factor(noise: Mapping[int, float], b: int, ref: int, power: float = 1.0) -> float:
    if noise[ref] <= 0.0:        # the weights are exact at ref, hence at every wider width
        return 0.0 if b > ref else 1.0
    return (noise[b] / noise[ref]) ** power


def _line(out: Mapping[int, Vector], noise: Mapping[int, float], b: int, anchor: int, top: int) -> Vector:
    """Floor + linear in the noise power through the widths `anchor` < `top`, at width b."""
    span = noise[anchor] - noise[top]
    t = (noise[b] - noise[top]) / span if span > 0 else 0.0
    return out[top] + (out[anchor] - out[top]) * t


def _bracket(measured, b: int, anchor: int, top: int) -> tuple[int, int]:
    """The measured widths the line at b runs through: the nearest ones around b from the anchor up
    (piecewise, when a budget's width was measured between them), the anchor and the top below it."""
    if b < anchor:
        return anchor, top
    return max(m for m in measured if anchor <= m < b), min(m for m in measured if m > b)


def fill(measured: Mapping[int, Vector], noise: Mapping[int, float], bits, anchor: int) -> dict[int, Vector]:
    """Every width's vector from the measured ones (module docstring): between the anchor and the widest
    measured width on the line through the measured widths either side (floor + linear in the noise
    power), below the anchor on the line through the anchor and the widest; otherwise (the group stopped
    early) the nearest measured width above (else below) scaled by the noise power."""
    out = {b: np.asarray(v, np.float64) for b, v in measured.items()}
    top = max(out)
    for b in bits:
        if b in out:
            continue
        if anchor in out and top > anchor and b < top:
            out[b] = _line(out, noise, b, *_bracket(measured, b, anchor, top))
        else:
            ref = min((m for m in out if m > b), default=top)
            out[b] = out[ref] * _factor(noise, b, ref)
    return {b: out[b] for b in bits}


def fit_error(measured: Mapping[int, Vector], noise: Mapping[int, float], anchor: int) -> float | None:
    """log10 of the line's value at the lowest measured width over its measurement (how far down the
    quadratic regime reaches); None when the group stopped early or a value is not positive."""
    low, top = min(measured), max(measured)
    if not low < anchor < top or anchor not in measured:
        return None
    predicted, actual = _line(measured, noise, low, anchor, top)[0], measured[low][0]
    return float(np.log10(predicted / actual)) if predicted > 0 and actual > 0 else None


class Widths:
    """Which single configurations to run and every width's vector from them (module docstring).

    `groups`: the static groups (form groups are scored at every candidate by the caller); `noise`:
    `noise_powers` of them; `shrunk`: a term vector's shrunk value (0: negligible, scoring.shrink)."""

    def __init__(self, groups, bits, base: int, noise: Mapping[str, Mapping[int, float]],
                 shrunk: Callable[[Vector], float], budget: float | None = None):
        self.groups, self.bits, self.noise, self.shrunk = list(groups), tuple(bits), noise, shrunk
        self.ladder, self.anchor = ladder(bits, base, budget), anchor_width(bits, base)
        near = budget_width(bits, base, budget) in self.ladder[2:-1]
        self.phases = ("singles", "anchors", "budget", "tops") if near else ("singles", "anchors", "tops")
        self.reached = dict.fromkeys(self.groups, 0)     # group -> widths of the ladder measured

    def step(self, k: int, relative: Callable[[dict], Vector]) -> list[dict]:
        """Step k's configurations: ladder[k] for every group whose ladder[k - 1] was not negligible."""
        if k == 0:
            todo = list(self.groups)
        else:
            prev = self.ladder[k - 1]
            todo = [g for g in self.groups
                    if self.reached[g] == k and self.shrunk(relative({g: prev})) != 0.0]
        for g in todo:
            self.reached[g] = k + 1
        return [{g: self.ladder[k]} for g in todo]

    def vectors(self, relative: Callable[[dict], Vector]) -> dict[str, dict[int, Vector]]:
        """Per group, every width's [term, half a, half b] (measured or extrapolated)."""
        return {g: fill({b: relative({g: b}) for b in self.ladder[:self.reached[g]]}, self.noise[g],
                        self.bits, self.anchor) for g in self.groups}

    def summary(self, relative: Callable[[dict], Vector]) -> dict:
        """Report note: widths measured, where groups stopped, and how well the line through the anchor
        and the top predicts the lowest width (median log10 ratio over the groups measured there)."""
        errors = [fit_error({b: relative({g: b}) for b in self.ladder[:self.reached[g]]}, self.noise[g],
                            self.anchor) for g in self.groups]
        errors = [e for e in errors if e is not None]
        return {"measured": list(self.ladder), "extrapolated": [b for b in self.bits if b not in self.ladder],
                "groups": len(self.groups),
                "stopped_at": {str(w): sum(self.reached[g] == k + 1 for g in self.groups)
                               for k, w in enumerate(self.ladder)},
                "line_at_lowest_log10": float(np.median(errors)) if errors else None}
