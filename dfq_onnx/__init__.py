"""dfq-onnx: data-free, mixed-precision, graph-to-graph ONNX quantization compiler.

The public names are loaded lazily so that `import dfq_onnx.numerics` stays free of onnx/onnxruntime.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "quantize": "api", "QuantizeOptions": "options", "TargetProfile": "target", "load_target": "target",
    "DfqError": "errors", "UsageError": "errors", "ModelLoadError": "errors",
    "UnsupportedModelError": "errors", "InfeasibleBudgetError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dfq_onnx' has no attribute '{name}'")
