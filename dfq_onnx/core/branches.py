"""Two models merged behind a flag, compiled as the two models they are.

Hugging Face Optimum writes a decoder as `decoder_model_merged.onnx`: the whole graph is one If on a
boolean model input (`use_cache_branch`) whose branches are the decoder without its key/value cache and
the decoder with it, both reading the weights from the outer graph (stored once). Quantizable layers
inside control flow are otherwise refused (passes/supported.py); here each branch is a complete model:

    split   the branch graph becomes a standalone model: the outer-scope values it reads become its
            inputs (model inputs, with their declared types) and initializers (the shared weights);
            its outputs are the branch's outputs;
    (the caller compiles each standalone model with the whole pipeline: its own synthesis -- the
     cache branch gets decode-step samples, synth/kv_cache.py --, ranges and decisions)
    join    the compiled graphs go back into the If as its branches (their inputs become outer-scope
            references again); an initializer both compiled branches hold under one name with the same
            bytes (a weight both quantize alike) is stored once in the outer graph, as in the source.

A model qualifies when its graph is exactly one If whose condition is a boolean model input and whose
both branches hold quantizable layers; anything else keeps Normalize's checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import onnx

from dfq_onnx.core import ir
from dfq_onnx.core.options import QuantizeOptions

QUANTIZABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
BRANCHES = ("then_branch", "else_branch")


@dataclass
class FlagSplit:
    """A model split at its flag: the condition input and one standalone model per branch."""

    flag: str
    branches: dict[str, onnx.ModelProto]


def _outer_refs(graph: onnx.GraphProto) -> list[str]:
    """Names `graph` reads from outside itself (through nested subgraphs too), in first-use order."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    refs: list[str] = []
    for node in graph.node:
        reads = list(node.input) + [n for sub in ir.proto_subgraphs(node) for n in _outer_refs(sub)]
        refs += [n for n in reads if n and n not in local and n not in refs]
        local |= set(node.output)
    return refs


def _flag_if(model: onnx.ModelProto) -> onnx.NodeProto | None:
    g = model.graph
    if len(g.node) != 1 or g.node[0].op_type != "If":
        return None
    node = g.node[0]
    flag = next((i for i in g.input if i.name == node.input[0]), None)
    if flag is None or flag.type.tensor_type.elem_type != onnx.TensorProto.BOOL:
        return None
    branches = {a.name: a.g for a in node.attribute if a.name in BRANCHES}
    if len(branches) != 2 or not all({n.op_type for n in b.node} & QUANTIZABLE for b in branches.values()):
        return None
    if [o.name for o in g.output] != list(node.output):
        return None
    return node


def split(model: onnx.ModelProto, pinned=()) -> FlagSplit | None:
    """The standalone branch models of a flag-merged model (module docstring), else None; None too when
    the flag is among the `pinned` inputs (`--input-value`: the compile takes that branch only)."""
    node = _flag_if(model)
    if node is None or node.input[0] in pinned:
        return None
    g = model.graph
    inputs = {i.name: i for i in g.input}
    inits = {t.name: t for t in g.initializer}
    out = {}
    for attr in node.attribute:
        if attr.name not in BRANCHES:
            continue
        refs = _outer_refs(attr.g)
        missing = [n for n in refs if n not in inputs and n not in inits]
        if missing:
            return None         # reads a value the outer graph does not hold as an input or weight
        branch = onnx.ModelProto()
        branch.CopyFrom(model)
        graph = branch.graph
        graph.Clear()
        graph.CopyFrom(attr.g)
        graph.name = f"{g.name or 'model'}:{attr.name}"
        graph.input.extend(inputs[n] for n in inputs if n in refs)
        graph.initializer.extend(inits[n] for n in inits if n in refs)
        for vi, declared in zip(graph.output, g.output):
            if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
                vi.type.CopyFrom(declared.type)
        out[attr.name] = branch
    return FlagSplit(flag=node.input[0], branches=out)


def branch_options(options: QuantizeOptions, branch: onnx.ModelProto) -> QuantizeOptions:
    """`options` with its per-input entries (shapes, ranges, pinned values) kept for `branch`'s inputs."""
    names = {i.name for i in branch.graph.input}
    return dataclasses.replace(options, **{f: {k: v for k, v in getattr(options, f).items() if k in names}
                                           for f in ("input_shapes", "input_ranges", "input_values")})


def join(model: onnx.ModelProto, compiled: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """`model` (flag-merged, never modified) with its If's branches replaced by the `compiled` models'
    graphs; initializers the branches hold alike are stored once in the outer graph (module docstring)."""
    graphs = {k: m.graph for k, m in compiled.items()}
    then, other = (list(graphs[k].initializer) for k in BRANCHES)
    other_bytes = {t.name: t.SerializeToString() for t in other}
    shared = [t for t in then if other_bytes.get(t.name) == t.SerializeToString()]
    names = {t.name for t in shared}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.initializer[:]
    g.initializer.extend(shared)
    del g.value_info[:]
    node = g.node[0]
    for attr in node.attribute:
        if attr.name not in BRANCHES:
            continue
        branch = onnx.GraphProto()
        branch.CopyFrom(graphs[attr.name])
        kept = [t for t in branch.initializer if t.name not in names]
        del branch.initializer[:]
        branch.initializer.extend(kept)
        del branch.input[:]
        attr.g.CopyFrom(branch)
    versions: dict[str, int] = {}
    for m in (model, *compiled.values()):
        for op in m.opset_import:
            versions[op.domain] = max(versions.get(op.domain, 0), op.version)
    del out.opset_import[:]
    for domain, version in sorted(versions.items()):
        out.opset_import.add(domain=domain, version=version)
    out.ir_version = max(m.ir_version for m in (model, *compiled.values()))
    return out
