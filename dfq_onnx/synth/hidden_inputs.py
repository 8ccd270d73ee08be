"""Float inputs of a token model that carry another model's hidden states, and samples for them.

A decoder of an encoder-decoder pair (Whisper, T5, BART, Marian exports) takes, beside its token inputs,
the encoder's output states [N, S_enc, D]: a float input of rank 3 whose last dimension is static and
whose readers are MatMuls (the cross-attention key / value projections), directly or through ops that
carry values (Cast, Identity, Reshape, Transpose, LayerNormalization's input).

The encoder is not in the graph, so nothing in it says what those states look like. The prior is the
convention every such encoder ends with: a final LayerNormalization (or RMS norm), so per position the
D values have mean ~0 and spread ~1 -- samples are i.i.d. N(0, 1), seeded. S_enc is the input's static
dimension, else `--input-shape NAME:N,S,D`, else the token samples' length. The report says which inputs
were sampled this way; `--calib FILE.npz` with real encoder outputs replaces the guess.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.graph_utils import is_float, walk

CARRY = ("Cast", "Identity", "Reshape", "Transpose", "Unsqueeze", "Squeeze")


def _read_by_matmul(t: gs.Tensor) -> bool:
    def carries(node: gs.Node, _cur: gs.Tensor) -> bool:
        return node.op in CARRY
    return any(node.op in ("MatMul", "Gemm", "LayerNormalization") and node.inputs[0] is cur
               for node, cur in walk(t, carries))


def hidden_inputs(graph: gs.Graph, skip: set[str]) -> list[str]:
    """The float inputs (not in `skip`) that carry hidden states [N, S, D] (module docstring)."""
    return [t.name for t in graph.inputs
            if t.name not in skip and is_float(t) and t.shape is not None and len(t.shape) == 3
            and isinstance(t.shape[2], (int, np.integer)) and t.shape[2] > 0 and _read_by_matmul(t)]


def sample_hidden(graph: gs.Graph, names: list[str], n: int, length: int, rng: np.random.Generator,
                  hints: dict | None = None) -> dict[str, np.ndarray]:
    """N(0, 1) states [n, S_enc, D] for each input of `names` (module docstring)."""
    table = {t.name: t for t in graph.inputs}
    out = {}
    for name in names:
        dims = list((hints or {}).get(name) or table[name].shape)
        seq = dims[1] if isinstance(dims[1], (int, np.integer)) and dims[1] > 0 else length
        out[name] = rng.standard_normal((n, int(seq), int(dims[2]))).astype(np.float32)
    return out
