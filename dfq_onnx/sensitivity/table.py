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
    kl    mean over samples of KL(softmax(ref) || softmax(test))            (classifier outputs [N, K])
    ce    mean cross-entropy(test, labels) - mean cross-entropy(ref, labels)  (task loss; needs labels)
    mse   mean squared error
    sqnr  noise power / signal power = 10^(-SQNR/10)  (scale-free, adds like noise powers)
"auto" takes kl for classifier outputs and sqnr for any other output. This module is plain numpy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dfq_onnx.core import candidates, numerics
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.options import METRICS

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


def resolve_metrics(metric: str, refs: list[np.ndarray], labels: np.ndarray | None,
                    names: list[str] | None = None) -> tuple[str, ...]:
    """The metric of each output: `metric`, or for "auto" kl (classifiers) / sqnr (anything else)."""
    names = names or [f"#{i}" for i in range(len(refs))]
    if metric not in METRICS:
        raise UsageError(f"sensitivity metric '{metric}': expected one of {', '.join(METRICS)}")
    if metric == "auto":
        return tuple("kl" if is_classifier(r) else "sqnr" for r in refs)
    if metric in ("kl", "ce"):
        for name, r in zip(names, refs):
            if not is_classifier(r):
                raise UsageError(f"metric '{metric}' needs classifier outputs [N, K>1]; output '{name}' has "
                                 f"shape {list(r.shape)}: use 'mse', 'sqnr' or 'auto'")
    if metric == "ce":
        n, k = refs[0].shape
        if labels is None:
            raise UsageError("metric 'ce' (task loss) needs labels; use 'kl' or 'auto' without labels")
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= k:
            raise UsageError(f"labels must be {n} class indices in [0, {k}), got shape {list(labels.shape)}")
    return (metric,) * len(refs)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    p = numerics.softmax(logits, axis=1)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, 1e-30))))


def output_loss(kind: str, ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The loss of one output (see the module docstring)."""
    if kind == "kl":
        return numerics.kl_softmax(ref, test, axis=1)
    if kind == "ce":
        return cross_entropy(test, labels) - cross_entropy(ref, labels)
    if kind == "mse":
        return numerics.mse(ref, test)
    if kind == "sqnr":
        db = numerics.sqnr_db(ref, test)
        return 0.0 if db == float("inf") else float(10.0 ** (-db / 10.0))
    raise UsageError(f"unknown metric '{kind}'")


def total_loss(kinds, refs, tests, labels=None, rows: np.ndarray | None = None) -> float:
    """Sum over outputs of their loss, on the sample `rows` (all when None)."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    lab = None if labels is None else pick(labels)
    return float(sum(output_loss(k, pick(r), pick(t), lab) for k, r, t in zip(kinds, refs, tests)))


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


def save_json_atomic(path: str | os.PathLike, table: SensitivityTable) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.stem + ".", suffix=".tmp.json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(table.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_json(path: str | os.PathLike) -> SensitivityTable | None:
    """A cached table, or None when missing or unreadable (logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return SensitivityTable.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
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
            "phases": table.phases, **table.meta, f"most_sensitive_{cand_name(low)}":
                {g: table.singles[g][low] for g in worst}}
