"""The written model compiled by its target's runtime, where the target names one that is installed.

ONNX's checker and ONNX Runtime accept Q/DQ placements a backend's own compiler can refuse: OpenVINO's
low-precision transformations move a dequantization (and the constant scale and shift folded into it)
through the ops after it, and some of them fail on what they are handed -- a per-channel shift of lower
rank than the tensor at a Gather (MobileBERT's NoNorm before the pooler, before the openvino target's
`[placement] constant_affine = false`). A model its target cannot compile is no output, so the compile
stops with the runtime's own message and nothing is written -- unless the runtime refuses the model
given as well (then the output is no worse than its input, and is written with a warning). ONNX Runtime
targets need no extra check (the compile runs the model in ONNX Runtime throughout); without `openvino`
installed there is nothing to ask, and models beyond protobuf's 2 GB are not serialized for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx

from dfq_onnx.core import ir
from dfq_onnx.core.errors import TargetRuntimeError

log = logging.getLogger(__name__)
PROTO_LIMIT = 2 ** 31 - 1


def _runtime_message(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what failed (not its 'Exception from file:line')."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    useful = [s for s in lines if not s.startswith("Exception from")]
    return (useful or lines or [type(exc).__name__])[0][:400]


def _refusal(core, model: onnx.ModelProto, openvino) -> str | None:
    """OpenVINO's reason for not compiling `model` on CPU, or None when it compiles."""
    weights = openvino.Tensor(np.empty(0, np.uint8))      # the weights are inside the serialized model
    try:
        core.compile_model(core.read_model(ir.serialize(model), weights), "CPU")
    except Exception as exc:          # OpenVINO raises RuntimeError subclasses of its own
        return _runtime_message(exc)
    return None


def check_on_target(model: onnx.ModelProto, target, source: Callable[[], onnx.ModelProto]) -> dict | None:
    """Raise TargetRuntimeError when the target's runtime (OpenVINO CPU) cannot compile `model` but can
    compile the model given to the compile (`source()` loads it again): one it refuses too (PLCMOS v2:
    a dynamic rank its CPU plugin does not take) is written as it is, with a warning. Returns the
    report's note of the check ({"runtime", "compiled", and why not}), None when nothing was checked."""
    if target.runtime != "openvino":
        return None
    try:
        import openvino
    except ImportError:
        log.debug("openvino is not installed: the written model is not compiled by OpenVINO")
        return None
    if model.ByteSize() > PROTO_LIMIT:
        log.warning("the written model is over 2 GB: not compiled by OpenVINO here")
        return None
    core = openvino.Core()
    runtime = f"OpenVINO {openvino.get_version().split('-')[0]} CPU"
    failure = _refusal(core, model, openvino)
    if failure is None:
        return {"runtime": runtime, "compiled": True}
    given = source()
    if given.ByteSize() <= PROTO_LIMIT and _refusal(core, given, openvino) is not None:
        log.warning("%s cannot compile the written model (%s), nor the model given: written as it is",
                    runtime, failure)
        return {"runtime": runtime, "compiled": False, "reason": failure, "model_given_compiled": False}
    raise TargetRuntimeError(
        f"{runtime} cannot compile the written model ({failure}), though it compiles the model "
        f"given; nothing was written. The Q/DQ placement is dfq-onnx's: please report it with the model; "
        f"--target ort-cpu, or a target file changing the openvino profile's [placement], may avoid it")
