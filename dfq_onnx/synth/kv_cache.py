"""Key/value-cache inputs of decoders exported for incremental decoding, and samples the model makes for them.

A decoder exported "with past" takes, beside its token inputs, float inputs past_i [N, heads, P, d] and
returns present_i = Concat(past_i, new_i) along the sequence axis P. Such an input is found from the graph:
a float graph input that reaches, through ops that carry values unchanged (Cast, Identity, a one-input
Concat), a Concat whose output reaches a graph output through such ops. The Concat's axis is the input's
sequence axis.

Samples (`decode_step`). A cache holds what the model computed for the tokens before, so it is made by the
model itself, with no data:

    1. token samples of full length S (no padding), the empty cache (P = 0) for every cache input;
    2. one forward pass over the first S - 1 tokens with the empty cache: its present_i outputs;
    3. the samples: the last token of each sequence (ids / type / position: the last column; the mask: all
       S ones) with present_i as past_i -- one decoding step, as generation runs the model.

A model whose presents need another layout (a Transpose between past and Concat) is not recognised here;
its float input keeps Synthesize's "pass --calib" error.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.backends.chunks import static_batch
from dfq_onnx.core import ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.synth.tokens import TokenLayout

CARRY = ("Cast", "Identity")


def _carries(node: gs.Node) -> bool:
    return node.op in CARRY or (node.op == "Concat" and len(node.inputs) == 1)


def _forward(t: gs.Tensor) -> gs.Tensor:
    """`t` followed through single-reader carrying ops."""
    while len(t.outputs) == 1 and _carries(t.outputs[0]):
        t = t.outputs[0].outputs[0]
    return t


def cache_inputs(graph: gs.Graph) -> dict[str, tuple[str, int]]:
    """Cache input -> (its present output, sequence axis) (module docstring)."""
    outputs = {t.name for t in graph.outputs}
    found = {}
    for t in graph.inputs:
        if not is_float(t) or not t.shape:
            continue
        end = _forward(t)
        for node in end.outputs:
            if node.op != "Concat" or len(node.inputs) < 2:
                continue
            present = _forward(node.outputs[0])
            if present.name in outputs:
                found[t.name] = (present.name, int(node.attrs.get("axis", 0)) % len(t.shape))
    return found


def _empty(t: gs.Tensor, axis: int, rows: int, hints: dict) -> np.ndarray:
    dims = list(hints.get(t.name) or t.shape)
    shape = [rows] + [0 if i == axis else d for i, d in enumerate(dims) if i > 0]
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        example = ",".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in t.shape)
        raise UsageError(f"cache input '{t.name}' has a dynamic dimension besides its batch and sequence "
                         f"axes ({t.shape}); pass --input-shape {t.name}:{example} with the real sizes")
    return np.zeros(shape, np.float32)


def empty_caches(graph: gs.Graph, caches: dict, rows: int,
                 hints: dict | None = None) -> dict[str, np.ndarray]:
    """The empty cache (sequence length 0) of every cache input, `rows` rows."""
    table = {t.name: t for t in graph.inputs}
    return {name: _empty(table[name], axis, rows, hints or {}) for name, (_, axis) in caches.items()}


def decode_step(graph: gs.Graph, layout: TokenLayout, feeds: dict[str, np.ndarray],
                caches: dict) -> tuple[dict[str, np.ndarray], int]:
    """(samples, forward passes): one decoding step after the first S - 1 tokens of `feeds` (full-length
    token samples with empty caches), the caches being the model's own presents (module docstring)."""
    tokens = {t.name: t.role for t in layout.inputs}
    prefix = {k: (v[:, :-1] if k in tokens else v) for k, v in feeds.items()}
    session = runtime.session(ir.to_model(ir.copy_graph(graph)), mem_pattern=False)
    names = [o.name for o in session.get_outputs()]
    static = static_batch(graph)
    rows = len(next(iter(feeds.values())))
    outs = dict(zip(names, runtime.run_batched(session, prefix, static or rows, static=static is not None)))
    step = {k: (v if tokens[k] == "mask" else v[:, -1:]) for k, v in feeds.items() if k in tokens}
    step.update({name: np.ascontiguousarray(outs[present], np.float32)
                 for name, (present, _) in caches.items()})
    return step, 1
