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

A model OpenVINO compiles may still compute another function than the one the compile measured in ONNX
Runtime (a Conv's bias applied with its first channel's value for every channel: BENCHMARKS.md, session
19). So the written model also runs on ROWS of the compile's samples in both runtimes (OpenVINO with f32
inference precision: its bf16 default on some CPUs is its own, documented difference), and a warning says
when OpenVINO's outputs are further from ONNX Runtime's than the quantized outputs are from the given
model's (SQNR lower by more than MARGIN_DB). The two runtimes differ even on a correct model, by about the
quantization error itself: OpenVINO's int8 kernels requantize each output, ONNX Runtime computes a layer
it does not fuse (a Conv whose bias is a separate Add, on this target) in float between the Q/DQ -- on
ResNet-56, OpenVINO vs ORT 29.1 dB beside quantized vs given 30.7 dB. The faults seen are far below
(captcha CRNN's first-channel bias -4.1 dB, an absorbed ReLU lost at 16 bits -71 dB, a fused ReduceMax
-4.0 dB: BENCHMARKS.md, sessions 19-20), hence a 6 dB margin (two such noises add 3 dB, with a 3 dB
allowance for 4 rows' spread). The comparison never stops the compile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx

from dfq_onnx.backends import runtime
from dfq_onnx.core import ir
from dfq_onnx.core.errors import TargetRuntimeError
from dfq_onnx.core.numerics import sqnr_db

log = logging.getLogger(__name__)
PROTO_LIMIT = 2 ** 31 - 1
ROWS = 4                  # sample rows the two runtimes are compared on, one a call
MARGIN_DB = 6.0           # OpenVINO vs ORT may be this much below quantized vs given before a warning
CAP_DB = 60.0             # agreement beyond this is agreement (an unquantized output: inf)


def _runtime_message(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what failed (not its 'Exception from file:line')."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    useful = [s for s in lines if not s.startswith("Exception from")]
    return (useful or lines or [type(exc).__name__])[0][:400]


def _compile(core, model: onnx.ModelProto, openvino, config: dict | None = None):
    """(compiled model, None), or (None, OpenVINO's reason for not compiling `model` on CPU)."""
    weights = openvino.Tensor(np.empty(0, np.uint8))      # the weights are inside the serialized model
    try:
        read = core.read_model(ir.serialize(model), weights)
        return (core.compile_model(read, "CPU", config) if config else core.compile_model(read, "CPU")), None
    except Exception as exc:          # OpenVINO raises RuntimeError subclasses of its own
        return None, _runtime_message(exc)


def _refusal(core, model: onnx.ModelProto, openvino) -> str | None:
    return _compile(core, model, openvino)[1]


def sample_rows(state) -> dict[str, np.ndarray] | None:
    """The first ROWS of the compile's samples as the written model reads them; None when there are none
    or the compile read them in another layout (batch-major state inputs, no batch axis)."""
    if getattr(state, "batch_axis1", None) or getattr(state, "unbatched", None):
        return None
    feeds = getattr(state.synthetic, "inputs", None) or state.calib
    if not feeds:
        return None
    return {name: np.asarray(v[:ROWS]) for name, v in feeds.items()}


def _outputs(run, feeds: dict, rows: int) -> list[np.ndarray]:
    per_row = [run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(rows)]
    return [np.concatenate(parts) for parts in zip(*per_row)]


def _agreement(core, model: onnx.ModelProto, given: Callable[[], onnx.ModelProto], openvino,
               feeds: dict) -> dict:
    """Per float output: SQNR (dB) of OpenVINO's output to ORT's, and of the written model's to the given
    model's in ORT; the worst output's pair and whether OpenVINO departs from ORT (see the docstring).
    One runtime's session at a time (each holds its own copy of the weights)."""
    sess = runtime.session(model, quiet=True)
    names = [o.name for o in sess.get_outputs()]
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    rows = min(len(v) for v in feeds.values())
    q = _outputs(lambda f: sess.run(None, f), feeds, rows)
    sess = runtime.session(given(), quiet=True)
    ref = _outputs(lambda f: sess.run(names, f), feeds, rows)
    sess = None                   # freed before OpenVINO compiles its copy
    compiled, failure = _compile(core, model, openvino, {"INFERENCE_PRECISION_HINT": "f32"})
    if compiled is None:
        return {"skipped": failure}
    ports = [next((o for o in compiled.outputs if name in o.get_names()), compiled.outputs[i])
             for i, name in enumerate(names)]
    got = _outputs(lambda f: [np.asarray(r) for r in map(compiled(f).__getitem__, ports)], feeds, rows)
    worst = None
    for name, a, b, r in zip(names, q, got, ref, strict=True):
        if a.dtype.kind != "f" or not np.any(a):
            continue
        ov_db, q_db = min(float(sqnr_db(a, b)), CAP_DB), min(float(sqnr_db(r, a)), CAP_DB)
        if worst is None or ov_db - q_db < worst[1] - worst[2]:
            worst = (name, ov_db, q_db)
    if worst is None:
        return {"skipped": "no float output with signal"}
    return {"rows": rows, "output": worst[0], "openvino_vs_onnxruntime_db": round(worst[1], 1),
            "quantized_vs_given_db": round(worst[2], 1), "departs": worst[1] < worst[2] - MARGIN_DB}


def _compare(core, model, source, openvino, feeds, runtime_name: str) -> dict:
    """The agreement note (never an error: the comparison is advice); warns when OpenVINO departs. Not for
    a model whose given form is likely above ir.LAZY_BYTES (its weights would be loaded again)."""
    if 4 * ir.tensor_bytes(model) > ir.LAZY_BYTES:
        return {"skipped": f"the model given is above {ir.LAZY_BYTES >> 20} MiB: not loaded again"}
    try:
        note = _agreement(core, model, source, openvino, feeds)
    except Exception as exc:          # a runtime that cannot run the samples: no comparison
        return {"skipped": _runtime_message(exc)}
    if note.get("departs"):
        log.warning("%s computes the written model differently from ONNX Runtime on %d of the compile's "
                    "samples: output %s at %.1f dB from ONNX Runtime's, while the quantization is at %.1f "
                    "dB from the model given; read its accuracy in OpenVINO, and please report it with the "
                    "model",
                    runtime_name, note["rows"], note["output"], note["openvino_vs_onnxruntime_db"],
                    note["quantized_vs_given_db"])
    return note


def check_on_target(model: onnx.ModelProto, target, source: Callable[[], onnx.ModelProto],
                    feeds: dict[str, np.ndarray] | None = None) -> dict | None:
    """Raise TargetRuntimeError when the target's runtime (OpenVINO CPU) cannot compile `model` but can
    compile the model given to the compile (`source()` loads it again): one it refuses too (PLCMOS v2:
    a dynamic rank its CPU plugin does not take) is written as it is, with a warning. With `feeds` (rows
    of the compile's samples, sample_rows), a model it compiles is also run in both runtimes (the module
    docstring). Returns the report's note of the check ({"runtime", "compiled", and why not, "agreement"}),
    None when nothing was checked."""
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
    label = f"OpenVINO {openvino.get_version().split('-')[0]} CPU"
    failure = _refusal(core, model, openvino)
    if failure is None:
        note = {"runtime": label, "compiled": True}
        if feeds:
            note["agreement"] = _compare(core, model, source, openvino, feeds, label)
        return note
    given = source()
    if given.ByteSize() <= PROTO_LIMIT and _refusal(core, given, openvino) is not None:
        log.warning("%s cannot compile the written model (%s), nor the model given: written as it is",
                    label, failure)
        return {"runtime": label, "compiled": False, "reason": failure, "model_given_compiled": False}
    raise TargetRuntimeError(
        f"{label} cannot compile the written model ({failure}), though it compiles the model "
        f"given; nothing was written. The Q/DQ placement is dfq-onnx's: please report it with the model; "
        f"--target ort-cpu, or a target file changing the openvino profile's [placement], may avoid it")
