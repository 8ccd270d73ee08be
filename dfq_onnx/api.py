"""Python API mirroring the CLI: `quantize(model, ...) -> (onnx.ModelProto, Report)`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path

import onnx

from dfq_onnx.backends.memory import release
from dfq_onnx.backends.target_check import check_on_target, sample_rows
from dfq_onnx.core import branches, declared_io, ir
from dfq_onnx.core.errors import OutputError, UnsupportedModelError, UsageError
from dfq_onnx.core.input_hints import with_inferred_shapes
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.target import TargetProfile, load_target
from dfq_onnx.pipeline import default_pipeline

log = logging.getLogger(__name__)


def quantize(model: str | os.PathLike | onnx.ModelProto, *, target: str | TargetProfile = "ort-cpu",
             options: QuantizeOptions | None = None, output: str | os.PathLike | None = None,
             report_path: str | os.PathLike | None = None, encodings_path: str | os.PathLike | None = None,
             **overrides) -> tuple[onnx.ModelProto, Report]:
    """Quantize `model` (a path or a ModelProto, never modified) and return the QDQ model and report.

    `overrides` are QuantizeOptions fields (weight_bits=4, calib="noise", ...). When `output` is given
    the model is checked and written atomically; `report_path` writes the report (self-contained HTML
    when it ends in .html, else JSON); `encodings_path` the AIMET/QNN quantization-overrides JSON of
    the emitted encodings.
    """
    opts = _with_overrides(options or QuantizeOptions(), overrides)
    profile = target if isinstance(target, TargetProfile) else load_target(target)
    check_outputs(model, output, report_path, opts.pareto, encodings_path)
    source = ir.load_model(model)
    declared_io.pin_values(source, opts.input_values)          # a bad pin fails before anything is compiled
    if (report := _unchanged(model, source, profile, opts)) is not None:
        _write_outputs(source, output, report, report_path)
        return source, report
    merged = branches.split(source, pinned=opts.input_values)
    detail = report_path is not None
    if merged is not None:
        opts = with_inferred_shapes(model, source, opts)
        out, report = _quantize_branches(model, source, merged, profile, opts, encodings_path, detail)
        _check_on_target(out, profile, model, report)
        _write_outputs(out, output, report, report_path)
        return out, report
    box = [source]
    del source          # the compile drops the proto after Normalize: no other reference may keep it
    out, report, state, extra = _compile(model, box, profile, opts, encodings_path, detail)
    _check_on_target(out, profile, model, report, sample_rows(state))
    curve: list[Path] = []
    try:
        if opts.pareto is not None and state.pareto is not None:
            curve = _write_pareto(opts.pareto, state.pareto, report, profile.name)
        _write_outputs(out, output, report, report_path, extra)
    except BaseException as exc:
        for path in curve:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {exc.filename or opts.pareto}: {exc.strerror or exc}") from None
        raise
    return out, report


def _unchanged(model, source: onnx.ModelProto, profile: TargetProfile,
               opts: QuantizeOptions) -> Report | None:
    """The report of a model with no layer the target quantizes (passes/supported.nothing_to_quantize),
    written as it is; None for any other model. What Normalize refuses is refused here too."""
    from dfq_onnx.passes.supported import check_supported, nothing_to_quantize

    ops = nothing_to_quantize(source, profile)
    if ops is None:
        return None
    check_supported(source)
    report = Report(model={"name": source.graph.name, "producer": source.producer_name,
                           "path": str(model) if not isinstance(model, onnx.ModelProto) else None,
                           "target": profile.name, "options": _options_dict(opts), "params": 0})
    report.notes["unchanged"] = {"ops": ops}
    layers = sorted({op for op, role in profile.ops.items() if role == "weighted"} | set(profile.forms))
    with _warnings_into(report):
        log.warning("nothing to quantize: none of the model's ops (%s) is a layer %s quantizes (%s); "
                    "written unchanged", ", ".join(ops), profile.name, ", ".join(layers))
    return report


def _check_on_target(out, profile: TargetProfile, model, report: Report, feeds=None) -> None:
    """The target runtime's compile of the written model (backends/target_check.py), and its run on
    `feeds` beside ONNX Runtime's: its note and its warnings in the report."""
    with _warnings_into(report):
        note = check_on_target(out, profile, lambda: ir.load_model(model), feeds)
    if note is not None:
        report.notes["target_runtime"] = note


