"""The value range an image input reads, from a BN left after its first layer's activation.

A BN folded into the first layer says its input was standardized as far as synthesis can tell (the
samples stay standardized). A BN that follows the first layer's activation (Keras' Conv - Activation -
BN blocks, exported with the BN after the ReLU; fold_bn.py keeps its statistics) says more: its running
mean mu_c and variance var_c are the moments of a_c = act(W_c x + b_c) over the training inputs x, and the
activation between makes them depend on both the scale and the offset of x. So the input's convention is
the candidate R of `input_range.CANDIDATES` whose samples give the BN's output its trained moments:

    score(R) = 1/C sum_c [(m_c(R) - beta_c)^2 + (s_c(R) - |gamma_c|)^2] / (gamma_c^2 + eps)

with m_c, s_c the mean and std of channel c of the BN's output over the samples and positions (the
population version of the BN objective's L_bn: what the running statistics describe), the samples up to
input_range.SAMPLES 1/f fields mapped onto R as synthesis maps them. The pick is the smallest score; the
input's own encoding covers the pick's offset twin, as for `input_range.infer_range`'s picks
(passes/inferred_input.py), so a wrong one-signed pick keeps its negative half. Rows: SAMPLES x
len(CANDIDATES) through the graph cut after that BN.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.backends.chunks import static_batch
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.synth.input_range import (
    CANDIDATES,
    RangeInference,
    kept_bn_after_first_layer,
    observer,
    sample_count,
)
from dfq_onnx.synth.search import pink_noise, squash


def score(y: np.ndarray, stats) -> float:
    """score(R) of the BN output `y` [N, C, ...] (module docstring)."""
    axes = tuple(i for i in range(y.ndim) if i != 1)
    m, s = y.mean(axis=axes, dtype=np.float64), y.std(axis=axes, dtype=np.float64)
    gamma = np.asarray(stats.gamma, np.float64)
    term = ((m - stats.beta) ** 2 + (s - np.abs(gamma)) ** 2) / (gamma ** 2 + stats.eps)
    return float(term.mean())


def infer_kept_range(graph: gs.Graph, name: str, shape: tuple[int, ...], bn_stats: dict,
                     seed: int = 0) -> RangeInference | None:
    """The convention whose samples fit the kept BN after input `name`'s first layer best; None without
    such a BN (or when the cut graph reads another input)."""
    bn = kept_bn_after_first_layer(graph, name, bn_stats)
    if bn is None or len(shape) != 3:
        return None
    stats = bn_stats[node_label(bn)]
    sess = observer(graph, [(bn, None)])
    if sess is None:
        return None
    channels = len(np.atleast_1d(stats.gamma))
    n = sample_count(shape, [(bn, np.zeros(channels))])
    latent = pink_noise(np.random.default_rng(seed), n, shape)
    scores, fixed = {}, static_batch(graph)
    for label, rng in CANDIDATES:
        x = squash({name: latent.copy()}, {name: rng} if rng else None)
        scores[label] = score(runtime.run_all(sess, x, fixed)[0], stats)
    best = min(scores, key=lambda k: scores[k])
    return RangeInference(name, best, dict(CANDIDATES)[best], scores, channels, (node_label(bn),))
