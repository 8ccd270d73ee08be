"""dfq-onnx: data-free, mixed-precision, graph-to-graph ONNX quantization compiler.

The public names are loaded lazily so that `import dfq_onnx.core.numerics` stays free of onnx/onnxruntime.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "quantize": "api", "QuantizeOptions": "core.options", "TargetProfile": "core.target",
    "load_target": "core.target", "DfqError": "core.errors", "UsageError": "core.errors",
    "ModelLoadError": "core.errors", "UnsupportedModelError": "core.errors",
    "InfeasibleBudgetError": "core.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dfq_onnx' has no attribute '{name}'")