def _compile(model, box: list[onnx.ModelProto], profile: TargetProfile, opts: QuantizeOptions, encodings_path,
             detail: bool) -> tuple[onnx.ModelProto, Report, CompileState, list]:
    """The pipeline on one model (`box` holds it, loaded from `model`; the compile empties the box so that
    the proto is freed after Normalize): the written model, its report (with the FP32 comparison and the
    sensitivity sections when `detail`), the final compile state and the (path, bytes) of the encodings
    file when asked."""
    source = box.pop()
    report = Report()
    pinned = pin_inputs(source, opts.input_values, report)
    opts = with_inferred_shapes(model, source, opts)     # dynamic input sizes the compile can infer
    report.model.update({"name": source.graph.name, "producer": source.producer_name,
                         "path": str(model) if not isinstance(model, onnx.ModelProto) else None,
                         "target": profile.name, "options": _options_dict(opts)})
    state = CompileState(graph=None, target=profile, options=opts, report=report,
                         model_hash=ir.model_hash(source), source=source)
    size = ir.tensor_bytes(source)
    del source          # Normalize imports the weights into the graph and keeps the declarations
    extra = []
    with _warnings_into(report):
        run_passes(default_pipeline(profile, opts), state)
        declared = state.declared
        out = ir.to_model(state.graph, ir_version=max(declared.ir_version,
                                                      ir.min_ir_version(state.graph.opset)))
        declared_io.carry_over(out, declared)
        declared_io.restore_pinned(out, pinned, opts.input_values)
        out.producer_name, out.producer_version = "dfq-onnx", _version()
        if encodings_path is not None:
            from dfq_onnx.backends.encodings import export_encodings, to_json

            enc = export_encodings(state.graph, report, profile.act_symmetric)
            extra.append((encodings_path, to_json(enc).encode()))
        state.graph = None    # the graph's arrays now live in `out`: free them before the checker's copies
        ir.collect_if_large(size)
        ir.check_model(out)
        report.model["params"] = sum(g.params for g in state.groups)
        if detail:
            from dfq_onnx.passes.normalize import declared_form
            from dfq_onnx.report.data import fill

            def source() -> onnx.ModelProto:    # read again: the compile kept no copy of the weights
                proto = ir.load_model(model)
                declared_io.pin_inputs(proto, opts.input_values)
                declared_form(proto)
                return proto
            release()                           # the checker's and the pipeline's freed heap first
            fill(state, source, out)
    return out, report, state, extra


