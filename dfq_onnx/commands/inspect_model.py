"""`dfq-onnx inspect`: what the compiler sees in a model, without quantizing it."""

from __future__ import annotations

from collections import Counter

import onnx

from dfq_onnx.backends import recurrent
from dfq_onnx.core import branches, declared_io, ir
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.target import TargetProfile
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.quant_groups import FindQuantGroups


def inspect(path, target: TargetProfile, options: QuantizeOptions) -> dict:
    """Opset, op counts, BN count, quantizable groups and the ops the target leaves in float; for a
    model merged behind a flag input (core/branches.py), each branch's, under `branches`."""
    source = ir.load_model(path)
    declared_io.pin_values(source, options.input_values)       # a bad pin is an error before any split
    merged = branches.split(source, pinned=options.input_values)
    if merged is not None:
        return {"model": str(path), "flag": merged.flag, "computed": merged.computed,
                "branches": {name: inspect(m, target, branches.branch_options(options, m))
                             for name, m in merged.branches.items()}}
    ops_in = Counter(n.op_type for n in source.graph.node)
    declared_io.pin_inputs(source, options.input_values)   # --input-value: the branch a pinned scalar selects
    state = CompileState(graph=None, target=target, options=options, report=Report(), source=source,
                         model_hash=ir.model_hash(source))
    run_passes([Normalize(target.min_opset), FoldBatchNorm(), FindQuantGroups()], state)
    graph = state.graph
    quantized_ops = {layer.op for layer in state.spec.layers.values()}
    rnn = {node_label(n): recurrent.unsupported(n) for n in recurrent.recurrent_nodes(graph, target)}
    float_ops = Counter(n.op for n in graph.nodes if n.op not in quantized_ops and target.role(n.op) is None
                        and rnn.get(node_label(n), "float") is not None)
    return {
        "model": path.graph.name if isinstance(path, onnx.ModelProto) else str(path),
        "opset": state.source_opset, "ir_version": source.ir_version,
        "producer": f"{source.producer_name} {source.producer_version}".strip(),
        "inputs": {t.name: [d if isinstance(d, int) else str(d) for d in (t.shape or [])]
                   for t in graph.inputs},
        "outputs": [t.name for t in graph.outputs], "nodes": len(source.graph.node),
        "op_counts": dict(sorted(ops_in.items())), "batchnorm": ops_in.get("BatchNormalization", 0),
        "bn_foldable": len(state.bn_stats),
        "quantized_nodes": len(state.spec.layers), "activation_quantizers": len(state.spec.act_tensors),
        "groups": [{"id": g.id, "layers": list(g.layers), "ops": list(g.ops), "params": g.params}
                   for g in state.groups],
        "float_ops": dict(sorted(float_ops.items())),
        "recurrent": {k: why or "integer form or float: scored at the output when compiling"
                      for k, why in rnn.items()},
        "skipped": state.report.skipped,
    }
