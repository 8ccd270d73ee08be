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

The same holds for a network chosen by a scalar model input: silero-vad v5 computes `If(sr == 16000)`
and its branches are the 16 kHz and the 8 kHz networks. The nodes computing the condition (a Constant,
an Equal on the input, a Cast) stay in the outer graph, so the joined model selects its branch from the
value fed, as the source does, and no value has to be pinned (`--input-value` still compiles the one
branch its value selects).

A model qualifies when its graph is one If whose outputs are the graph's, whose both branches hold
quantizable layers, and whose condition is a boolean model input or is computed -- by the graph's
only other nodes -- from scalar (rank-0) or boolean model inputs and constants; anything else keeps
Normalize's checks.
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
    """A model split at its flag: the model inputs the condition reads (the flag itself, or the scalars
    it is computed from), whether it is computed, and one standalone model per branch."""

    flag: str
    branches: dict[str, onnx.ModelProto]
    computed: bool = False


def _outer_refs(graph: onnx.GraphProto) -> list[str]:
    """Names `graph` reads from outside itself (through nested subgraphs too), in first-use order."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    refs: list[str] = []
    for node in graph.node:
        reads = list(node.input) + [n for sub in ir.proto_subgraphs(node) for n in _outer_refs(sub)]
        refs += [n for n in reads if n and n not in local and n not in refs]
        local |= set(node.output)
    return refs


def _output_identities(g: onnx.GraphProto, node: onnx.NodeProto) -> set[int] | None:
    """Indices of the Identity nodes renaming the If's outputs to the graph's (silero-vad's export),
    when the graph's outputs are the If's outputs in order, renamed or not; else None."""
    renamed = {n.output[0]: (k, n.input[0]) for k, n in enumerate(g.node)
               if n.op_type == "Identity" and n.input and n.input[0] in node.output}
    names = [renamed.get(o.name, (None, o.name))[1] for o in g.output]
    if names != list(node.output):
        return None
    return {renamed[o.name][0] for o in g.output if o.name in renamed}


def condition_sources(graph: onnx.GraphProto, name: str) -> tuple[set[int], list[str]]:
    """What tensor `name` of `graph` is computed from: (indices of the nodes computing it, the names it
    reads that no node writes and no initializer holds -- model inputs, or outer-scope values -- in the
    order a depth-first walk back from `name` meets them)."""
    producers = {o: k for k, n in enumerate(graph.node) for o in n.output}
    inits = {t.name for t in graph.initializer}
    used, leaves, todo = set(), [], [name]
    while todo:
        t = todo.pop()
        if t in producers:
            k = producers[t]
            if k not in used:
                used.add(k)
                todo.extend(i for i in graph.node[k].input if i)
        elif t not in inits and t not in leaves:
            leaves.append(t)
    return used, leaves


def _condition_inputs(g: onnx.GraphProto, at: int, skip: set[int]) -> list[str] | None:
    """The model inputs the condition of the If at node index `at` is computed from, when the graph's
    other nodes (but the `skip` ones) do that and nothing else, from scalar or boolean inputs and
    constants; else None."""
    inputs = {i.name: i.type.tensor_type for i in g.input}
    used, leaves = condition_sources(g, g.node[at].input[0])
    for name in leaves:
        t = inputs.get(name)
        if t is None or (t.elem_type != onnx.TensorProto.BOOL and (not t.HasField("shape") or t.shape.dim)):
            return None     # a tensor input (its shape, its values): not a choice between models
    others = [n for k, n in enumerate(g.node) if k != at and k not in skip]
    if len(used) != len(others) or any(n.op_type in QUANTIZABLE or ir.proto_subgraphs(n) for n in others):
        return None
    return sorted(leaves) or None


def _flag_if(model: onnx.ModelProto) -> tuple[onnx.NodeProto, list[str]] | None:
    """(the If, the model inputs its condition reads) of a qualifying model (module docstring)."""
    g = model.graph
    ifs = [k for k, n in enumerate(g.node) if n.op_type == "If"]
    if len(ifs) != 1:
        return None
    node = g.node[ifs[0]]
    branches = {a.name: a.g for a in node.attribute if a.name in BRANCHES}
    if len(branches) != 2 or not all({n.op_type for n in b.node} & QUANTIZABLE for b in branches.values()):
        return None
    renames = _output_identities(g, node)
    if renames is None:
        return None
    flag = next((i for i in g.input if i.name == node.input[0]), None)
    if flag is not None:
        bool_flag = flag.type.tensor_type.elem_type == onnx.TensorProto.BOOL
        reads = [flag.name] if bool_flag and len(g.node) == 1 + len(renames) else None
    else:
        reads = _condition_inputs(g, ifs[0], renames)
    return (node, reads) if reads else None


def split(model: onnx.ModelProto, pinned=()) -> FlagSplit | None:
    """The standalone branch models of a flag-merged model (module docstring), else None; None too when
    the flag is among the `pinned` inputs (`--input-value`: the compile takes that branch only)."""
    found = _flag_if(model)
    if found is None or set(found[1]) & set(pinned):
        return None
    node, reads = found
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
    return FlagSplit(flag=", ".join(reads), branches=out, computed=node.input[0] != reads[0])


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
    condition = {i for n in g.node if n.op_type != "If" for i in n.input}   # e.g. Equal(sr, 16000)'s constant
    kept = [t for t in g.initializer if t.name in condition and t.name not in names]
    del g.initializer[:]
    g.initializer.extend(kept + shared)
    del g.value_info[:]
    node = next(n for n in g.node if n.op_type == "If")
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
