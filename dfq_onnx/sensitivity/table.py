"""The sensitivity table (what `ScoreSensitivity` leaves on the state) and the output metrics it is in.

With L(config) the loss at the model output against the FP32 model on the scoring samples:

    ref             = L(every weight FP32)                 (activations fake-quantized, or FP32)
    singles         Omega_i(c)   = D(i at c, others FP32)
    incontext       I_i(c)       = L(i at c, others at base) - L(all at base)
    pairs           C_ij(c, c')  = D(i at c, j at c', others FP32) - Omega_i(c) - Omega_j(c')

where D is the metric against the outputs with every weight FP32 (activations as in ref) instead of
against the FP32 model: the damage the weights add to activation quantization (passes/sensitivity.py).

The additive prediction the bit allocator minimizes (groups at FP32 contribute 0):

    L_hat(config) = ref + sum_i Omega_i(c_i) + sum_(i,j) C_ij(c_i, c_j)

Metrics, per model output, summed over outputs (all are 0 at FP32 and grow with the damage):
    kl      mean over positions of KL(p_ref || p_test) on the class axis (the last, or `kl@k`): class
            distributions [N, K], per-step distributions [N, T, C] (CTC / sequence logits), per-pixel
            class maps; p = softmax(y) of logits, p = y itself when the reference output already is a
            distribution (non-negative, summing to 1 on that axis: a Softmax output)
    ce      mean cross-entropy(test, labels) - mean cross-entropy(ref, labels)  (task loss; needs labels)
    mse     mean squared error
    sqnr    noise power / signal power = 10^(-SQNR/10)  (scale-free, adds like noise powers)
    cosine  mean over samples of 1 - cos(y_ref, y_test) (each sample's output flattened): embeddings,
            where only the direction counts (for small noise it is half the noise-to-signal power of
            the noise component orthogonal to y_ref, so it adds like sqnr)
Per-sample forms of these (any subset of samples from one pass): losses.py.
"auto" picks per output by its shape and by what computes it (`dfq_onnx.core.outputs`): kl after
a Softmax / LogSoftmax / linear layer (classifier or per-step logits), cosine for a 2-D output after
pooling or normalization (an embedding), sqnr for anything else (probability maps, token states);
without graph information, kl for [N, K > 1] and sqnr otherwise. `auto_metric` also says why.
This module is plain numpy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dfq_onnx.core import candidates
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.options import METRICS
from dfq_onnx.sensitivity.losses import output_loss as output_loss

log = logging.getLogger(__name__)

Cand = tuple[int, int]
JSON_VERSION = 1


def cand_name(c: Cand) -> str:
    return candidates.name(c)


def parse_cand(text: str) -> Cand:
    return candidates.parse(text)


# ----------------------------------------------------------------------------------------- metrics


def is_classifier(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1


def auto_metric(shape: tuple[int, ...], producer=None) -> tuple[str, str]:
    """(kind, reason) of the `auto` metric for an output of `shape` (batch first) computed by
    `producer` (an `outputs.Producer`, or None without graph information); see the module docstring."""
    dims = "[" + ", ".join(str(d) for d in shape) + "]"
    if producer is None:
        if len(shape) == 2 and shape[1] > 1:
            return "kl", f"{dims}: classifier shape"
        return "sqnr", f"{dims}: noise-to-signal"
    after = f"{dims} after {producer.op}" if producer.op else f"{dims} (no computing op)"
    if producer.role in ("distribution", "logits") and len(shape) >= 2:
        axis = producer.axis if producer.axis is not None else len(shape) - 1
        if shape[axis] > 1:
            what = "class distribution" if len(shape) == 2 else f"per-position distributions on axis {axis}"
            return ("kl" if axis == len(shape) - 1 else f"kl@{axis}"), f"{after}: {what}"
    if producer.role == "embedding" and len(shape) == 2:
        return "cosine", f"{after}: embedding (pooled / normalized)"
    what = {4: "map", 3: "per-position states"}.get(len(shape), "values")
    return "sqnr", f"{after}: {what}, noise-to-signal"


def resolve_metrics(metric: str, refs: list[np.ndarray], labels: np.ndarray | None,
                    names: list[str] | None = None, producers: dict | None = None) -> tuple[str, ...]:
    """The metric of each output: `metric`, or for "auto" `auto_metric` of its shape and producer
    (`producers`: output name -> `outputs.Producer`)."""
    names = names or [f"#{i}" for i in range(len(refs))]
    if metric not in METRICS:
        raise UsageError(f"sensitivity metric '{metric}': expected one of {', '.join(METRICS)}")
    if metric == "auto":
        producers = producers if producers is not None else {}
        return tuple(auto_metric(r.shape, producers.get(n))[0] for n, r in zip(names, refs))
    if metric in ("kl", "ce"):
        for name, r in zip(names, refs):
            if r.ndim < 2 or r.shape[-1] < 2 or (metric == "ce" and r.ndim != 2):
                need = "classifier outputs [N, K>1]" if metric == "ce" else "outputs [N, ..., K>1]"
                raise UsageError(f"metric '{metric}' needs {need}; output '{name}' has "
                                 f"shape {list(r.shape)}: use 'mse', 'sqnr' or 'auto'")
    if metric == "ce":
        n, k = refs[0].shape
        if labels is None:
            raise UsageError("metric 'ce' (task loss) needs labels; use 'kl' or 'auto' without labels")
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= k:
            raise UsageError(f"labels must be {n} class indices in [0, {k}), got shape {list(labels.shape)}")
    return (metric,) * len(refs)


# ----------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class SensitivityTable:
    """Per-group losses of each weight candidate, in-context and pairwise terms (see module docstring)."""

    groups: tuple[str, ...]
    candidates: tuple[Cand, ...]
    singles: dict[str, dict[Cand, float]]
    incontext: dict[str, dict[Cand, float]]
    pairs: dict[tuple[str, str], dict[tuple[Cand, Cand], float]]
    metric: str                        # per output, comma-separated ("kl", "kl,sqnr", ...)
    samples: int
    evaluations: int                   # configurations run on the probe model
    forward_passes: int                # ORT run calls (FP32 reference included)
    seconds: float
    reference_loss: float = 0.0        # L(every weight FP32)
    base: Cand | None = None
    base_loss: float = 0.0             # L(every group at base)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)   # evaluations/passes/seconds
    meta: dict = field(default_factory=dict)                            # options, hops, shrinkage
    activations: dict = field(default_factory=dict)   # activation terms (sensitivity/act_scoring.py), JSON

    def _cand(self, value) -> Cand | None:
        if value is None:
            return None
        cand = tuple(value) if isinstance(value, (tuple, list)) else (int(value), self.candidates[0][1])
        return cand if cand[0] < 32 else None

    def predict(self, config, pairs: bool = True) -> float:
        """Additive loss of `config` (group -> (w, a), weight bits, or None for FP32; or a BitPlan)."""
        config = getattr(config, "bits", config)
        chosen = {g: self._cand(v) for g, v in config.items() if g in self.singles}
        chosen = {g: c for g, c in chosen.items() if c is not None}
        for g, c in chosen.items():
            if c not in self.singles[g]:
                raise UsageError(f"group '{g}': candidate {cand_name(c)} was not scored "
                                 f"({', '.join(map(cand_name, self.candidates))})")
        loss = self.reference_loss + sum(self.singles[g][c] for g, c in chosen.items())
        if pairs:
            for (g, h), terms in self.pairs.items():
                if g in chosen and h in chosen:
                    loss += terms.get((chosen[g], chosen[h]), 0.0)
        return float(loss)

    def to_json(self) -> str:
        d = asdict(self)
        d["version"] = JSON_VERSION
        d["candidates"] = [cand_name(c) for c in self.candidates]
        d["base"] = None if self.base is None else cand_name(self.base)
        for key in ("singles", "incontext"):
            d[key] = {g: {cand_name(c): v for c, v in t.items()} for g, t in getattr(self, key).items()}
        d["pairs"] = [{"groups": [g, h], "terms": {f"{cand_name(c)}|{cand_name(e)}": v
                                                   for (c, e), v in t.items()}}
                      for (g, h), t in self.pairs.items()]
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "SensitivityTable":
        d = json.loads(text)
        if d.pop("version", None) != JSON_VERSION:
            raise ValueError(f"sensitivity table JSON version is not {JSON_VERSION}")
        d["groups"] = tuple(d["groups"])
        d["candidates"] = tuple(parse_cand(c) for c in d["candidates"])
        d["base"] = None if d["base"] is None else parse_cand(d["base"])
        for key in ("singles", "incontext"):
            d[key] = {g: {parse_cand(c): float(v) for c, v in t.items()} for g, t in d[key].items()}
        d["pairs"] = {tuple(p["groups"]): {tuple(parse_cand(x) for x in k.split("|")): float(v)
                                           for k, v in p["terms"].items()} for p in d["pairs"]}
        return cls(**d)


def save_json_atomic(path: str | os.PathLike, table) -> Path:
    """Write `table.to_json()` (a SensitivityTable, or other cached terms: form_scoring.FormTerms), or
    `table` itself when it is already JSON text, via a temporary file and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.stem + ".", suffix=".tmp.json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(table if isinstance(table, str) else table.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_json(path: str | os.PathLike, parse=None):
    """A cached table (or `parse(text)`'s entry: another cache's), or None when missing or unreadable
    (logged): a corrupt entry is recomputed, never raised."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return (parse or SensitivityTable.from_json)(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable sensitivity cache entry %s: %s", path, exc)
        return None


def summary(table: SensitivityTable, top: int = 5) -> dict:
    """Report notes: cost, and the most sensitive groups at the lowest candidate."""
    low = min(table.candidates)
    worst = [g for g in sorted(table.singles, key=lambda g: -table.singles[g].get(low, 0.0))
             if low in table.singles[g]][:top]
    return {"metric": table.metric, "samples": table.samples, "groups": len(table.groups),
            "candidates": [cand_name(c) for c in table.candidates], "pairs": len(table.pairs),
            "evaluations": table.evaluations, "forward_passes": table.forward_passes,
            "seconds": round(table.seconds, 3), "reference_loss": table.reference_loss,
            "base_loss": table.base_loss,
            "phases": table.phases, **table.meta, f"most_sensitive_{cand_name(low)}":
                {g: table.singles[g][low] for g in worst}}