def _quantize_branches(model, source: onnx.ModelProto, merged: branches.FlagSplit, profile: TargetProfile,
                       opts: QuantizeOptions, encodings_path, detail: bool) -> tuple[onnx.ModelProto, Report]:
    """Compile each branch of a flag-merged model as its own model and join them (core/branches.py). The
    report lists every branch's layers, activations and passes (each entry with its `branch`) and holds
    each branch's whole report under `branches` (the HTML report shows one section per branch)."""
    per_model = [name for name, given in (("--calib FILE.npz", opts.calib.endswith(".npz")),
                                          ("--size-mb", opts.size_mb), ("--latency-ms", opts.latency_ms),
                                          ("--pareto", opts.pareto), ("--export-encodings", encodings_path))
                 if given]
    if per_model and merged.computed:
        raise UsageError(f"{per_model[0]}: the model is two networks chosen by the input(s) '{merged.flag}' "
                         "(its branches are compiled one at a time); pin the value the data is for with "
                         "--input-value, which compiles that network alone")
    if per_model:
        raise UsageError(f"{per_model[0]}: the model is two models behind the flag input '{merged.flag}' "
                         "(its branches are compiled one at a time); quantize the two exported files "
                         "(Optimum: decoder_model.onnx and decoder_with_past_model.onnx) with it instead")
    if merged.computed:
        log.warning("the graph is two networks chosen by an If on the input(s) '%s' (silero-vad's sample "
                    "rate): each is compiled as its own model and the written model still chooses by the "
                    "value fed (--input-value compiles one)", merged.flag)
    else:
        log.warning("the graph is two models behind the flag input '%s' (an If on it, as Optimum merges a "
                    "decoder with and without its cache): each branch is compiled as its own model",
                    merged.flag)
    compiled, reports, left = {}, {}, {}
    for name, branch in merged.branches.items():
        branch_opts = branches.branch_options(opts, branch)
        failure = _fails_at(branch, branch_opts.input_shapes) if merged.computed else None
        if failure is not None:
            shapes = " ".join(f"--input-shape {k}:{','.join(map(str, v))}"
                              for k, v in branch_opts.input_shapes.items())
            left[name] = (f"does not run at the compile's input shapes ({shapes or 'declared'}; ONNX "
                          f"Runtime: {failure}): written float; compile it alone with --input-value "
                          f"{merged.flag}:VALUE and the input shapes of the value it serves")
            log.warning("%s: %s", name, left[name])
            compiled[name] = branch
            reports[name] = Report(model={"name": branch.graph.name, "target": profile.name},
                                   notes={"float": left[name]})
            continue
        compiled[name], reports[name], _, _ = _compile(branch, [branch], profile, branch_opts, None, detail)
    out = branches.join(source, compiled)
    out.producer_name, out.producer_version = "dfq-onnx", _version()
    ir.check_model(out)
    report = Report(model={"name": source.graph.name, "producer": source.producer_name,
                           "path": str(model) if not isinstance(model, onnx.ModelProto) else None,
                           "target": profile.name, "options": _options_dict(opts), "flag": merged.flag},
                    branches={name: r.to_dict() for name, r in reports.items()})
    for name, r in reports.items():
        for key in ("passes", "layers", "activations", "groups", "skipped"):
            getattr(report, key).extend({**entry, "branch": name} for entry in getattr(r, key))
        report.warnings += [f"{name}: {w}" for w in r.warnings]
        report.forward_passes += r.forward_passes
        report.notes[name] = r.notes
    report.model["params"] = sum(r.model.get("params", 0) for r in reports.values())
    if left:
        report.notes["float_branches"] = left
        report.warnings += [f"{name}: {why}" for name, why in left.items()]
    return out, report


def _fails_at(model: onnx.ModelProto, shapes: dict) -> str | None:
    """ONNX Runtime's first error line when `model` fails to load or run on zeros of the compile's input
    `shapes` (a dimension neither given nor fixed taken as 1), else None: a network chosen by a scalar
    input may only run at its own input length (silero-vad's 8 kHz network at 288 samples)."""
    import numpy as np

    from dfq_onnx.backends.runtime import session

    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in declared_io.value_info_shape(vi) or []]
        feeds[vi.name] = np.zeros(shapes.get(vi.name, dims), ir.elem_type_name(vi.type.tensor_type.elem_type))
    try:
        session(model, threads=1, quiet=True).run(None, feeds)
    except UnsupportedModelError as exc:
        return str(exc).removeprefix("ONNX Runtime cannot load the model: ")
    except Exception as exc:  # noqa: BLE001 -- any ORT run failure is the answer
        return str(exc).strip().splitlines()[0]
    return None


def pin_inputs(source: onnx.ModelProto, values: dict, report: Report) -> list:
    """`declared_io.pin_inputs` with one warning per pinned input, kept in the report's notes."""
    pinned = declared_io.pin_inputs(source, values)
    for _, vi in pinned:
        log.warning(
            "input '%s' pinned to %s: the written model keeps it (optional, default %s) but computes as if "
            "it were %s whatever is fed; compile once per value you serve", vi.name, values[vi.name],
            values[vi.name], values[vi.name])
    if pinned:
        report.notes["pinned_inputs"] = {vi.name: values[vi.name] for _, vi in pinned}
    return pinned


