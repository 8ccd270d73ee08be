"""`dfq-onnx profile-target TARGET MODEL -o latency.json`: per-group latency at each legal precision.

The model is prepared as `quantize` prepares it (normalize, fold BN, quantizer groups, analytic
ranges), emitted once per storage class of the target's legal pairs, and every weighted group is cut
out and timed (see `dfq_onnx.backends.latency` for the additive model and its calibration term).
"""

from __future__ import annotations

import dataclasses
import logging
import os

from dfq_onnx.backends.latency import (
    Timer,
    concrete,
    cut_group,
    expand,
    interleaved,
    storage_classes,
    table_json,
)
from dfq_onnx.core import ir
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import BitPlan, CompileState
from dfq_onnx.core.target import TargetProfile, load_target
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups

log = logging.getLogger(__name__)


def _prepared(model, profile: TargetProfile, input_shapes: dict) -> CompileState:
    opts = QuantizeOptions(input_shapes=dict(input_shapes), progress=False)
    source = ir.load_model(model)
    state = CompileState(graph=None, target=profile, options=opts, report=Report(),
                         model_hash=ir.model_hash(source), source=source)
    dtypes = [t for w, a in profile.pairs for t in (profile.weight_dtype(w), profile.act_dtype(a))]
    return run_passes([Normalize(profile.opset_for(dtypes)), FoldBatchNorm(), FindQuantGroups(),
                       AnalyticRanges(), Calibrate()], state)


def _emitted(state: CompileState, plan: dict) -> object:
    st = dataclasses.replace(state, graph=ir.copy_graph(state.graph), report=Report(), plan=BitPlan(plan))
    run_passes([EmitQDQ()], st)
    return st.graph


def profile_target(model: str | os.PathLike, target: str | TargetProfile, *, batch: int = 64,
                   input_shapes: dict | None = None, rounds: int = 5, runs: int = 10, threads: int = 2,
                   output: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Measure the latency table; with `output`, write it atomically as JSON. Returns the table."""
    import json

    from dfq_onnx.api import check_outputs

    profile = target if isinstance(target, TargetProfile) else load_target(target)
    timer = Timer(profile.runtime, threads)
    check_outputs(model, output, None)
    state = _prepared(model, profile, input_shapes or {})
    base = (profile.default_weight_bits, profile.default_act_bits)
    groups = [g for g in state.groups if g.layers]
    ops_of = {g.id: [state.spec.layers[n].op for n in g.layers] for g in groups}
    classes = storage_classes(profile)
    models, full = {}, {"fp32": ir.to_model(ir.copy_graph(concrete(state.graph, batch)))}
    for cls, pair in classes.items():
        plan = {g.id: (pair if pair in profile.pairs_for(ops_of.get(g.id, [])) else base)
                for g in state.groups}
        graph = concrete(_emitted(state, plan), batch)
        full[cls] = ir.to_model(ir.copy_graph(graph), ir_version=ir.min_ir_version(graph.opset))
        for g in groups:
            models[(cls, g.id)] = cut_group(graph, g.ops)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rounds * (len(models) + len(full)), desc="profile-target", unit="run", leave=False)
    measured = interleaved(timer, {**models, **{("full", k): m for k, m in full.items()}}, rounds, runs, bar)
    if bar is not None:
        bar.close()
    by_class = {cls: {g.id: measured[(cls, g.id)] for g in groups} for cls in classes}
    base_cls = (profile.weight_dtype(base[0]), profile.act_dtype(base[1]))
    rows = [{"id": g.id, "ops": ops_of[g.id]} for g in groups]
    table = expand(profile, rows, by_class)
    model_ms = {f"{a}x{b}": measured[("full", cls)] for cls, (a, b) in classes.items()}
    overhead = measured[("full", base_cls)] - sum(by_class[base_cls].values())
    predicted = {f"{a}x{b}": overhead + sum(by_class[cls].values()) for cls, (a, b) in classes.items()}
    out = {"target": profile.name, "runtime": _runtime_version(profile.runtime), "threads": threads,
           "batch": batch, "rounds": rounds, "runs": runs, "model_sha256": state.model_hash,
           "base": f"{base[0]}x{base[1]}", "fp32_ms": measured[("full", "fp32")], "overhead_ms": overhead,
           "model_ms": model_ms, "predicted_model_ms": predicted,
           "groups": {g.id: {"layers": list(g.layers), "ops": ops_of[g.id], "ms": table[g.id]}
                      for g in groups}}
    if output is not None:
        ir.write_bytes_atomic(output, table_json(**out).encode())
    return json.loads(table_json(**out))


def _runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import openvino

    return f"openvino {openvino.__version__}"
