"""How many rows (samples) one ONNX Runtime call may take: the chunk size of every forward pass.

Every stage that runs the model over many samples (calibration, synthesis, sensitivity scoring)
splits them into calls of at most `rows_per_chunk` rows, so its memory is one model plus one chunk
of activations whatever the number of samples. A call over r rows holds at its peak r times the
activations alive at the worst point of the graph's topological order:

    live(i)  = sum of bytes per row of the tensors alive at node i: produced at or before it and read
               at or after it; graph inputs from the start, graph outputs and `held` tensors (outputs
               kept to the end of the call) until the end
    per_row  = ARENA * max_i live(i)
    rows     = max(1, budget_bytes // per_row)

Bytes per row of a tensor: its element size times the product of its non-batch dimensions. A tensor
whose shape inference left a non-batch dimension unknown counts as the largest known tensor.
ARENA = 2: ORT's CPU arena grows in powers of two and keeps blocks of freed tensors for reuse; measured
on EfficientNet-Lite0 at 224 x 224 (BENCHMARKS.md, issue 14) the peak RSS grew by 1.3-1.9x the live
estimate per row. Splitting rows into calls never changes a result (rows are independent), so the
budget is a memory knob only.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

DEFAULT_BUDGET = 1 << 29     # bytes of activations per call (512 MiB)
ARENA = 2


def static_batch(graph: gs.Graph) -> int | None:
    """The batch size fixed by the graph: the first input whose axis 0 is a positive int; else 1 when
    every graph output's axis 0 is 1 (an exporter that traced the batch into the graph, e.g. a Reshape
    to [.., 1, ..], declares the inputs' batch dynamic and the outputs' as 1: it only runs one row per
    call); else None."""
    fixed = next((t.shape[0] for t in graph.inputs
                  if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0), None)
    if fixed is not None or not graph.outputs:
        return fixed
    return 1 if all(t.shape and isinstance(t.shape[0], int) and t.shape[0] == 1 for t in graph.outputs) \
        else None


def pad_rows(chunk: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """`chunk` padded to `rows` rows with copies of its last row (a static batch's last call; copies
    change no min / max, and callers drop their outputs)."""
    return {k: np.concatenate([v, np.repeat(v[-1:], rows - len(v), 0)]) if len(v) < rows else v
            for k, v in chunk.items()}


def _itemsize(t: gs.Tensor) -> int:
    try:
        return np.dtype(t.dtype).itemsize if t.dtype is not None else 4
    except TypeError:
        return 4


def _row_elements(t: gs.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Elements per row (batch axis dropped), or None when shape inference left a dimension unknown.
    The batch axis is axis 0, or the one symbolic dimension of a tensor a Transpose moved it in
    (attention heads [3, N, heads, T, d])."""
    if t.name in shapes:
        return int(np.prod(shapes[t.name]))
    if not t.shape:
        return None
    static = [d for d in t.shape if isinstance(d, (int, np.integer)) and d >= 0]
    if len(static) == len(t.shape):
        return int(np.prod(static[1:]))
    return int(np.prod(static)) if len(static) == len(t.shape) - 1 else None


def tensor_row_bytes(graph: gs.Graph, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Bytes per row of every variable tensor of `graph`; unknown shapes count as the largest known."""
    shapes = shapes or {}
    variables = [t for t in graph.tensors().values() if isinstance(t, gs.Variable)]
    known = {t.name: _row_elements(t, shapes) for t in variables}
    largest = max((n for n in known.values() if n is not None), default=1)
    return {t.name: _itemsize(t) * (largest if known[t.name] is None else known[t.name]) for t in variables}


def live_bytes_per_row(graph: gs.Graph, shapes: Mapping[str, tuple[int, ...]] | None = None,
                       held: Iterable[str] = ()) -> int:
    """Peak over the topological order of the bytes per row alive at once (module docstring)."""
    size = tensor_row_bytes(graph, shapes)
    nodes = list(graph.nodes)
    keep = {t.name for t in graph.outputs} | set(held)
    last: dict[str, int] = {t.name: len(nodes) for t in graph.inputs}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            if t.name in size:
                last[t.name] = max(last.get(t.name, i), i)
    for name in keep:
        last[name] = len(nodes)
    live = sum(size.get(t.name, 0) for t in graph.inputs)
    ends = np.zeros(len(nodes) + 1, np.int64)
    peak = live
    for i, node in enumerate(nodes):
        for t in node.outputs:
            if t.name in size:
                live += size[t.name]
                ends[last.get(t.name, i)] += size[t.name]   # an unread output dies where it is written
        peak = max(peak, live)
        live -= int(ends[i])
    return int(peak)


def rows_per_chunk(graph: gs.Graph, shapes: Mapping[str, tuple[int, ...]] | None = None,
                   budget_bytes: int = DEFAULT_BUDGET, held: Iterable[str] = ()) -> int:
    """Rows per ORT call so that one call's activations fit `budget_bytes` (at least one row).

    `shapes`: per-row shapes (batch axis dropped) of inputs whose graph shape is dynamic; `held`:
    tensors the call returns whole (observer outputs), alive until its end."""
    per_row = ARENA * live_bytes_per_row(graph, shapes, held)
    return max(1, int(budget_bytes) // max(per_row, 1))
