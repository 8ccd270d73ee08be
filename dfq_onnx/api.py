"""Python API mirroring the CLI: `quantize(model, ...) -> (onnx.ModelProto, Report)`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import onnx

from . import ir
from .options import QuantizeOptions
from .pass_base import run_passes
from .pipeline import default_pipeline
from .report import Report
from .state import CompileState
from .target import TargetProfile, load_target


def quantize(model: str | os.PathLike | onnx.ModelProto, *, target: str | TargetProfile = "ort-cpu",
             options: QuantizeOptions | None = None, output: str | os.PathLike | None = None,
             report_path: str | os.PathLike | None = None, encodings_path: str | os.PathLike | None = None,
             **overrides) -> tuple[onnx.ModelProto, Report]:
    """Quantize `model` (a path or a ModelProto, never modified) and return the QDQ model and report.

    `overrides` are QuantizeOptions fields (weight_bits=4, calib="noise", ...). When `output` is given
    the model is checked and written atomically; `report_path` writes the JSON report;
    `encodings_path` the AIMET/QNN quantization-overrides JSON of the emitted encodings.
    """
    opts = dataclasses.replace(options or QuantizeOptions(), **overrides)
    profile = target if isinstance(target, TargetProfile) else load_target(target)
    source = ir.load_model(model)
    report = Report()
    report.model.update({"name": source.graph.name, "producer": source.producer_name,
                         "path": str(model) if not isinstance(model, onnx.ModelProto) else None,
                         "target": profile.name, "options": _options_dict(opts)})
    state = CompileState(graph=None, target=profile, options=opts, report=report,
                         model_hash=ir.model_hash(source), source=source)
    run_passes(default_pipeline(profile, opts), state)
    out = ir.to_model(state.graph, ir_version=max(source.ir_version, ir.min_ir_version(state.graph.opset)))
    out.producer_name, out.producer_version = "dfq-onnx", _version()
    ir.check_model(out)
    report.model["params"] = sum(g.params for g in state.groups)
    if output is not None:
        ir.save_model(out, output)
    if report_path is not None:
        ir.write_bytes_atomic(report_path, report.to_json().encode())
    if encodings_path is not None:
        from .encodings import export_encodings, to_json

        enc = export_encodings(state.graph, report, profile.act_symmetric)
        ir.write_bytes_atomic(encodings_path, to_json(enc).encode())
    return out, report


def synthesize(model, *, output=None, samples: int = 64, steps: int | None = None, seed: int = 0,
               input_shapes: dict | None = None, cache_dir: str | None = None, use_cache: bool = True,
               progress: bool = True):
    """Synthetic calibration samples for `model` (no data): returns the SynthesisResult; with `output`,
    writes one array per model input (plus `labels` when the objective assigns them) to an .npz."""
    import numpy as np

    from .passes.fold_bn import FoldBatchNorm
    from .passes.normalize import Normalize
    from .passes.synthesize import SynthesisOptions, Synthesize

    opts = QuantizeOptions(input_shapes=dict(input_shapes or {}), seed=seed, progress=progress)
    source = ir.load_model(model)
    state = CompileState(graph=None, target=load_target("ort-cpu"), options=opts, report=Report(),
                         model_hash=ir.model_hash(source), source=source)
    extra = {"steps": steps} if steps is not None else {}
    synth = Synthesize(SynthesisOptions(samples=samples, seed=seed, cache_dir=cache_dir, use_cache=use_cache,
                                        progress=progress, **extra))
    run_passes([Normalize(), FoldBatchNorm(), synth], state)
    result = state.synthetic
    if output is not None:
        arrays = dict(result.inputs)
        if result.labels is not None:
            arrays["labels"] = np.asarray(result.labels)
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        ir.write_bytes_atomic(output, buf.getvalue())
    return result


def _options_dict(opts: QuantizeOptions) -> dict:
    d = dataclasses.asdict(opts)
    d.pop("progress", None)
    if d.get("calib", "").endswith(".npz"):
        d["calib"] = Path(d["calib"]).name
    return d


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dfq-onnx")
    except PackageNotFoundError:  # pragma: no cover - source checkout without install
        return "0"
