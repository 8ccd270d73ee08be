"""Whether a plan keeps the decisions an output is read for: the pick along its class axis.

The activation decision's "broken" test (sensitivity/act_scoring.py) compares two losses, L_act against
16 x L_w. Where the W8 weights are nearly exact (CREPE full: 1024-channel convolutions, per-channel W8,
L_w 3.3e-5) any 8-bit activation plan reads "broken" by that ratio although the output's task is
intact (99.9 % of FP32's pitches kept on real frames). For an output read by its argmax this module
measures the task on the scoring samples instead:

    positions   every index of the output but its class axis (a sample's row, a frame, a token)
    clear       positions whose FP32 peak stands out: prominence = top - median over the axis at least
                CLEAR x the 90th percentile of the prominences (the positions the model decides; a
                flat row's argmax is noise in FP32 already)
    kept        the plan's pick lies within FP32's peak at half its height: ref[pick] >= top - HALF x
                prominence (a pitch bin beside the peak, 20 cents off; a class FP32 gives at least half
                the top's probability)

A KL / CE output's values are read as probabilities (softmax of logits along the axis; a distribution
as given); a noise-to-signal output's as the scores they are.

`decisions_kept` is the least kept fraction over the outputs, or None where some output has no class
axis (maps, states, embeddings, scalars: no decision to read; the loss ratio decides alone there).
The class axis: a KL output's (its distribution or logits axis), a labelled CE output's classes, and the
last axis of a [N, K > 1] output scored by noise-to-signal (sigmoid scores: multi-label, pitch bins).
"""

from __future__ import annotations

import numpy as np

HALF = 0.5      # a pick inside FP32's peak at half its prominence is the same decision
CLEAR = 0.5     # positions at least half as prominent as the clearest decile's are decided ones
KEPT = 0.99     # a plan keeps an output's decisions when at least 99 % of its clear positions are kept


def class_axis(kind: str, shape: tuple[int, ...]) -> int | None:
    """The axis an output's decision is read along, or None (module docstring)."""
    if kind.startswith("kl"):
        return int(kind[3:]) if kind.startswith("kl@") else len(shape) - 1
    if kind == "ce" or (kind == "sqnr" and len(shape) == 2 and shape[1] > 1):
        return 1
    return None


def _probabilities(r: np.ndarray) -> np.ndarray:
    """Rows of logits as probabilities; rows that already are distributions as given."""
    if r.min() >= 0.0 and np.allclose(r.sum(axis=1), 1.0, atol=1e-3):
        return r
    e = np.exp(r - r.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kept_fraction(ref: np.ndarray, test: np.ndarray, axis: int, probabilities: bool = False
                  ) -> tuple[float, int]:
    """(fraction of the clear positions kept, number of clear positions) of one output; `probabilities`:
    read FP32's values as probabilities (a KL / CE output)."""
    k = ref.shape[axis]
    r = np.moveaxis(np.asarray(ref, np.float64), axis, -1).reshape(-1, k)
    if probabilities:
        r = _probabilities(r)
    t = np.moveaxis(np.asarray(test, np.float64), axis, -1).reshape(-1, k)
    top = r.max(axis=1)
    prominence = top - np.median(r, axis=1)
    clear = prominence >= CLEAR * np.percentile(prominence, 90)
    clear &= prominence > 0
    if not clear.any():
        return 1.0, 0
    pick = r[np.arange(len(r)), t.argmax(axis=1)]
    kept = pick >= top - HALF * prominence
    return float(kept[clear].mean()), int(clear.sum())


def decisions_kept(kinds, refs, tests) -> dict | None:
    """{"kept": least kept fraction, "positions": clear positions per output} over the outputs, or None
    where an output has no class axis or no clear position (nothing to read)."""
    fracs, counts = [], []
    for kind, ref, test in zip(kinds, refs, tests):
        axis = class_axis(kind, ref.shape)
        if axis is None:
            return None
        frac, n = kept_fraction(ref, test, axis, probabilities=not kind.startswith("sqnr"))
        if n == 0:
            return None
        fracs.append(frac)
        counts.append(n)
    return {"kept": min(fracs), "positions": counts} if fracs else None


def keeps_decisions(reading: dict | None) -> bool:
    """Whether a reading (`decisions_kept`) says the plan keeps the output's decisions."""
    return reading is not None and reading["kept"] >= KEPT