def _with_overrides(options: QuantizeOptions, overrides: dict) -> QuantizeOptions:
    known = {f.name for f in dataclasses.fields(QuantizeOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown option '{unknown[0]}'; QuantizeOptions fields are "
                         f"{', '.join(sorted(known))}")
    return dataclasses.replace(options, **overrides)


def check_outputs(model, output, report_path, curve=None, encodings=None) -> None:
    """Refuse output paths that would overwrite the input or cannot be written, before any work."""
    src = None if isinstance(model, onnx.ModelProto) else Path(model).resolve()
    paths = [Path(p) for p in (output, report_path, curve, encodings) if p is not None]
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise UsageError(f"{path}: given twice; the output model, the report path, --pareto and "
                             "--export-encodings must differ")
        seen.add(path.resolve())
    for path in paths:
        if src is not None and path.resolve() == src:
            raise UsageError(f"{path}: an output path must differ from the input model (the input is never "
                             "modified)")
        if path.is_dir():
            raise UsageError(f"{path}: is a directory; give a file name")
        parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"{path}: cannot write there ({parent or path.parent} is not a writable "
                             "directory)")


def _write_outputs(out, output, report: Report, report_path, extra=()) -> None:
    """Write the model, the `extra` (path, bytes) files, then the report; if one cannot be written,
    remove what was written."""
    text = None
    if report_path is not None:
        html = Path(report_path).suffix.lower() in (".html", ".htm")
        if html:
            from dfq_onnx.report.html import render

            text = render(json.loads(report.to_json()))
        else:
            text = report.to_json()
    written: list[Path] = []
    try:
        if output is not None:
            written += ir.save_model(out, output, return_all=True)
        for path, data in extra:
            ir.write_bytes_atomic(path, data)
            written.append(Path(path))
        if report_path is not None:
            ir.write_bytes_atomic(report_path, text.encode())
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise OutputError(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _warnings_into(report: Report):
    """Copy dfq_onnx warnings logged while compiling into the report's `warnings` list."""
    handler = _ListHandler(report.warnings)
    logger = logging.getLogger("dfq_onnx")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


def synthesize(model, *, output=None, samples: int = 64, steps: int | None = None, seed: int = 0,
               input_shapes: dict | None = None, cache_dir: str | None = None, use_cache: bool = True,
               progress: bool = True, input_ranges: dict | None = None, input_values: dict | None = None):
    """Synthetic calibration samples for `model` (no data): returns the SynthesisResult; with `output`,
    writes one array per model input (plus `labels` when the objective assigns them) to an .npz."""
    import numpy as np

    from dfq_onnx.passes.fold_bn import FoldBatchNorm
    from dfq_onnx.passes.normalize import Normalize
    from dfq_onnx.passes.synthesize import SynthesisOptions, Synthesize

    opts = QuantizeOptions(input_shapes=dict(input_shapes or {}), input_ranges=dict(input_ranges or {}),
                           input_values=dict(input_values or {}), seed=seed, progress=progress)
    check_outputs(model, output, None)
    source = ir.load_model(model)
    pin_inputs(source, opts.input_values, Report())
    opts = with_inferred_shapes(model, source, opts)
    state = CompileState(graph=None, target=load_target("ort-cpu"), options=opts, report=Report(),
                         model_hash=ir.model_hash(source), source=source)
    extra = {"steps": steps} if steps is not None else {}
    synth = Synthesize(SynthesisOptions(samples=samples, seed=seed, cache_dir=cache_dir, use_cache=use_cache,
                                        progress=progress, input_ranges=dict(opts.input_ranges), **extra))
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


def _write_pareto(path, points: list[dict], report: Report, target: str) -> list[Path]:
    """The curve as JSON and as a PNG beside it (same stem), both written atomically."""
    import json

    from dfq_onnx.allocation.pareto import plot_png

    alloc = report.notes.get("allocation", {})
    chosen = {"avg_weight_bits": alloc.get("avg_weight_bits"), "measured": alloc.get("measured_loss")}
    doc = {"target": target, "model": report.model.get("name"), "points": points, "written_plan": chosen}
    ir.write_bytes_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    title = f"{report.model.get('name') or 'model'} on {target}"
    png = Path(path).with_suffix(".png")
    ir.write_bytes_atomic(png, plot_png(points, chosen, title))
    report.notes.setdefault("allocation", {})["pareto_files"] = [str(path), str(png)]
    return [Path(path), png]


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
