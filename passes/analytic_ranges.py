"""Data-free activation ranges from the kept BatchNormalization statistics.

Each activation is described as a per-channel clipped Gaussian (`dfq_onnx.core.moments.Est`) and the
description is propagated through the graph in topological order:

* a layer whose BatchNormalization was folded produces N(beta_c, gamma_c^2) per channel (that is
  what the BN was trained to output);
* graph inputs are taken as standardized, N(0, 1) (the models' own preprocessing);
* Relu / Clip / Sigmoid / HardSigmoid / Softmax clip or bound the estimate; Add / Sub / Mul combine
  the clipped moments of their inputs assuming independence;
* a linear layer without BN propagates mean and variance through its weights:
  mu_o = sum W_oi mu_i + b_o,  var_o = sum W_oi^2 var_i;
* data-movement ops keep the estimate (Pad / Slice / Concat on the channel axis edit the channels).

The range of a tensor is [min_c(mu_c - k sigma_c), max_c(mu_c + k sigma_c)] intersected with its
clip interval, with k the MSE-optimal clipping threshold for the activation bit-width: of a Laplace
distribution for activations (heavy tails, as ACIQ measured; 6.99 sigma at 8 bits) and of a Gaussian for
the standardized graph inputs (3.92 sigma at 8 bits).
Tensors the rules cannot reach, or whose estimate went through more than one linear layer without
BN statistics since its last anchor (independence assumptions compound there), are left to
`Calibrate`, which measures them on Gaussian noise; the report counts both.
"""

from __future__ import annotations

import numpy as np

from dfq_onnx.core.moment_propagation import MAX_UNANCHORED, estimate
from dfq_onnx.core.moments import gaussian_clip_k, laplace_clip_k
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState, Range


class AnalyticRanges(Pass):
    """Analysis: activation ranges from BN statistics propagated through the graph (no data)."""

    name = "AnalyticRanges"

    def run(self, state: CompileState) -> PassResult:
        bits = state.options.act_bits or state.target.default_act_bits
        k, k_input = laplace_clip_k(bits), gaussian_clip_k(bits)
        inputs = {t.name for t in state.graph.inputs}
        est, depth = estimate(state)
        done = 0
        for t in state.spec.act_tensors:
            e = est.get(t)
            if depth.get(t, 0) > MAX_UNANCHORED:
                continue   # moments pushed through several BN-free layers drift: measure instead
            if e is not None and np.all(np.isfinite(e.mu)) and np.all(np.isfinite(e.sigma)):
                lo, hi = e.range(k_input if t in inputs else k)
                state.ranges[t] = Range(lo, hi, "analytic")
                done += 1
        total = len(state.spec.act_tensors)
        state.report.notes["analytic_ranges"] = {"tensors": done, "of": total, "k_sigma": k,
                                                 "k_sigma_inputs": k_input,
                                                 "bn_layers": len(state.bn_stats)}
        return PassResult(False, f"{done}/{total} ranges from BN statistics (k={k:.2f} sigma)")
