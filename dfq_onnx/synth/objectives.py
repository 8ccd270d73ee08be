"""Per-sample objectives for synthetic calibration data, evaluated on statistics computed inside ORT.

The statistics are added to a copy of the graph (onnx-graphsurgeon only), so one ORT run of a batch
returns a few numbers per sample and channel instead of the full activations:

    m_c = GAP(t)[c]                 spatial mean of channel c      (GlobalAveragePool)
    q_c = GAP(t * t)[c]             spatial mean square; s_c = sqrt(max(q_c - m_c^2, 0)) in float64
    p   = max_j |t_j|               per-sample peak of a whole tensor (Reshape [N,1,-1], Abs, GMP)

Objective A (BN statistics, ZeroQ) for a sample, over the L folded-BN output tensors l, whose BN
was trained to produce N(beta_lc, gamma_lc^2) per channel:

    L_bn  = 1/L sum_l 1/C_l sum_c [(m_lc - beta_lc)^2 + (s_lc - |gamma_lc|)^2] / (gamma_lc^2 + eps_l)
    P_in  = 1/C sum_c [mu_c^2 + (sd_c - 1)^2]     (inputs are preprocessed: ~N(0, 1) per channel)
    L_A   = L_bn + w_in * P_in                    w_in = 0.05: a weak prior (real images have
                                                  per-sample means and stds away from 0 and 1)

Rank-2 BN tensors ([N, C], e.g. after a Gemm) have no spatial extent: the channels of one sample
are treated as the population, z_c = (x_c - beta_c) / |gamma_c| should have mean 0 and std 1.

Objective B (labelled, BN-free, after Lee et al. 2021) for a sample with target channel k, on the
first float output y reduced over the sample's target window (the whole output for [N, K] logits):

    margin = ybar_k - max_{j != k} ybar_j,   L_lab = max(0, cap - margin / sigma_ref)
    L_B    = L_lab + w_tv * TV(x) / 2 + w_act * 1/|T| sum_t relu(log(p_t / p_t,ref))^2
    cap = 3, w_tv = 0.1, w_act = 10;  "bn+label" minimizes L_A + 0.1 * L_B

sigma_ref (the std of the output over channels) and p_t,ref (the mean peak of every conv/gemm
output) are measured on the starting images (1/f random fields, `dfq_onnx.synth.search`): without BN
statistics, natural-image statistics are the only reference for plausible activations, and the
margin search alone drives early-layer peaks to ~2x those of real images (measured on ResNet-20).
TV(x) = mean squared difference of neighbouring pixels, 2 for white N(0, 1) noise.
For outputs of rank >= 3 the target is a channel k (round robin) in a random window covering a
quarter of each spatial dimension: the sample is pushed to make channel k dominate that region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.synth.sequence import SequenceSpec, sequence_loss

W_INPUT, W_TV, W_ACT, MARGIN_CAP, TV_NOISE = 0.05, 0.1, 10.0, 3.0, 2.0
W_LABEL_WITH_BN = 0.1     # weight of L_B when added to L_A ("bn+label")


@dataclass(frozen=True)
class StatTarget:
    """Target per-channel mean/std of one BN-output tensor."""

    tensor: str
    beta: np.ndarray
    gamma: np.ndarray
    eps: float
    spatial: bool = True      # rank >= 3: stats over space; rank 2: the tensor itself


def _var(graph: gs.Graph, name: str) -> gs.Variable:
    return gs.Variable(name, dtype=np.float32)


def _channel_stats(graph: gs.Graph, t: gs.Tensor, tag: str) -> list[gs.Variable]:
    """Add mean and mean square per (sample, channel) of `t` (rank >= 3) as [N, C] tensors."""
    m, sq, q = (_var(graph, f"{tag}.{k}") for k in ("m4", "sq", "q4"))
    mean, msq = _var(graph, f"{tag}.mean"), _var(graph, f"{tag}.msq")
    graph.nodes += [gs.Node("GlobalAveragePool", inputs=[t], outputs=[m]),
                    gs.Node("Mul", inputs=[t, t], outputs=[sq]),
                    gs.Node("GlobalAveragePool", inputs=[sq], outputs=[q]),
                    gs.Node("Flatten", inputs=[m], outputs=[mean], attrs={"axis": 1}),
                    gs.Node("Flatten", inputs=[q], outputs=[msq], attrs={"axis": 1})]
    return [mean, msq]


def _peak(graph: gs.Graph, t: gs.Tensor, tag: str) -> gs.Variable:
    """Add the per-sample peak |t| (over every element of a sample) as an [N, 1] tensor."""
    flat, mag, peak, out = (_var(graph, f"{tag}.{k}") for k in ("flat", "abs", "peak3", "peak"))
    shape = gs.Constant(f"{tag}.shape", np.array([0, 1, -1], np.int64))
    graph.nodes += [gs.Node("Reshape", inputs=[t, shape], outputs=[flat]),
                    gs.Node("Abs", inputs=[flat], outputs=[mag]),
                    gs.Node("GlobalMaxPool", inputs=[mag], outputs=[peak]),
                    gs.Node("Flatten", inputs=[peak], outputs=[out], attrs={"axis": 1})]
    return out


def stats_model(graph: gs.Graph, bn: list[StatTarget], act: list[str], output: str | None):
    """A copy of `graph` whose outputs are: per BN tensor its channel (mean, mean square) or the tensor
    itself (rank 2), per activation tensor its peak, then `output` (if any). Returns (model, names)."""
    g = ir.copy_graph(graph)
    table = g.tensors()
    outs: list[gs.Variable] = []
    for i, target in enumerate(bn):
        t = table[target.tensor]
        if not target.spatial:
            outs.append(t)
        else:
            outs += _channel_stats(g, t, f"__synth_bn{i}")
    outs += [_peak(g, table[name], f"__synth_act{i}") for i, name in enumerate(act)]
    if output is not None:
        outs.append(table[output])
    for t in outs:
        t.dtype = np.float32
    g.outputs = outs
    return ir.session_model(g), [t.name for t in outs]


def bn_loss(stats: list[np.ndarray], targets: list[StatTarget]) -> np.ndarray:
    """L_bn per sample from the stats model's BN outputs (see module docstring)."""
    total, pos = 0.0, 0
    for target in targets:
        gamma, beta = np.abs(target.gamma), target.beta
        denom = target.gamma ** 2 + target.eps
        if target.spatial:
            mean = stats[pos].astype(np.float64)
            std = np.sqrt(np.maximum(stats[pos + 1] - mean ** 2, 0.0))
            pos += 2
            term = ((mean - beta) ** 2 + (std - gamma) ** 2) / denom
            total = total + term.mean(axis=1)
        else:
            z = (stats[pos].astype(np.float64) - beta) / np.maximum(gamma, 1e-12)
            pos += 1
            total = total + z.mean(axis=1) ** 2 + (z.std(axis=1) - 1.0) ** 2
    return total / max(len(targets), 1)


