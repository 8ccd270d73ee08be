"""Objective S: labelled generation for sequence outputs (Lee et al. 2021's margins, per position).

For a model whose float output is a distribution or logits per position, y [N, T, C] (a CTC text
recognizer's per-column character distribution, a tagger's per-token classes), each sample gets a
target label sequence s = (s_1 .. s_T) and the search makes every position's target win:

    z_t = log y_t (a Softmax output) or y_t (logits)
    m_t = z_t[s_t] - max_{j != s_t} z_t[j]                     the margin at position t
    L_S = 1/T sum_t max(0, cap - m_t / sigma_ref)                cap = 3, as objective B

The target sequences look like the model's own output on real input: runs of one class (1-2
positions) separated by runs of the model's background class b (1-3 positions), with b the class
that wins most positions on the starting images (a CTC blank, found by measurement, not by index).
The run classes are drawn uniformly from the other C - 1 classes (seeded), so every sample spells a
different random "word" the model must see in it. sigma_ref is the spread of z over the classes on
the starting images. Priors as objective B: total variation (w_tv = 0.1) and the activation-peak
penalty against the starting images' peaks (w_act = 10) when no BN statistics constrain the
activations; with BN statistics the objective is L_A + w_s L_S (w_s = 0.1, as for "bn+label").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.core.outputs import producer_of

MARGIN_CAP = 3.0
RUN_CLASS, RUN_BACKGROUND = (1, 2), (1, 3)   # run lengths (inclusive) of target classes and background


@dataclass(frozen=True)
class SequenceSpec:
    """Targets of objective S: a class per (sample, position), and the output's reference scale."""

    targets: np.ndarray       # [N, T] int64
    log_output: bool          # the output is a distribution: margins of log y
    sigma_ref: float
    background: int


def sequence_output(graph: gs.Graph) -> gs.Tensor | None:
    """The first float output when it is a per-position distribution or logits [N, T, C]: rank 3,
    computed by a Softmax on its last axis, a LogSoftmax or a linear layer (`core.outputs`)."""
    out = next((t for t in graph.outputs if is_float(t)), None)
    if out is None or out.shape is None or len(out.shape) != 3:
        return None
    p = producer_of(out)
    last = p.axis is None or p.axis == 2
    return out if (p.role == "logits" or (p.role == "distribution" and last)) else None


def is_distribution(y: np.ndarray) -> bool:
    """Non-negative and summing to 1 over the last axis (a Softmax output)."""
    return bool(y.size and y.min() >= 0.0 and np.allclose(y.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-3))


def scores(y: np.ndarray, log_output: bool) -> np.ndarray:
    y = y.astype(np.float64)
    return np.log(np.maximum(y, 1e-12)) if log_output else y


def target_sequences(rng: np.random.Generator, n: int, length: int, classes: int,
                     background: int) -> np.ndarray:
    """[n, length] targets: runs of random non-background classes between background runs."""
    others = np.array([c for c in range(classes) if c != background])
    out = np.full((n, length), background, np.int64)
    for i in range(n):
        t = int(rng.integers(0, RUN_BACKGROUND[1] + 1))        # leading margin
        while t < length:
            run = int(rng.integers(RUN_CLASS[0], RUN_CLASS[1] + 1))
            out[i, t:t + run] = others[int(rng.integers(len(others)))]
            t += run + int(rng.integers(RUN_BACKGROUND[0], RUN_BACKGROUND[1] + 1))
    return out


def build_spec(rng: np.random.Generator, y_ref: np.ndarray) -> SequenceSpec:
    """Targets and scale from the outputs y_ref [N, T, C] of the starting images."""
    log_output = is_distribution(y_ref)
    z = scores(y_ref, log_output)
    counts = np.bincount(z.argmax(axis=-1).ravel(), minlength=z.shape[-1])
    background = int(counts.argmax())
    n, length, classes = z.shape
    sigma = max(float(z.std(axis=-1).mean()), 1e-6)
    return SequenceSpec(target_sequences(rng, n, length, classes, background), log_output, sigma, background)


def sequence_margins(y: np.ndarray, spec: SequenceSpec, idx: np.ndarray) -> np.ndarray:
    """[B, T] normalized margins of the rows' target classes."""
    z = scores(y, spec.log_output)
    target = spec.targets[idx]
    picked = np.take_along_axis(z, target[..., None], axis=-1)[..., 0]
    np.put_along_axis(z, target[..., None], -np.inf, axis=-1)
    return (picked - z.max(axis=-1)) / spec.sigma_ref


def sequence_loss(y: np.ndarray, spec: SequenceSpec, idx: np.ndarray) -> np.ndarray:
    """L_S per row (module docstring)."""
    return np.maximum(0.0, MARGIN_CAP - sequence_margins(y, spec, idx)).mean(axis=1)
