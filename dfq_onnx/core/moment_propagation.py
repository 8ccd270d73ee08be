"""Moment propagation: every float activation described as a per-channel clipped Gaussian
(`dfq_onnx.core.moments.Est`), propagated through the graph in topological order from the kept
BatchNormalization statistics (the rules are listed in passes/analytic_ranges.py, which turns the
estimates into ranges; ScorePrior and CorrectBias read the same estimates).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import const_values, is_const, is_float, node_label
from dfq_onnx.core.moments import Est
from dfq_onnx.core.state import CompileState

KEEP = {"Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize",
        "Upsample", "Cast", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Split"}
LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RESHAPING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Gather"}


def _channels(t: gs.Tensor) -> int | None:
    shape = t.shape
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int) or shape[1] <= 0:
        return None
    return shape[1]


def _const_per_channel(t: gs.Tensor, channels: int | None) -> np.ndarray | None:
    """A constant operand as a per-channel vector (scalar or [C,1,..] / [1,C,1,..] broadcast)."""
    v = const_values(t).astype(np.float64)
    if v.size == 1:
        return v.reshape(1)
    squeezed = v.squeeze()
    if squeezed.ndim == 1 and channels is not None and squeezed.size == channels:
        axis_from_end = v.ndim - 1 - list(v.shape).index(squeezed.size)
        if axis_from_end >= 1 or v.ndim <= 2:  # [C,1,1] or [1,C,1,1] or [1,C] on a channel axis
            return squeezed
    return None


def _combine(a: Est, b: Est, sign: float) -> Est:
    (ma, va), (mb, vb) = a.moments(), b.moments()
    if a.aligned and b.aligned and (ma.size == mb.size or 1 in (ma.size, mb.size)):
        return Est.of(ma + sign * mb, np.sqrt(va + vb))
    pa, pb = a.pooled(), b.pooled()
    return Est.of(pa[0] + sign * pb[0], np.sqrt(pa[1] + pb[1]), aligned=False)


def _mul(a: Est, b: Est) -> Est:
    (ma, va), (mb, vb) = a.moments(), b.moments()
    if not (a.aligned and b.aligned and (ma.size == mb.size or 1 in (ma.size, mb.size))):
        (ma, va), (mb, vb) = [(np.array([p[0]]), np.array([p[1]])) for p in (a.pooled(), b.pooled())]
    var = (va + ma ** 2) * (vb + mb ** 2) - (ma * mb) ** 2
    return Est.of(ma * mb, np.sqrt(np.maximum(var, 0.0)), aligned=a.aligned and b.aligned)


def _scale(e: Est, c: np.ndarray, shift: np.ndarray | float = 0.0) -> Est:
    m, v = e.moments() if np.isfinite([e.lo, e.hi]).any() else (e.mu, e.sigma ** 2)
    if c.size > 1 and not e.aligned:
        m, v = np.array([e.pooled()[0]]), np.array([e.pooled()[1]])
    return Est.of(m * c + shift, np.sqrt(v) * np.abs(c), aligned=e.aligned or c.size == 1)


def _linear(node: gs.Node, x: Est, channels_in: int | None) -> Est | None:
    w = const_values(node.inputs[1]).astype(np.float64)
    b = const_values(node.inputs[2]).astype(np.float64) if len(node.inputs) > 2 and is_const(
        node.inputs[2]) else 0.0
    m, v = x.moments()
    if node.op in ("Conv", "ConvTranspose"):
        group = int(node.attrs.get("group", 1))
        cin = w.shape[0] if node.op == "ConvTranspose" else w.shape[1] * group
        if not x.aligned or m.size != cin:
            pm, pv = x.pooled() if (not x.aligned or m.size != 1) else (m[0], v[0])
            m, v = np.full(cin, pm), np.full(cin, pv)
        if node.op == "Conv":
            o, ig = w.shape[0], w.shape[1]
            ws = w.reshape(group, o // group, ig, -1)
            mg, vg = m.reshape(group, ig), v.reshape(group, ig)
            masks = _tap_masks(node, w.shape[2:])
            if masks is None:
                mu = np.einsum("goik,gi->go", ws, mg).reshape(o)
                var = np.einsum("goik,gi->go", ws ** 2, vg).reshape(o)
            else:   # the map is smaller than the kernel: per channel, the position of largest variance
                mus = np.stack([np.einsum("goik,gi,k->go", ws, mg, mk).reshape(o) for mk in masks])
                vs = np.stack([np.einsum("goik,gi,k->go", ws ** 2, vg, mk).reshape(o) for mk in masks])
                best = np.argmax(vs, axis=0)
                mu, var = mus[best, np.arange(o)], vs[best, np.arange(o)]
        else:  # ConvTranspose: W [Cin, Cout/g, k...], summed over input channels and kernel taps
            if group != 1:
                return None
            wk = w.reshape(w.shape[0], w.shape[1], -1)
            mu = np.einsum("iok,i->o", wk, m)
            var = np.einsum("iok,i->o", wk ** 2, v)
        return Est.of(mu + b, np.sqrt(var))
    if w.ndim != 2:
        return None
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        w = w.T
    k = w.shape[0]
    if not x.aligned or m.size != k:
        pm, pv = x.pooled()
        m, v = np.full(k, pm), np.full(k, pv)
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    aligned = channels_in is not None and len(node.inputs[0].shape or []) == 2
    return Est.of(alpha * (m @ w) + beta * np.asarray(b), np.abs(alpha) * np.sqrt(v @ (w ** 2)),
                  aligned=aligned)


def _tap_masks(node: gs.Node, kshape: tuple[int, ...]) -> list[np.ndarray] | None:
    """Kernel taps that read input (not padding) at each distinct output position, as 0/1 masks over
    the flattened taps, when some spatial axis is smaller than the kernel's extent (e.g. a 3x3 conv on a
    1x1 map reads only its centre tap); None when every tap reads data somewhere (the usual case) or
    the geometry is unknown. Variances only grow with taps, so per axis a position where every tap is
    valid dominates and the others need not be considered."""
    shape = node.inputs[0].shape
    n = len(kshape)
    if not shape or len(shape) != n + 2 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    sizes = list(shape[2:])
    if not all(isinstance(s, int) and s > 0 for s in sizes):
        return None
    pads = list(node.attrs.get("pads", [0] * 2 * n))
    strides = list(node.attrs.get("strides", [1] * n))
    dil = list(node.attrs.get("dilations", [1] * n))
    per_axis = []
    for a in range(n):
        k, s, d, pb, pe = kshape[a], strides[a], dil[a], pads[a], pads[a + n]
        out = (sizes[a] + pb + pe - d * (k - 1) - 1) // s + 1
        if out <= 0:
            return None
        pos = np.arange(out)[:, None] * s - pb + np.arange(k)[None, :] * d
        rows = np.unique((pos >= 0) & (pos < sizes[a]), axis=0)
        full = rows.all(axis=1)
        per_axis.append(rows[full][:1] if full.any() else rows)
    if all(r.all() for r in per_axis):
        return None
    masks = []
    for combo in itertools.product(*per_axis):
        mask = combo[0]
        for r in combo[1:]:
            mask = np.multiply.outer(mask, r)
        masks.append(np.asarray(mask, np.float64).reshape(-1))
    return masks


def _pad(node: gs.Node, x: Est) -> Est:
    pads = const_values(node.inputs[1]).astype(int) if len(node.inputs) > 1 and is_const(
        node.inputs[1]) else None
    mode = node.attrs.get("mode", "constant")
    value = float(const_values(node.inputs[2]).reshape(-1)[0]) if len(node.inputs) > 2 and is_const(
        node.inputs[2]) else 0.0
    rank = len(node.inputs[0].shape or [])
    if pads is None or mode != "constant" or rank < 2:
        return x
    fill = Est.of(value, 0.0)
    before, after = pads[1], pads[rank + 1]
    if not x.aligned or (before == 0 and after == 0):
        return _union(x, fill) if pads.any() else x
    mu = np.concatenate([np.full(before, value), x.mu, np.full(after, value)])
    sigma = np.concatenate([np.zeros(before), x.sigma, np.zeros(after)])
    return Est(mu, sigma, min(x.lo, value), max(x.hi, value), True)


def _union(*ests: Est) -> Est:
    return Est(np.concatenate([e.mu for e in ests]), np.concatenate([e.sigma for e in ests]),
               min(e.lo for e in ests), max(e.hi for e in ests), False)


def _slice(node: gs.Node, x: Est) -> Est:
    if not x.aligned or x.mu.size == 1:
        return x
    try:
        starts, ends = (const_values(t).astype(np.int64) for t in node.inputs[1:3])
        axes = const_values(node.inputs[3]).astype(np.int64) if len(node.inputs) > 3 and node.inputs[
            3].name else np.arange(len(starts))
        steps = const_values(node.inputs[4]).astype(np.int64) if len(node.inputs) > 4 and node.inputs[
            4].name else np.ones(len(starts), np.int64)
    except (AttributeError, ValueError):
        return x.as_mixture()
    rank = len(node.inputs[0].shape or [])
    for s, e, a, st in zip(starts, ends, axes, steps):
        if (a % rank if rank else a) == 1:
            idx = slice(int(s), int(min(e, np.iinfo(np.int64).max // 2)), int(st))
            return Est(x.mu[idx], x.sigma[idx], x.lo, x.hi, True)
    return x


def _concat(node: gs.Node, ins: list[Est]) -> Est:
    rank = len(node.inputs[0].shape or [])
    axis = int(node.attrs.get("axis", 0))
    if rank and axis % rank == 1 and all(e.aligned for e in ins):
        parts = []
        for t, e in zip(node.inputs, ins):
            c = _channels(t)
            parts.append(e if e.mu.size == c or c is None else Est.of(np.full(c, e.mu[0]),
                                                                         np.full(c, e.sigma[0])))
        return Est(np.concatenate([p.mu for p in parts]), np.concatenate([p.sigma for p in parts]),
                   min(p.lo for p in parts), max(p.hi for p in parts), True)
    return _union(*ins)


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    lo, hi = -np.inf, np.inf
    for i, t in enumerate(node.inputs[1:3], start=1):
        if t.name and not is_const(t):
            return None
        if t.name:
            val = float(const_values(t).reshape(-1)[0])
            lo, hi = (val, hi) if i == 1 else (lo, val)
    return lo, hi


def propagate(node: gs.Node, ins: list[Est | None]) -> Est | None:
    """The estimate of a node's first output from its inputs' estimates (None when unknown)."""
    op, x = node.op, ins[0] if ins else None
    if op == "Concat":
        return _concat(node, ins) if all(e is not None for e in ins) else None
    if x is None:
        return None
    if op in KEEP:
        return x
    if op in RESHAPING:
        out_c, in_c = _channels(node.outputs[0]), _channels(node.inputs[0])
        same = x.aligned and out_c is not None and out_c == in_c and op != "Transpose"
        return x if same else x.as_mixture()
    if op == "Relu":
        return x.clip(0.0, np.inf)
    if op == "Clip":
        bounds = _clip_bounds(node)
        return x.clip(*bounds) if bounds else None
    if op in ("Sigmoid", "HardSigmoid", "Softmax", "Tanh", "HardSwish"):
        return _bounded(node, x)
    if op in LINEAR and len(node.inputs) > 1 and is_const(node.inputs[1]):
        return _linear(node, x, _channels(node.inputs[0]))
    if op == "Pad":
        return _pad(node, x)
    if op == "Slice":
        return _slice(node, x)
    return _binary(node, ins)


def _bounded(node: gs.Node, x: Est) -> Est:
    m, v = x.moments()
    if node.op == "Sigmoid":
        return Est.of(1.0 / (1.0 + np.exp(-m)), 0.25 * np.sqrt(v), 0.0, 1.0, x.aligned)
    if node.op == "HardSigmoid":
        a, b = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        return Est.of(a * m + b, a * np.sqrt(v), 0.0, 1.0, x.aligned)
    if node.op == "HardSwish":
        return Est.of(m, np.sqrt(v), -0.375, max(np.max(m + 4 * np.sqrt(v)), 0.0), x.aligned)
    if node.op == "Tanh":
        return Est.of(np.tanh(m), np.sqrt(v), -1.0, 1.0, x.aligned)
    return Est.of(0.5, 0.5, 0.0, 1.0, False)  # Softmax


SILU_MIN = -0.2784645  # min over x of x * sigmoid(x)


def _is_gate_of(gate: gs.Tensor, x: gs.Tensor) -> bool:
    """True when `gate` = Sigmoid(x) / HardSigmoid(x) (so Mul(x, gate) is SiLU / HardSwish)."""
    prod = gate.inputs[0] if len(gate.inputs) == 1 else None
    return prod is not None and prod.op in ("Sigmoid", "HardSigmoid") and prod.inputs[0] is x


def _silu(x: Est) -> Est:
    """x * sigmoid(x): its upper tail is x itself and its minimum is -0.2785, so for ranges (and,
    approximately, moments) it is max(x, -0.2785)."""
    return x.clip(SILU_MIN, np.inf)


def _binary(node: gs.Node, ins: list[Est | None]) -> Est | None:
    op = node.op
    if op not in ("Add", "Sum", "Sub", "Mul", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if op == "Mul" and (_is_gate_of(b, a) or _is_gate_of(a, b)):
        x = ins[0] if _is_gate_of(b, a) else ins[1]
        if x is not None and node.inputs[1 if _is_gate_of(b, a) else 0].inputs[0].op == "Sigmoid":
            return _silu(x)
    if is_const(a) and op in ("Add", "Mul", "Sum"):
        a, b, ins = b, a, [ins[1], ins[0]]
    if ins[0] is None:
        return None
    if is_const(b):
        c = _const_per_channel(b, _channels(node.outputs[0]))
        if c is None:
            return None
        if op in ("Add", "Sum"):
            return _scale(ins[0], np.ones(1), c)
        if op == "Sub":
            return _scale(ins[0], np.ones(1), -c)
        if op == "Mul":
            return _scale(ins[0], c)
        return None if np.any(c == 0) else _scale(ins[0], 1.0 / c)
    if ins[1] is None:
        return None
    if op in ("Add", "Sum", "Sub"):
        return _combine(ins[0], ins[1], -1.0 if op == "Sub" else 1.0)
    return _mul(ins[0], ins[1]) if op == "Mul" else None


MAX_UNANCHORED = 1  # linear layers without BN an estimate may pass through and still be trusted


def estimate(state: CompileState) -> tuple[dict[str, Est], dict[str, int]]:
    """Estimates for every float tensor the rules reach, and how many linear layers without BN
    statistics each estimate went through since its last anchor (a BN output or a graph input)."""
    graph = state.graph
    bn_by_layer = state.bn_stats
    est: dict[str, Est] = {t.name: Est.of(0.0, 1.0) for t in graph.inputs if is_float(t)}
    depth: dict[str, int] = {t: 0 for t in est}
    for node in graph.nodes:
        stats = bn_by_layer.get(node_label(node))
        ins_depth = max([depth.get(t.name, 0) for t in node.inputs if t.name and not is_const(t)], default=0)
        if stats is not None and node.outputs and node.outputs[0].name == stats.tensor:
            out, d = Est.of(stats.beta, np.abs(stats.gamma)), 0
        else:
            ins = [None if is_const(t) or not t.name else est.get(t.name) for t in node.inputs]
            out, d = propagate(node, ins), ins_depth + (1 if node.op in LINEAR else 0)
        if out is not None and node.outputs and is_float(node.outputs[0]):
            est[node.outputs[0].name] = out
            depth[node.outputs[0].name] = d
    return est, depth
