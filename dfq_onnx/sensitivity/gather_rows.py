"""The rows of each embedding table the scoring samples read, so the probe holds only those.

A form Gather's candidates quantize each row of its table [V, D] on its own (blocks lie within a row),
so on the scoring samples the probe computes the same outputs from the R rows they index as from the
whole table:

    ids ─► Gather(remap [V] int64) ─► Gather(T_k[rows], ·)        remap[rows[j]] = j, 0 elsewhere
                                                                  (both inside each probe branch)

A 30522 x 384 word table with 5 candidates would otherwise put 6 copies of 47 MB in the probe (and
several more in ONNX Runtime's sessions); 16 samples of 128 tokens read at most 2048 rows. The rows come
from one FP32 forward pass with every form Gather's index tensor as an output.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.core.graph_utils import node_label


def used_rows(graph: gs.Graph, spec, samples: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Form Gather layer -> sorted unique row indices its indices reach on `samples` (negative indices
    counted from the end)."""
    nodes = {node_label(n): n for n in graph.nodes}
    gathers = {name: nodes[name] for name, layer in spec.layers.items()
               if layer.form and layer.op == "Gather"}
    if not gathers:
        return {}
    index_of = {name: node.inputs[1].name for name, node in gathers.items()}
    names = list(dict.fromkeys(index_of.values()))
    inputs = {t.name for t in graph.inputs}
    observed = [n for n in names if n not in inputs]
    found: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for n in names:
        if n in inputs:
            found[n].append(np.unique(samples[n]))
    if observed:
        sess = runtime.session(runtime.observer_model(graph, observed), mem_pattern=False)
        for chunk in runtime.iter_batches(samples, batch):
            for n, arr in zip(observed, sess.run(None, chunk)):
                found[n].append(np.unique(arr))
    out = {}
    for name, node in gathers.items():
        rows = node.inputs[0].shape[0]
        idx = np.concatenate(found[index_of[name]]).astype(np.int64)
        out[name] = np.unique(np.where(idx < 0, idx + rows, idx))
    return out


def remap_table(rows_total: int, rows: np.ndarray) -> np.ndarray:
    """remap [V] int64: remap[rows[j]] = j, 0 for rows the samples never read."""
    table = np.zeros(rows_total, np.int64)
    table[rows] = np.arange(len(rows))
    return table


def remap_nodes(idx: gs.Tensor, table: np.ndarray, tag: str) -> tuple[list[gs.Node], gs.Tensor]:
    """([Gather(table, idx)], the remapped indices): run inside a probe branch, before its Gather."""
    out = gs.Variable(f"{tag}_rows", dtype=np.int64)
    return [gs.Node("Gather", name=f"{tag}_remap", inputs=[gs.Constant(f"{tag}_remap_table", table), idx],
                    outputs=[out])], out
