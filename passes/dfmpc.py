"""DF-MPC: closed-form compensation of a low-precision layer by the higher-precision layer after it
(Chen et al., "Data-Free Quantization via Mixed-Precision Compensation without Fine-Tuning", Pattern
Recognition 143, 2023; arXiv:2307.00498).

Pair  y = W2 f(W1 x + b1)  (f = ReLU or identity on the path, `corrections.layer_pairs`), W1 emitted at
b_1 bits as W_hat (fixed by EmitQDQ), W2 at b_2 > b_1 bits. Allow the next layer's input channels a
gain c_o > 0 and divide the first layer's bias by it:

    W2' = W2 diag(c)      b1' = b1 / c
    W2' f(W_hat x + b1') = W2 f(diag(c) W_hat x + b1)          (f positively homogeneous)

so the compensated low-precision layer acts as c_o W_hat_o. The feature-map reconstruction error of
the next layer is bounded (f is 1-Lipschitz) by

    || W2 (f(W1 x + b1) - f(C W_hat x + b1)) ||^2  <=  ||W2||^2 sum_o ((c_o W_hat_o - W1_o) . x)^2

and its expectation is, per output channel o of the first layer, a quadratic in c_o with
M = E[x x^T] over (input channel, kernel tap):

    E[((c W_hat_o - W_o) . x)^2] = c^2 W_hat_o^T M W_hat_o - 2 c W_o^T M W_hat_o + W_o^T M W_o
    =>  c_o = W_o^T M W_hat_o / W_hat_o^T M W_hat_o

Data-free M: the kept BN statistics give E[x] = mu and Var[x] = var per input channel (the analytic
estimate, as bias correction uses), and channels and taps are taken independent:
M = diag(var) + mu mu^T, so c_o = (sum W Wh var + (W.mu)(Wh.mu)) / (sum Wh^2 var + (Wh.mu)^2)
(`corrections.dfmpc_gains`); without statistics M = I, the projection c_o = <W_o, Wh_o> / |Wh_o|^2.
With per-channel symmetric weight grids c_o rescales the low-precision layer's step to the
least-squares one for its fixed integer codes; the next layer absorbs it at its higher precision.

Pairs are compensated in graph order; ReLU6 (the gain would move its bound) and pairs whose next layer
is not at higher precision are skipped with the reason. The kept BN statistics of the first layer
follow (beta / c, gamma / c), and `state.weight_gain[first] = c` tells CorrectBias that the reference
weight in the stored coordinates is W1 / c. Runs after the bit plan, before CorrectBias and EmitQDQ.
The tensors between the layers now carry channel o divided by c_o, so their activation ranges (measured
before the plan) are widened by max_o(u_o / c_o) / max_o(u_o), u_o = max(0, beta_o + K |gamma_o|) the
channel's analytic upper range (max_o 1 / c_o without statistics): a gain c_o < 1 would otherwise push
its channel into the clipping of a stale range. Gains are clipped to [1 / max_gain, max_gain] (2): at 2
bits the least-squares gain of a row whose codes kept little of it can approach 0, and 1 / c_o would
then dominate the per-tensor activation range (measured: c = 0.01, a 147x wider range).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from dfq_onnx.passes.bias_correction import input_moments, input_scales, layer_bits

from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.moments import laplace_clip_k
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.corrections import formulas as cm
from dfq_onnx.corrections.layer_pairs import find_pairs, linear_kind, tap_fractions
from dfq_onnx.sensitivity.probe import emitted_weight


class CompensateDFMPC(Pass):
    """Rescale each low-precision layer's effective weights through the higher-precision layer after it."""

    name = "DFMPC"

    def __init__(self, require_higher: bool = True, max_gain: float = 2.0):
        self.require_higher, self.max_gain = require_higher, max_gain

    def run(self, state: CompileState) -> PassResult:
        if state.weight_gain:
            return PassResult(False, "already compensated")
        pairs, skipped = find_pairs(state.graph)
        moments, _ = input_moments(state)
        scales, bits = input_scales(state), layer_bits(state)
        done = []
        for p in pairs:
            first, second = node_label(p.first), node_label(p.second)
            reason = None
            if p.act == "clip":
                reason = f"Clip(0, {p.clip_hi:g}) on the path: a gain would move its bound"
            elif first not in bits or second not in bits or first not in state.spec.layers:
                reason = "not both quantized"
            elif self.require_higher and not bits[second] > bits[first]:
                reason = f"next layer at W{bits[second]} is not above W{bits[first]}"
            elif bits[first] >= 16:
                reason = "16-bit weights"
            if reason:
                skipped.append({"layer": first, "reason": reason})
                continue
            done.append(self._compensate(state, p, moments.get(first), scales, bits[first], self.max_gain))
        state.report.notes["dfmpc"] = {"pairs": done, "skipped": skipped}
        return PassResult(bool(done), f"{len(done)} pairs compensated, {len(skipped)} layers skipped")

    @staticmethod
    def _compensate(state: CompileState, p, moments, scales, bits: int, max_gain: float) -> dict:
        k1, k2 = linear_kind(p.first), linear_kind(p.second)
        w1 = const_values(p.first.inputs[1]).astype(np.float32)
        has_bias = len(p.first.inputs) > 2 and p.first.inputs[2].name
        b1 = const_values(p.first.inputs[2]).astype(np.float32) if has_bias else None
        spec = state.spec.layers[node_label(p.first)]
        w_hat, _ = emitted_weight(w1, b1, scales.get(p.first.inputs[0].name), bits, spec.axis, state.target)
        cin = k1.in_channels(w1)
        mu, var = moments if moments is not None else (np.zeros(cin), np.ones(cin))
        c = np.clip(cm.dfmpc_gains(w1, w_hat, mu, var, k1, tap_fractions(p.first)), 1.0 / max_gain, max_gain)
        if has_bias:
            p.first.inputs[2].values = (b1.astype(np.float64) / c).astype(np.float32)
        w2 = p.second.inputs[1]
        w2.values = cm.scale_in(const_values(w2), c, k2)
        label = node_label(p.first)
        state.weight_gain[label] = c
        stats = state.bn_stats.get(label)
        widen = float(np.max(1.0 / c))
        if stats is not None:
            k = laplace_clip_k(state.options.act_bits or state.target.default_act_bits)
            u = np.maximum(stats.beta + k * np.abs(stats.gamma), 0.0)
            widen = float(np.max(u / c) / np.max(u)) if np.max(u) > 0 else 1.0
            state.bn_stats[label] = dataclasses.replace(stats, beta=stats.beta / c, gamma=stats.gamma / c)
        widen = max(widen, 1.0)
        for t in p.tensors:
            r = state.ranges.get(t)
            if r is not None:
                state.ranges[t] = dataclasses.replace(r, lo=r.lo * widen, hi=r.hi * widen)
        return {"pair": p.label, "moments": "bn" if moments is not None else "identity",
                "gain_min": float(c.min()), "gain_max": float(c.max()), "range_widened": widen}