def input_prior(x: np.ndarray) -> np.ndarray:
    """P_in per sample: per-channel (axis 1) mean 0 and std 1 (all of a rank-2 sample is one channel)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1) if x.ndim >= 3 else x.reshape(x.shape[0], 1, -1)
    flat = flat.astype(np.float64)
    return (flat.mean(axis=2) ** 2 + (flat.std(axis=2) - 1.0) ** 2).mean(axis=1)


def total_variation(x: np.ndarray) -> np.ndarray:
    """Mean squared difference of neighbouring elements along every axis after the channel axis."""
    x = x.astype(np.float64)
    terms = [np.mean(np.diff(x, axis=a) ** 2, axis=tuple(range(1, x.ndim)))
             for a in range(2, x.ndim) if x.shape[a] > 1]
    if x.ndim == 2 and x.shape[1] > 1:
        terms = [np.mean(np.diff(x, axis=1) ** 2, axis=1)]
    return np.sum(terms, axis=0) / max(len(terms), 1) if terms else np.zeros(len(x))


def float_output(graph: gs.Graph) -> gs.Tensor | None:
    return next((t for t in graph.outputs if is_float(t)), None)


@dataclass(frozen=True)
class LabelSpec:
    """Targets of objective B: a channel per sample, its window (rank >= 3 outputs), references."""

    labels: np.ndarray                 # [N] target channel
    masks: np.ndarray | None           # [N, *spatial], each summing to 1 (None: no spatial axes)
    sigma_ref: float                   # output scale on the starting images
    mu_ref: float                      # mean output on the starting images (single-channel outputs)
    act_ref: np.ndarray                # [T] mean activation peak on the starting images


def reduce_output(y: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """[B, K] per-channel output of each row, averaged over its target window."""
    y = y.astype(np.float64)
    if y.ndim == 1:
        return y[:, None]
    if y.ndim == 2 or masks is None:
        return y.reshape(y.shape[0], y.shape[1], -1).mean(axis=2)
    return np.einsum("bks,bs->bk", y.reshape(y.shape[0], y.shape[1], -1), masks.reshape(len(masks), -1))


def margins(ybar: np.ndarray, labels: np.ndarray, mu_ref: float) -> np.ndarray:
    """Target minus best other channel; for one channel, +-(y - mu_ref) by label parity."""
    rows = np.arange(len(ybar))
    if ybar.shape[1] == 1:
        return np.where(labels % 2 == 0, 1.0, -1.0) * (ybar[:, 0] - mu_ref)
    other = ybar.copy()
    other[rows, labels] = -np.inf
    return ybar[rows, labels] - other.max(axis=1)


def output_scale(ybar: np.ndarray) -> tuple[float, float]:
    """(sigma_ref, mu_ref) of reduced outputs: the spread over channels (or over samples if K = 1)."""
    spread = ybar.std(axis=1).mean() if ybar.shape[1] > 1 else ybar[:, 0].std()
    return max(float(spread), 1e-6), float(ybar.mean())


def target_masks(rng: np.random.Generator, n: int, spatial: tuple[int, ...]) -> np.ndarray:
    """A random window covering a quarter of each spatial axis per sample, normalized to sum 1."""
    masks = np.zeros((n,) + spatial)
    for i in range(n):
        window = []
        for size in spatial:
            length = max(1, size // 4)
            start = int(rng.integers(0, size - length + 1))
            window.append(slice(start, start + length))
        masks[(i, *window)] = 1.0
    return masks / masks.reshape(n, -1).sum(axis=1).reshape((n,) + (1,) * len(spatial))


@dataclass(frozen=True)
class Objective:
    """Turns the stats model's outputs for a batch of rows into one loss per row."""

    kind: str                          # "bn" | "label" | "bn+label"
    bn: tuple[StatTarget, ...] = ()
    act: tuple[str, ...] = ()          # activation tensors of the plausibility penalty
    output: str | None = None          # output tensor of the label / sequence objective
    label: LabelSpec | None = None
    sequence: SequenceSpec | None = None   # objective S (`dfq_onnx.synth.sequence`)
    act_ref: np.ndarray | None = None      # [T] activation peaks on the starting images (objective S)

    def _stat_count(self) -> int:
        """How many model outputs the BN statistics take (two per spatial target, one per flat)."""
        return sum(2 if t.spatial else 1 for t in self.bn)

    def act_outputs(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        """Each activation's peak output [B, 1], in `act` order, from the model outputs."""
        n_bn = self._stat_count()
        return outs[n_bn:n_bn + len(self.act)]

    def split(self, outs: list[np.ndarray]):
        """(BN stats, activation peaks [B, T] or None, output or None) from the model outputs."""
        n_bn = self._stat_count()
        peaks = np.concatenate(self.act_outputs(outs), axis=1) if self.act else None
        y = outs[n_bn + len(self.act)] if self.output is not None else None
        return outs[:n_bn], peaks, y

    def losses(self, outs: list[np.ndarray], xs: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
        """Loss per row; `xs` are the rows' inputs and `idx` their sample indices."""
        stats, peaks, y = self.split(outs)
        total = np.zeros(len(idx))
        if "bn" in self.kind:
            total += bn_loss(stats, list(self.bn)) + W_INPUT * sum(input_prior(x) for x in xs)
        if "label" in self.kind:
            weight = W_LABEL_WITH_BN if "bn" in self.kind else 1.0
            total += weight * self.label_terms(peaks, y, xs, idx)
        if "sequence" in self.kind:
            weight = W_LABEL_WITH_BN if "bn" in self.kind else 1.0
            total += weight * (sequence_loss(y, self.sequence, idx) + self.prior_terms(peaks, xs))
        return total

    def label_terms(self, peaks, y, xs, idx) -> np.ndarray:
        """L_B per row (module docstring)."""
        return np.maximum(0.0, MARGIN_CAP - self._margin(y, idx)) + self.prior_terms(peaks, xs)

    def prior_terms(self, peaks, xs) -> np.ndarray:
        """Smoothness and, with activation peaks measured, the peak penalty of objective B."""
        total = W_TV * sum(total_variation(x) for x in xs) / TV_NOISE
        if peaks is not None:
            ref = self.label.act_ref if self.label is not None else self.act_ref
            excess = np.maximum(np.log(np.maximum(peaks, 1e-12) / ref), 0.0)
            total = total + W_ACT * (excess ** 2).mean(axis=1)
        return total

    def margin(self, outs: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
        """Normalized target margin per row (label objectives only)."""
        return self._margin(self.split(outs)[2], idx)

    def _margin(self, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        spec = self.label
        masks = spec.masks[idx] if spec.masks is not None else None
        return margins(reduce_output(y, masks), spec.labels[idx], spec.mu_ref) / spec.sigma_ref

