"""Key/value-cache inputs of decoders exported for incremental decoding, and samples the model makes for them.

A decoder exported "with past" takes, beside its token inputs, float inputs past_i [N, heads, P, d] and
returns present_i = Concat(past_i, new_i) along the sequence axis P. Such an input is found from the graph:
a float graph input that reaches, through ops that carry values unchanged (Cast, Identity, a one-input
Concat), a Concat whose output reaches a graph output through such ops. The Concat's axis is the input's
sequence axis.

Samples (`decode_step`). A cache holds what the model computed for the tokens before, so it is made by the
model itself, with no data:

    1. token samples of full length S (no padding), the empty cache (P = 0) for every cache input;
    2. the first S - 1 tokens through the model from the empty cache: in one call, or a call per step of
       the graph's fixed token width (1: a decoder exported for one-token steps), each call's present_i
       the next call's past_i (the mask covers past and new tokens: its first P + w columns);
    3. the samples: the last token of each sequence (ids / type / position: the last column; the mask: all
       S columns) with the last present_i as past_i -- one decoding step, as generation runs the model. A
       causal LM head refines the tokens first (synth/token_lm.py) when the graph takes them in one call.

Contexts. The same model runs the prompt (empty cache, every token attending to the tokens before it: 1
.. S of them) and the steps after it. What a token attends over sets the range of the attention's
output (one token: its own value vector; many: their average), so samples that all attend over S - 1
cached tokens miss the prompt's first positions -- a static encoding calibrated on them clips those.
With a mask input, sample i attends over its last L_i tokens only, L_i spread evenly over 1 .. S (in
a seeded order): the mask is 0 on the first S - L_i columns (left padding, as batched generation pads)
and position ids count from the first unmasked token. Without a mask input every sample attends over S.

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
from dfq_onnx.synth.runner import shape_example
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
        raise UsageError(f"cache input '{t.name}' has a dynamic dimension besides its batch and sequence "
                         f"axes ({t.shape}); pass --input-shape {t.name}:{shape_example(t.shape)} with the "
                         "real sizes")
    return np.zeros(shape, np.float32)


def empty_caches(graph: gs.Graph, caches: dict, rows: int,
                 hints: dict | None = None) -> dict[str, np.ndarray]:
    """The empty cache (sequence length 0) of every cache input, `rows` rows."""
    table = {t.name: t for t in graph.inputs}
    return {name: _empty(table[name], axis, rows, hints or {}) for name, (_, axis) in caches.items()}


def step_width(graph: gs.Graph, layout: TokenLayout) -> int | None:
    """Tokens per call the graph takes: its ids input's static width (1 for a one-token decoding step),
    None when the width is free."""
    ids = next(t for t in graph.inputs if t.name == layout.of("ids").name)
    width = ids.shape[1] if ids.shape and len(ids.shape) == 2 else None
    if isinstance(width, (int, np.integer)) and 1 < width < layout.length and (layout.length - 1) % width:
        raise UsageError(f"input '{ids.name}' takes {width} tokens per call; cache samples are built one "
                         "call at a time and need 1 or any width: pass --calib FILE.npz")
    return int(width) if isinstance(width, (int, np.integer)) and width < layout.length else None


def contexts(feeds: dict[str, np.ndarray], layout: TokenLayout, rng: np.random.Generator) -> dict:
    """`feeds` (full-length token samples) with sample i attending over its last L_i tokens, L_i spread
    evenly over 1 .. S in a seeded order (module docstring: Contexts); unchanged without a mask input."""
    mask = layout.of("mask")
    if mask is None:
        return feeds
    n, s = feeds[mask.name].shape
    spread = 1 + (rng.permutation(n) * (s - 1)) // max(n - 1, 1)
    valid = np.arange(s)[None, :] >= (s - spread)[:, None]
    out = dict(feeds)
    for t in layout.inputs:
        if t.role == "mask":
            out[t.name] = valid.astype(t.dtype)
        elif t.role == "position":
            out[t.name] = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(t.dtype)
    return out


def decode_step(graph: gs.Graph, layout: TokenLayout, feeds: dict[str, np.ndarray],
                caches: dict, width: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """(samples, forward passes): one decoding step after the first S - 1 tokens of `feeds` (full-length
    token samples with empty caches, their contexts set by `contexts`), the caches being the model's own
    presents (module docstring). The S - 1 tokens go in one call, or `width` at a time (a graph taking a
    fixed number of tokens), each call's presents the next one's pasts."""
    roles = {t.name: t.role for t in layout.inputs}
    session = runtime.session(ir.session_model(ir.copy_graph(graph)), mem_pattern=False)
    names = [o.name for o in session.get_outputs()]
    static = static_batch(graph)
    length = feeds[layout.of("ids").name].shape[1]

    def tokens(start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[:, :stop] if roles[k] == "mask" else v[:, start:stop] for k, v in feeds.items()
                if k in roles}

    past = {name: feeds[name] for name in caches}
    step = width or length - 1
    passes = 0
    for start in range(0, length - 1, step):
        outs = runtime.run_all(session, {**tokens(start, start + step), **past}, static)
        past = {name: np.ascontiguousarray(dict(zip(names, outs))[present], np.float32)
                for name, (present, _) in caches.items()}
        passes += 1
    return {**tokens(length - 1, length), **past}, passes
