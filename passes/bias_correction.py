"""Analytic bias correction (Nagel et al. 2019, sec. 4.2): cancel the mean shift that weight quantization
causes in each layer's output.

    E[W_hat x + b'] = E[W x + b]   <=>   b' = b - (W_hat - W) E[x]

per output channel, where (W_hat - W) E[x] sums over input channels and kernel taps; each tap is
weighted by the fraction of output positions at which it reads data rather than zero padding (the
correction exact on average over the feature map; on an 8x8 map a 3x3 conv's corner tap misses 23 %).

W_hat is exactly the weight EmitQDQ writes for the plan's bit-width (`backends.qdq.quantize_weight` with
the same input scale, hence the same int32-bias scale floor), so the pass needs the plan: it runs
after UniformPlan / AllocateBits, before EmitQDQ. E[x] per input channel comes from the kept BN
statistics through the analytic estimate of `core.moment_propagation.estimate`: N(beta, gamma^2) at a
folded BN's output, the clipped-normal mean E[max(0, X)] = mu Phi(mu/sigma) + sigma phi(mu/sigma)
after ReLU (clip quadrature for ReLU6), sums through Add; graph inputs are taken as standardized
(E[x] = 0, no correction).

Where the analytic estimate has nothing to say -- a layer whose input estimate is missing (after SiLU,
hard-swish, a squeeze-excite product, a pool), not per channel, or more than one BN-free linear layer
from BN statistics, and every layer of a model with no BN statistics at all (every PyTorch and tf2onnx
export folds BN into the convolutions) -- E[x] and Var[x] per input channel are measured on the
calibration samples instead (synthetic or the user's; one ORT pass over the samples Calibrate measured,
`backends.input_moments.moment_model(means=True)`, kept in `state.input_means` for the probe and
DF-MPC: where Calibrate's work budget took fewer samples than the set holds, the same first ones --
ISNet at 1024 x 1024: 17 of 64 rows, CorrectBias 287 -> 65 s at load 6; BENCHMARKS.md, session 25). Layers
with neither are skipped with the reason. EfficientNet-Lite0 with its BN folded in the file: 49 of 50
layers were skipped, top-1 76.0 / agreement 93.8 % against the BN file's 77.0 / 95.8; measured, 77.0 /
94.8. PP-OCRv4 det (hard-swish, squeeze-excite): 1 of its 64 layers had an analytic estimate, 61 are
corrected now; YOLOv8n (BN folded, SiLU): kept detections 78.5 -> 87.9 % (BENCHMARKS.md, session 20).

When DF-MPC rescaled a layer's effective weight to c W_hat (`state.weight_gain`, passes/dfmpc.py), the
reference weight in the stored coordinates is W / c. The sensitivity probe applies the same correction
for every candidate bit-width (`SensitivityOptions.bias_correction`), so the allocator scores
corrected errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from dfq_onnx.passes.absorb_bias import add_to_bias
from dfq_onnx.passes.emit_qdq import plan_encodings
from dfq_onnx.passes.input_moments import MEAN, moment_sums

from dfq_onnx.backends import input_moments as im
from dfq_onnx.backends.input_moments import importance
from dfq_onnx.core.graph_utils import LAYOUT_OPS, const_values, is_const, is_float, node_label
from dfq_onnx.core.moment_propagation import MAX_UNANCHORED, estimate
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.corrections import formulas as cm
from dfq_onnx.corrections.layer_pairs import linear_kind, tap_fractions
from dfq_onnx.sensitivity.probe import emitted_weight


def _not_linear(node) -> str:
    """Why `node` has no per-channel rescalable weight (layer_pairs.linear_kind is None)."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or not is_const(w) or not is_float(w):
        return f"{node.op} weight is not a float constant"
    if len(w.outputs) != 1:
        return f"{node.op} weight is shared with other nodes"
    if node.op in ("Conv", "Gemm"):
        return f"{node.op} bias is shared or not a constant, or its attributes are not plain"
    return f"{node.op} layers are not corrected (Conv / Gemm only; a MatMul's bias is a separate Add)"


def input_moments(state: CompileState) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[dict]]:
    """layer -> (E[x], Var[x]) per input channel of each rescalable Conv/Gemm, and the skipped layers."""
    est, depth = estimate(state)
    inputs = {t.name for t in state.graph.inputs}
    samples = state.calib is not None
    out, skipped, reads = {}, [], {}
    for node in state.graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        kind, x, label = linear_kind(node), node.inputs[0], node_label(node)
        layer = state.spec.layers.get(label) if state.spec is not None else None
        if layer is not None and layer.form:
            reason = "encoded by a target form (dynamic int8 / weight-only), not static Q/DQ"
        elif state.spec is not None and layer is None:
            reason = "not quantized"
        elif kind is None:
            reason = _not_linear(node)
        elif state.bn_stats and _reads_input(x, inputs):
            reason = "reads a graph input (standardized: E[x] = 0)"
        else:
            moments, reason = _analytic(est, depth, x, kind, node) if state.bn_stats else (None, None)
            if moments is not None:
                out[label] = moments
                continue
            t = im.measured_input(node, layer) if samples and layer is not None else None
            if t is not None:           # module docstring: measured where there is no analytic estimate
                cin = kind.in_channels(const_values(node.inputs[1]))
                reads[label] = (t, node.op in im.CHANNEL_FIRST, cin)
                continue
            why = "E[x] not measurable per channel" if samples else "no calibration samples to measure on"
            reason = f"{reason}; {why}" if reason else why
        skipped.append({"layer": label, "reason": reason})
    for label, (m, v) in measured_moments(state, {k: r[:2] for k, r in reads.items()}).items():
        cin = reads[label][2]
        if m.size in (1, cin) and np.all(np.isfinite(m)) and np.all(np.isfinite(v)):
            out[label] = (np.broadcast_to(m, (cin,)).copy(), np.broadcast_to(v, (cin,)).copy())
        else:
            skipped.append({"layer": label, "reason": f"measured moments of '{reads[label][0]}' do not fit "
                                                      f"its {cin} input channels"})
    return out, skipped


