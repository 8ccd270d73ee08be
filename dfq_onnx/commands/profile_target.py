"""`dfq-onnx profile-target TARGET MODEL -o latency.json`: per-group latency at each legal precision.

The model is prepared as `quantize` prepares it (normalize, fold BN, quantizer groups, analytic
ranges), emitted once per storage class of the target's legal pairs, and every weighted group is cut
out and timed (see `dfq_onnx.backends.latency` for the additive model and its calibration term).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from dfq_onnx.backends import form_latency
from dfq_onnx.backends.forms import group_forms
from dfq_onnx.backends.latency import (
    Timer,
    concrete,
    cut_group,
    expand,
    interleaved,
    random_feeds,
    storage_classes,
    table_json,
)
from dfq_onnx.core import candidates, ir
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan, CompileState
from dfq_onnx.core.target import TargetProfile, load_target
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import emitted_graph
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.synth.tokens import has_token_inputs, is_int, token_layout

log = logging.getLogger(__name__)


def _prepared(model, profile: TargetProfile, input_shapes: dict) -> CompileState:
    opts = QuantizeOptions(input_shapes=dict(input_shapes), progress=False)
    source = ir.load_model(model)
    state = CompileState(graph=None, target=profile, options=opts, report=Report(),
                         model_hash=ir.model_hash(source), source=source)
    dtypes = [t for w, a in profile.pairs for t in (profile.weight_dtype(w), profile.act_dtype(a))]
    return run_passes([Normalize(profile.opset_for(dtypes)), FoldBatchNorm(), FindQuantGroups(),
                       AnalyticRanges(), Calibrate()], state)


def _token_hints(model, input_shapes: dict, batch: int) -> dict:
    """--input-shape hints, plus [batch, S] for token inputs the graph leaves dynamic (S: the sequence
    length token synthesis uses, synth/tokens.py)."""
    graph = ir.to_graph(ir.load_model(model))
    hints = dict(input_shapes)
    if not has_token_inputs(graph):
        return hints
    layout = token_layout(graph, hints)
    for t in graph.inputs:
        if is_int(t) and t.name not in hints and t.shape and len(t.shape) == 2:
            hints[t.name] = (batch, layout.length)
    return hints


def _form_shapes(state: CompileState, batch: int, layers: list[str]) -> dict[str, tuple]:
    """Form layer -> (op, weight shape, rows M), M read from one FP32 run at the profiled shape."""
    from dfq_onnx.backends.runtime import session

    if not layers:
        return {}
    nodes = {n.name: n for n in state.graph.nodes}
    specs = {x: state.spec.layers[x] for x in layers}
    watch = {x: nodes[x].inputs[1 if s.op == "Gather" else 0].name for x, s in specs.items()}
    names = list(dict.fromkeys(watch.values()))
    g = concrete(state.graph, batch)
    tensors = g.tensors()
    g.outputs = [tensors[n] for n in names]
    g.cleanup()
    model = ir.to_model(g, ir_version=ir.min_ir_version(g.opset))
    outs = dict(zip(names, session(ir.serialize(model), threads=1).run(names, random_feeds(model))))
    out = {}
    for x, s in specs.items():
        shape = outs[watch[x]].shape
        rows = int(np.prod(shape if s.op == "Gather" else shape[:-1]))
        out[x] = (s.op, tuple(int(d) for d in nodes[x].inputs[s.weight_index].shape), rows)
    return out


def _models(state: CompileState, profile: TargetProfile, batch: int, forms: dict, static) -> tuple:
    """(static cuts, whole models, form models + the layer shapes they stand for)."""
    base = (profile.default_weight_bits, profile.default_act_bits)
    ops_of = {g.id: [state.spec.layers[n].op for n in g.layers] for g in state.groups}
    classes = storage_classes(profile) if static else {
        (profile.weight_dtype(base[0]), profile.act_dtype(base[1])): base}
    cuts, full = {}, {"fp32": ir.to_model(ir.copy_graph(concrete(state.graph, batch)))}
    for cls, pair in classes.items():
        plan = {g.id: forms[g.id][1] if g.id in forms else
                (pair if pair in profile.pairs_for(ops_of.get(g.id, [])) else base) for g in state.groups}
        graph = concrete(emitted_graph(state, BitPlan(plan)), batch)
        full[cls] = ir.to_model(ir.copy_graph(graph), ir_version=ir.min_ir_version(graph.opset))
        for g in static:
            cuts[(cls, g.id)] = cut_group(graph, g.ops)
    layers = {g: list(next(x for x in state.groups if x.id == g).layers) for g in forms}
    shapes = _form_shapes(state, batch, [x for ls in layers.values() for x in ls])
    cands = {x: forms[g][0] for g, ls in layers.items() for x in ls}
    return classes, cuts, full, (layers, shapes, cands, form_latency.shape_models(shapes, cands,
                                                                                     profile.form_settings))


def profile_target(model: str | os.PathLike, target: str | TargetProfile, *, batch: int = 64,
                   input_shapes: dict | None = None, rounds: int = 5, runs: int = 10, threads: int = 2,
                   output: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Measure the latency table; with `output`, write it atomically as JSON. Returns the table."""
    import json

    from dfq_onnx.api import check_outputs

    profile = target if isinstance(target, TargetProfile) else load_target(target)
    timer = Timer(profile.runtime, threads)
    check_outputs(model, output, None)
    state = _prepared(model, profile, _token_hints(model, input_shapes or {}, batch))
    base = (profile.default_weight_bits, profile.default_act_bits)
    bits = {c[0] for op in profile.forms for c in profile.forms_for(op)}
    forms = group_forms(state.graph, state.spec, state.groups, profile, bits, base[0])
    static = [g for g in state.groups if g.layers and g.id not in forms]
    classes, cuts, full, (layers, shapes, cands, micro) = _models(state, profile, batch, forms, static)
    models = {**cuts, **{("full", k): m for k, m in full.items()},
              **{("form", k): m for k, m in micro.items()}}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rounds * len(models), desc="profile-target", unit="run", leave=False)
    measured = interleaved(timer, models, rounds, runs, bar)
    if bar is not None:
        bar.close()
    by_class = {cls: {g.id: measured[(cls, g.id)] for g in static} for cls in classes}
    ops_of = {g.id: [state.spec.layers[n].op for n in g.layers] for g in state.groups}
    table = expand(profile, [{"id": g.id, "ops": ops_of[g.id]} for g in static], by_class)
    form_ms = form_latency.group_ms(layers, shapes, cands, {k[1]: v for k, v in measured.items()
                                                            if k[0] == "form"})
    base_cls = (profile.weight_dtype(base[0]), profile.act_dtype(base[1]))
    at_base = sum(by_class[base_cls].values()) + sum(form_ms[g][candidates.name(forms[g][1])] for g in forms)
    overhead = measured[("full", base_cls)] - at_base
    model_ms = {f"{a}x{b}": measured[("full", cls)] for cls, (a, b) in classes.items()}
    fixed = overhead + at_base - sum(by_class[base_cls].values())     # everything but the static groups
    predicted = {f"{a}x{b}": fixed + sum(by_class[cls].values()) for cls, (a, b) in classes.items()}
    rows = {**{g.id: {"layers": list(g.layers), "ops": ops_of[g.id], "ms": table[g.id]} for g in static},
            **{g: {"layers": layers[g], "ops": ops_of[g], "ms": form_ms[g],
                   "shapes": [list(shapes[x][1]) + [shapes[x][2]] for x in layers[g]]} for g in forms}}
    out = {"target": profile.name, "runtime": _runtime_version(profile.runtime), "threads": threads,
           "batch": batch, "rounds": rounds, "runs": runs, "model_sha256": state.model_hash,
           "base": f"{base[0]}x{base[1]}", "fp32_ms": measured[("full", "fp32")], "overhead_ms": overhead,
           "model_ms": model_ms, "predicted_model_ms": predicted, "groups": rows}
    if output is not None:
        ir.write_bytes_atomic(output, table_json(**out).encode())
    return json.loads(table_json(**out))


def _runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import openvino

    return f"openvino {openvino.__version__}"
