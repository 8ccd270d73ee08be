"""dfq-onnx: data-free, mixed-precision, graph-to-graph ONNX quantization compiler."""

from .api import quantize
from .errors import DfqError, InfeasibleBudgetError, ModelLoadError, UnsupportedModelError, UsageError
from .options import QuantizeOptions
from .target import TargetProfile, load_target

__all__ = ["quantize", "QuantizeOptions", "TargetProfile", "load_target", "DfqError", "UsageError",
           "ModelLoadError", "UnsupportedModelError", "InfeasibleBudgetError"]
