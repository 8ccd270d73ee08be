"""Constant folding of a graph, Ifs with a constant condition flattened into the branch they select.

onnx-graphsurgeon folds; its own If flattening keeps only a multi-output If's first output, so the
flattening here replaces it (Normalize's folds, `rewrites`, branches pinned by `--input-value`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """`graph` with its constant subexpressions folded and unused nodes removed (the result may be a
    new graph object: use the return value).

    An If whose condition folds to a constant is replaced by the branch it selects
    (`flatten_constant_ifs`), then the graph is folded again, until nothing changes: a flattened branch
    can make the conditions of the Ifs it held constant (silero-vad's If on its pinned sample rate around
    an LSTM's shape-conditioned multi-output Ifs). onnx-graphsurgeon's own flattening keeps only the
    first output of a multi-output If, so it is never used."""
    if not any(n.op == "If" for n in graph.nodes):
        return graph.fold_constants(fold_shapes=True, error_ok=True).cleanup()
    for _ in range(32):      # each round flattens at least one If: bounded by the nesting depth
        graph = graph.fold_constants(fold_shapes=True, error_ok=True, flatten_subgraphs=False).cleanup()
        if not flatten_constant_ifs(graph):
            return graph
    return graph


def flatten_constant_ifs(graph: gs.Graph) -> int:
    """Replace each If of `graph` (and of its subgraphs) whose condition is a constant by the nodes of
    the branch it selects; every If output becomes an Identity of the matching branch output (a branch
    may return an outer tensor, a constant or one tensor twice; Normalize drops the Identities). Branch
    tensors whose names are taken elsewhere are renamed `<name>__<If name>`. Returns how many Ifs."""
    flattened = sum(flatten_constant_ifs(sub) for node in graph.nodes for sub in node.subgraphs())
    index = 0
    while index < len(graph.nodes):
        node = graph.nodes[index]
        cond = node.inputs[0] if node.op == "If" and node.inputs else None
        if not isinstance(cond, gs.Constant) or np.asarray(cond.values).size != 1:
            index += 1
            continue
        branch = node.attrs["then_branch" if bool(np.asarray(cond.values).reshape(-1)[0]) else "else_branch"]
        _rename_taken(graph, branch, node.name or node.outputs[0].name)
        outputs = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        glue = [gs.Node("Identity", f"{out.name}__flattened", inputs=[res], outputs=[out])
                for out, res in zip(outputs, branch.outputs)]
        graph.nodes[index:index + 1] = [*branch.nodes, *glue]
        index += len(branch.nodes) + len(glue)
        flattened += 1
    return flattened


def _all_names(graph: gs.Graph, into: dict[str, set[int]]) -> None:
    for t in graph.tensors().values():
        into.setdefault(t.name, set()).add(id(t))
    for sub in (sub for node in graph.nodes for sub in node.subgraphs()):
        _all_names(sub, into)


def _rename_taken(root: gs.Graph, branch: gs.Graph, suffix: str) -> None:
    """Give the branch's own tensors (node outputs, constants) whose names another tensor of `root` or
    of any subgraph also uses a unique name, so the flattened graph stays in SSA form."""
    names: dict[str, set[int]] = {}
    _all_names(root, names)
    own = [t for n in branch.nodes for t in n.outputs]
    own += [t for t in branch.tensors().values() if isinstance(t, gs.Constant)]
    for t in own:
        if names.get(t.name, set()) - {id(t)}:
            new, k = f"{t.name}__{suffix}", 1
            while new in names:
                new, k = f"{t.name}__{suffix}_{k}", k + 1
            names[t.name].discard(id(t))
            names.setdefault(new, set()).add(id(t))
            t.name = new
