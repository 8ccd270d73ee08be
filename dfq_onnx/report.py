"""The compile report: per-pass timings, per-layer encodings, warnings, skips; written as JSON."""

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

    def skip(self, node: str, reason: str) -> None:
        self.skipped.append({"node": node, "reason": reason})

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        passes = self.passes if timings else [{k: v for k, v in p.items() if k != "seconds"}
                                              for p in self.passes]
        return {"model": self.model, "passes": passes, "forward_passes": self.forward_passes,
                "groups": self.groups, "layers": self.layers, "activations": self.activations,
                "skipped": self.skipped,
                "warnings": self.warnings, "notes": self.notes}

    def to_json(self, timings: bool = True) -> str:
        return json.dumps(self.to_dict(timings), indent=2, sort_keys=True, default=_jsonable) + "\n"


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
