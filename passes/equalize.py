"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and
Bias Correction", sec. 4.1).

For a pair of linear layers  y = W2 f(W1 x + b1) + b2  whose path f is per-channel positively
homogeneous (ReLU, identity, zero Pad, MaxPool; `corrections.layer_pairs`), f(S^-1 z) = S^-1 f(z) for
S = diag(s), s > 0, so

    W1' = S^-1 W1      b1' = S^-1 b1      W2' = W2 S          (columns of W2: its input channels)

computes the same function. With r1_i = max|W1[i, ...]| (output channel i of the first layer) and
r2_i = max|W2[:, i, ...]| (input channel i of the second; for a depthwise second layer that is its
own row i), Nagel's choice

    s_i = sqrt(r1_i / r2_i)        gives        r1_i' = r1_i / s_i = r2_i s_i = sqrt(r1_i r2_i)

which maximizes the total per-channel precision sum_i (r1_i' / R1')(r2_i' / R2') of per-tensor weight
grids (their eq. 11). Chains (conv -> depthwise -> pointwise) are equalized by sweeping all pairs until
every scale is within `tol` of 1. With per-channel weight grids (most targets) the first layer's grid
is invariant to S, and the gain comes from the second layer's rows and the intermediate activation,
whose per-tensor range sees the rescaled channels.

ReLU6 = Clip(0, hi) is scale-equivariant only on channels that never reach hi. After the BN fold the
first layer's channel i is N(beta_i, gamma_i^2) (the kept statistics), so with u_i = beta_i + K |gamma_i|
(K = `clip_sigma`) a channel with u_i < hi keeps its Clip inactive as long as s_i >= u_i / hi; such
channels get s_i = max(s_i, u_i / hi), channels with u_i >= hi keep s_i = 1, and a Clip pair without
statistics is skipped. FP32 is then preserved except for values more than K sigma above a channel's mean
(K = 20, since BN outputs have heavy tails: see CLIP_SIGMA).

Per-channel weight grids (`criterion="activations"`; "auto" picks it when the target quantizes
weights per channel): the first layer's grid is invariant to S, so r1_i is replaced by the range of the
intermediate activation's channel i, a_i, from the BN statistics (|beta_i| + K_a |gamma_i|, clipped by
ReLU / ReLU6; K_a the analytic ranges' clipping threshold for the activation bits), the quantity whose
per-tensor grid S does change:

    s_i = sqrt(a_i / r2_i)          (a_i / s_i = r2_i s_i: activation and weight column balanced)
    s_i = a_i / max_j a_j           (second layer depthwise: its per-channel grid is invariant too, so
                                     only the activation matters and every channel gets the full range)

Pairs whose first layer has no BN statistics keep Nagel's weight ranges.

The kept BN statistics of the first layer follow the rescaling (beta_i / s_i, gamma_i / s_i): analytic
ranges, synthetic calibration and bias correction read them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.moments import laplace_clip_k
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.corrections import formulas as cm
from dfq_onnx.corrections.layer_pairs import LayerPair, find_pairs, linear_kind

# K: a channel is taken never to exceed beta + K |gamma|. Real BN outputs are far from Gaussian in the
# tail: on EfficientNet-Lite0 (synthetic samples) CLE kept the FP32 logits at 26 dB SQNR with K = 6,
# 59 dB with K = 10 and 123 dB (float precision) with K = 20.
CLIP_SIGMA = 20.0


def rescale_pair(state: CompileState, pair: LayerPair, s: np.ndarray) -> None:
    """W1 /= s (rows), b1 /= s, W2 *= s (columns), BN statistics of the first layer / s."""
    first, second = pair.first, pair.second
    k1, k2 = linear_kind(first), linear_kind(second)
    w1, w2 = first.inputs[1], second.inputs[1]
    w1.values = cm.scale_out(const_values(w1), 1.0 / s, k1)
    if len(first.inputs) > 2 and first.inputs[2].name:
        b1 = first.inputs[2]
        b1.values = (const_values(b1).astype(np.float64) / s).astype(const_values(b1).dtype)
    w2.values = cm.scale_in(const_values(w2), s, k2)
    label = node_label(first)
    stats = state.bn_stats.get(label)
    if stats is not None:
        state.bn_stats[label] = dataclasses.replace(stats, beta=stats.beta / s, gamma=stats.gamma / s)