def _reads_input(x, inputs: set[str]) -> bool:
    """Whether `x` is a graph input, or one only layout ops moved (a TF export's NHWC -> NCHW Transpose)."""
    while x.name not in inputs and len(x.inputs) == 1 and x.inputs[0].op in LAYOUT_OPS:
        x = x.inputs[0].inputs[0]
    return x.name in inputs


def _analytic(est, depth, x, kind, node) -> tuple[tuple | None, str | None]:
    """(E[x], Var[x]) per input channel from the BN statistics, or None and why not."""
    e = est.get(x.name)
    if e is None:
        return None, f"no analytic estimate of '{x.name}'"
    if depth.get(x.name, 0) > MAX_UNANCHORED:
        return None, f"'{x.name}' is more than {MAX_UNANCHORED} BN-free linear layer from BN statistics"
    m, v = e.moments()
    cin = kind.in_channels(const_values(node.inputs[1]))
    if not e.aligned or m.size not in (1, cin):
        return None, f"estimate of '{x.name}' is not per channel"
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))):
        return None, f"estimate of '{x.name}' is not finite"
    return (np.broadcast_to(m, (cin,)).copy(), np.broadcast_to(v, (cin,)).copy()), None


def measured_moments(state: CompileState, reads: dict[str, tuple[str, bool]]) -> dict[str, tuple]:
    """layer -> (E[x], Var[x]) per channel of its input (name, channel-first?) on the calibration
    samples, one ORT pass for those not measured yet (kept in `state.input_means`)."""
    todo = {t: first for layer, (t, first) in reads.items() if layer not in state.input_means}
    if todo:
        sums = moment_sums(state, todo, means=True)
        for layer, (t, _) in reads.items():
            if layer not in state.input_means:
                (s1, n), (s2, _) = sums[t + MEAN], sums[t]
                mean = s1 / max(n, 1)
                state.input_means[layer] = (mean, np.maximum(s2 / max(n, 1) - mean ** 2, 0.0))
    return {layer: state.input_means[layer] for layer in reads}


def input_scales(state: CompileState) -> dict[str, float]:
    """Input scale of each quantized tensor as EmitQDQ will encode it (for its int32-bias floor)."""
    return {t: float(enc.scale) for t, enc in plan_encodings(state).items()}


def layer_bits(state: CompileState) -> dict[str, int]:
    return {layer: state.plan.bits[g.id][0] for g in state.groups for layer in g.layers}


def corrected_bias(target, w: np.ndarray, b: np.ndarray, w_ref: np.ndarray, mu: np.ndarray, kind,
                   x_scale: float | None, bits: int, axis: int | None, taps=None,
                   importance: np.ndarray | None = None) -> np.ndarray:
    """b - (W_hat - W_ref) mu, W_hat = Emit's weight for `bits`; recomputed once if the corrected bias
    moves Emit's int32 scale floor (and with it W_hat). `taps`: in-bounds fraction of each kernel tap."""
    w_hat, _ = emitted_weight(w, b, x_scale, bits, axis, target, importance)
    b_new = b - cm.mean_shift(w_hat, w_ref, mu, kind, taps)
    w_hat2, _ = emitted_weight(w, b_new.astype(np.float32), x_scale, bits, axis, target, importance)
    if not np.array_equal(w_hat, w_hat2):
        b_new = b - cm.mean_shift(w_hat2, w_ref, mu, kind, taps)
    return b_new


class CorrectBias(Pass):
    """Remove the output mean shift of each layer's weight quantization at the plan's bit-widths."""

    name = "CorrectBias"

    def run(self, state: CompileState) -> PassResult:
        if "bias_correction" in state.report.notes:
            return PassResult(False, "already corrected")
        moments, skipped = input_moments(state)
        scales, bits = input_scales(state), layer_bits(state)
        nodes = {node_label(n): n for n in state.graph.nodes}
        done = []
        for label, (mu, _) in moments.items():
            node, spec = nodes[label], state.spec.layers.get(label)
            if spec is None or label not in bits:
                skipped.append({"layer": label, "reason": "not quantized"})
                continue
            kind = linear_kind(node)
            w = const_values(node.inputs[1]).astype(np.float32)
            gain = state.weight_gain.get(label)
            w_ref = w if gain is None else cm.scale_out(w.astype(np.float64), 1.0 / gain, kind)
            b = const_values(node.inputs[2]).astype(np.float32) if spec.bias else np.zeros(
                w.shape[kind.out_axis()], np.float32)
            b_new = corrected_bias(state.target, w, b, w_ref, mu, kind, scales.get(node.inputs[0].name),
                                   bits[label], spec.axis, tap_fractions(node),
                                   importance(node, spec, state.input_moments))
            delta = b_new - b
            if not np.any(delta):
                continue
            add_to_bias(state.graph, node, delta)
            if spec.bias is None:
                state.spec.layers[label] = dataclasses.replace(spec, bias=node.inputs[2].name)
            done.append({"layer": label, "weight_bits": bits[label],
                         "max_abs_shift": float(np.max(np.abs(delta)))})
        state.report.notes["bias_correction"] = {"layers": done, "skipped": skipped}
        return PassResult(bool(done), f"{len(done)} layers corrected, {len(skipped)} skipped")
