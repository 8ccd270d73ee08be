"""The compile report: per-pass timings, per-layer encodings, warnings, skips; written as JSON or
self-contained HTML (`dfq_onnx.report.html.render`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    model: dict[str, Any] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    activations: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    forward_passes: int = 0
    comparison: dict[str, Any] | None = None       # FP32 vs quantized outputs (dfq_onnx.report.data)
    sensitivity: dict[str, Any] | None = None      # groups x candidates loss matrix
    pareto: list[dict[str, Any]] | None = None     # {budget, predicted, measured, bits} points
    branches: dict[str, dict[str, Any]] | None = None   # a model compiled branch by branch: each one's report

    def skip(self, node: str, reason: str) -> None:
        self.skipped.append({"node": node, "reason": reason})

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        d = {"model": self.model, "passes": self.passes, "forward_passes": self.forward_passes,
             "groups": self.groups, "layers": self.layers, "activations": self.activations,
             "skipped": self.skipped,
             "warnings": self.warnings, "notes": self.notes, "comparison": self.comparison,
             "sensitivity": self.sensitivity, "pareto": self.pareto}
        if self.branches is not None:
            d["branches"] = self.branches
        return d if timings else _without_timings(d)

    def to_json(self, timings: bool = True) -> str:
        return json.dumps(self.to_dict(timings), indent=2, sort_keys=True, default=_jsonable) + "\n"


def _without_timings(obj):
    """A copy without wall-clock and memory entries (keys 'seconds', '*_seconds', 'peak_rss_mb'), for
    comparing runs."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if not (k in ("seconds", "peak_rss_mb") or k.endswith("_seconds"))}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _jsonable(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