class EqualizeCrossLayer(Pass):
    """Rescale consecutive layers' channels so their weight ranges match (function preserved)."""

    name = "CrossLayerEqualization"

    def __init__(self, sweeps: int = 50, tol: float = 1e-4, clip_sigma: float = CLIP_SIGMA,
                 criterion: str = "weights"):
        if criterion not in ("weights", "activations", "auto"):
            raise ValueError(f"CLE criterion '{criterion}': expected weights, activations or auto")
        self.sweeps, self.tol, self.clip_sigma, self.criterion = sweeps, tol, clip_sigma, criterion

    @staticmethod
    def _act_range(state: CompileState, pair: LayerPair) -> np.ndarray:
        stats = state.bn_stats[node_label(pair.first)]
        k = laplace_clip_k(state.options.act_bits or state.target.default_act_bits)
        top, bottom = stats.beta + k * np.abs(stats.gamma), stats.beta - k * np.abs(stats.gamma)
        if pair.act == "identity":
            return np.maximum(np.abs(top), np.abs(bottom))
        return np.clip(top, 0.0, pair.clip_hi)

    def _scales(self, state: CompileState, pair: LayerPair, by_act: bool) -> np.ndarray:
        k1, k2 = linear_kind(pair.first), linear_kind(pair.second)
        r2 = cm.in_absmax(const_values(pair.second.inputs[1]), k2)
        if by_act and node_label(pair.first) in state.bn_stats:
            a = self._act_range(state, pair)
            w2 = const_values(pair.second.inputs[1])
            depthwise = k2.op == "Conv" and k2.group > 1 and w2.shape[1] == 1 and w2.shape[0] == k2.group
            s = np.where(a > 0, a / max(float(a.max()), 1e-30), 1.0) if depthwise else cm.cle_scales(a, r2)
        else:
            s = cm.cle_scales(cm.out_absmax(const_values(pair.first.inputs[1]), k1), r2)
        if pair.act == "clip":
            stats = state.bn_stats[node_label(pair.first)]
            top = stats.beta + self.clip_sigma * np.abs(stats.gamma)
            s = np.where(top < pair.clip_hi, np.maximum(s, top / pair.clip_hi), 1.0)
        return s

    def run(self, state: CompileState) -> PassResult:
        pairs, skipped = find_pairs(state.graph)
        usable = []
        for p in pairs:
            if p.act == "clip" and node_label(p.first) not in state.bn_stats:
                skipped.append({"layer": node_label(p.first), "reason": f"Clip(0, {p.clip_hi:g}) after it "
                                "and no BN statistics to show which channels stay below the bound"})
            else:
                usable.append(p)
        total = {p.label: np.ones(const_values(p.first.inputs[1]).shape[linear_kind(p.first).out_axis()])
                 for p in usable}
        by_act = self.criterion == "activations" or (self.criterion == "auto" and state.target.per_channel)
        sweeps = 0
        for sweep in range(1, self.sweeps + 1):
            sweeps = sweep
            worst = 0.0
            for p in usable:
                s = self._scales(state, p, by_act)
                change = float(np.max(np.abs(np.log(s)))) if s.size else 0.0
                if change < self.tol:
                    continue
                rescale_pair(state, p, s)
                total[p.label] *= s
                worst = max(worst, change)
            if worst < self.tol:
                break
        changed = {k: v for k, v in total.items() if np.max(np.abs(np.log(v))) >= self.tol}
        state.report.notes["cross_layer_equalization"] = {
            "pairs": [{"pair": p.label, "activation": p.act, "scale_min": float(total[p.label].min()),
                       "scale_max": float(total[p.label].max())} for p in usable if p.label in changed],
            "sweeps": sweeps, "skipped": skipped, "criterion": "activations" if by_act else "weights"}
        return PassResult(bool(changed), f"{len(changed)} of {len(usable)} pairs equalized in {sweeps} "
                                         f"sweeps, {len(skipped)} layers skipped")
