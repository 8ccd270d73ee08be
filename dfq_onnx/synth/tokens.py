"""Token inputs of language models: found from the graph, and token sequences sampled with no data.

Detection (`token_layout`). Every integer graph input is followed through ops that carry index values
unchanged (Cast, Unsqueeze, Squeeze, Reshape, Flatten, Expand, Identity) to the Gathers that use it as
the indices of a constant float table [V, D]:

    input_ids      ─► Gather(table [V, D])              "ids": the largest table, vocabulary V
    token_type_ids ─► Gather(table [T, D]), T < S       "type": segment ids 0 .. T-1
    position_ids   ─► Gather(table [P, D]), P >= S      "position": 0 .. S-1 (also through an Add of a
                                                          constant offset: OPT's table starts at row 2)
    attention_mask ─► Unsqueeze / Cast / Sub / Mul ...  "mask": no Gather; 1 on real tokens, 0 on padding
                                                          (a boolean input too: True on real tokens)
    position_ids   ─► Cast ─ MatMul(inv_freq) ─ Cos/Sin  "position" too: rotary positions (Llama-family),
                                                          no table; an input reaching a Cos or Sin (not
                                                          through a CumSum: positions computed from a mask)

An embedding written as a one-hot product (TF / JAX exports: OneHot(ids, V), or Equal(ids, 0 .. V-1),
then Cast to float and MatMul with a constant [V, D]) is the same lookup: that MatMul's weight is the
table.

A lookup that first wraps negative ids, ``where(ids < 0, ids + V, ids)`` (Keras 3's Embedding through
tf2onnx), selects between index-carrying tensors: the walk goes on through a Where's value inputs, and
through the arithmetic form of the same select -- a Mul by a Cast of a boolean (a 0/1 mask), and the Add
of two such products (`_selects`). A step decoder that reads the whole prefix [N, T] but embeds only its
last token picks it first (Gather(prefix, -1, axis=1), a Slice): a Gather / Slice whose data input is the
walked tensor and whose other inputs are constants passes ids on too (`_picks`).

A name containing "type"/"segment" or "pos" decides between "type" and "position" first. The sequence
length S is the inputs' static dimension (above 1: a width of 1 is a decoder's one-token step,
synth/kv_cache.py), else `--input-shape NAME:N,S`, else min(128, P) with P the
rows of a position table the graph holds (the longest sequence the model was built for), else 128.

Vocabulary prior (`vocab_prior`). Rows of the word table that training never updated (reserved
"unused" tokens) keep their initialisation and sit in a tight cluster near the table's mean, so
r_i = log ||E_i - mean(E)|| is bimodal. Otsu's threshold splits r in two; the low mode is left out of
the prior when the split is clear (class means more than SEPARATION pooled standard deviations apart)
and the low mode holds less than half of the rows; otherwise every row is kept. The pad id is the first
all-zero row (PyTorch's `padding_idx` rows stay zero), else 0.

Samples (`sample_tokens`): per sample a length L ~ U{2, .., S}; the mask is 1 on the first L positions
(every sample has length S when the model has no mask input), ids are drawn from the prior there and
are the pad id after; type ids are 0, and 1 after a random split point for every other sample when the
type table has two or more rows; position ids 0 .. S-1. All draws come from one seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import const_values, is_bool, is_const, is_float, walk
from dfq_onnx.core.unbatched import RNN
from dfq_onnx.synth.preprocess import is_pixel_input

CARRY = ("Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Identity")
DEFAULT_LENGTH = 128
SEPARATION = 4.0
ROLES = ("ids", "type", "position", "mask")


@dataclass(frozen=True)
class TokenInput:
    name: str
    role: str                 # "ids" | "type" | "position" | "mask"
    rows: int                 # rows of the table it indexes (0 for a mask)
    dtype: np.dtype


@dataclass(frozen=True)
class TokenLayout:
    inputs: tuple[TokenInput, ...]
    length: int               # sequence length S
    table: str | None         # the word table (of the "ids" input)

    def of(self, role: str) -> TokenInput | None:
        return next((t for t in self.inputs if t.role == role), None)


def is_int(t: gs.Tensor) -> bool:
    try:
        return t.dtype is not None and np.issubdtype(np.dtype(t.dtype), np.integer)
    except TypeError:
        return False


def has_token_inputs(graph: gs.Graph) -> bool:
    """Some graph input is integer and not image pixels (read only through a Cast to float)."""
    return any(is_int(t) and not is_pixel_input(t) for t in graph.inputs)


# com.microsoft EmbedLayerNormalization (ORT's transformer optimizer): ids input -> its table input
FUSED_LOOKUPS = {0: 2, 1: 4}            # input_ids -> word_embedding, segment_ids -> segment_embedding
FUSED_POSITION = 3                      # position_embedding [P, D]


def _is_table(t: gs.Tensor) -> bool:
    return is_const(t) and is_float(t) and const_values(t).ndim == 2


def lookup_table(node: gs.Node, cur: gs.Tensor) -> gs.Tensor | None:
    """The constant [V, D] table `node` looks the indices `cur` up in: a Gather on axis 0, or the word /
    segment table of a com.microsoft EmbedLayerNormalization; None otherwise."""
    if node.op == "Gather" and len(node.inputs) > 1 and node.inputs[1] is cur \
            and node.attrs.get("axis", 0) == 0 and _is_table(node.inputs[0]):
        return node.inputs[0]
    if node.op == "EmbedLayerNormalization" and node.domain == "com.microsoft":
        for ids, table in FUSED_LOOKUPS.items():
            if len(node.inputs) > table and node.inputs[ids] is cur and _is_table(node.inputs[table]):
                return node.inputs[table]
    return None


def _tables(t: gs.Tensor) -> list[gs.Constant]:
    """Constant float tables of the lookups reading `t` as indices (through index-carrying ops)."""
    def carries(node: gs.Node, cur: gs.Tensor) -> bool:
        return lookup_table(node, cur) is None and (
            node.op in CARRY and bool(node.inputs) and node.inputs[0] is cur or _offset(node, cur)
            or _selects(node, cur) or _picks(node, cur))
    found = []
    for node, cur in walk(t, carries):
        if (table := lookup_table(node, cur)) is not None:
            found.append(table)
        elif rows := _one_hot_rows(node, cur):
            found += _one_hot_tables(node, rows)
    return found


def _offset(node: gs.Node, cur: gs.Tensor) -> bool:
    """An Add (or a Sub from `cur`) of a constant integer scalar: ids shifted by an offset (OPT's position
    table starts at row 2) are still a lookup's indices."""
    if node.op not in ("Add", "Sub") or len(node.inputs) != 2 or cur not in node.inputs:
        return False
    other = node.inputs[1] if node.inputs[0] is cur else node.inputs[0]
    if node.op == "Sub" and node.inputs[0] is not cur:
        return False
    return is_const(other) and not is_float(other) and const_values(other).size == 1


def _picks(node: gs.Node, cur: gs.Tensor) -> bool:
    """A Gather or Slice of `cur` at constant positions: some of the ids, still ids (a step decoder's last
    token of its prefix)."""
    return node.op in ("Gather", "Slice") and len(node.inputs) > 1 and node.inputs[0] is cur \
        and all(is_const(t) for t in node.inputs[1:] if t.name)


BOOLEAN_OPS = ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor")


def _boolean(t: gs.Tensor) -> bool:
    """A boolean tensor: of that type, or written by a comparison / logical op."""
    return is_bool(t) or (len(t.inputs) == 1 and t.inputs[0].op in BOOLEAN_OPS)


def _bool_mask(t: gs.Tensor) -> bool:
    """`t` is a Cast of a boolean tensor: 0 / 1 values."""
    producer = t.inputs[0] if len(t.inputs) == 1 else None
    return producer is not None and producer.op == "Cast" and bool(producer.inputs) \
        and _boolean(producer.inputs[0])


def _masked(t: gs.Tensor) -> bool:
    """`t` is a Mul of something by a 0/1 mask (one term of a select written as arithmetic)."""
    producer = t.inputs[0] if len(t.inputs) == 1 else None
    return producer is not None and producer.op == "Mul" and len(producer.inputs) == 2 \
        and any(_bool_mask(x) for x in producer.inputs)


def _selects(node: gs.Node, cur: gs.Tensor) -> bool:
    """`node` passes `cur` on as selected index values: a Where's value input, a Mul by a 0/1 mask, or the
    Add of two masked terms (a select written as arithmetic: m * a + (1 - m) * b)."""
    if node.op == "Where":
        return any(x is cur for x in node.inputs[1:])
    if len(node.inputs) != 2 or not any(x is cur for x in node.inputs):
        return False
    other = node.inputs[1] if node.inputs[0] is cur else node.inputs[0]
    if node.op == "Mul":
        return _bool_mask(other)
    return node.op == "Add" and _masked(cur) and _masked(other)


def _one_hot_rows(node: gs.Node, cur: gs.Tensor) -> int:
    """V when `node` turns the ids `cur` into a one-hot [.., V] (OneHot with a constant depth, or Equal
    against the constant 0 .. V-1 on its last axis), else 0."""
    if node.op == "OneHot" and node.inputs[0] is cur and is_const(node.inputs[1]):
        return int(const_values(node.inputs[1]).reshape(-1)[0])
    if node.op != "Equal" or len(node.inputs) != 2 or not any(x is cur for x in node.inputs):
        return 0
    other = node.inputs[1] if node.inputs[0] is cur else node.inputs[0]
    values = const_values(other) if is_const(other) else np.zeros(0)
    if values.size < 2 or values.shape[-1] != values.size or not np.array_equal(values.reshape(-1),
                                                                                 np.arange(values.size)):
        return 0
    return int(values.size)


def _one_hot_tables(node: gs.Node, rows: int) -> list[gs.Constant]:
    """The constant float [rows, D] weights of the MatMuls reading `node`'s one-hot (through Cast etc.)."""
    def table(n: gs.Node, cur: gs.Tensor) -> bool:
        return (n.op == "MatMul" and n.inputs[0] is cur and is_const(n.inputs[1]) and is_float(n.inputs[1])
                and const_values(n.inputs[1]).shape[:1] == (rows,) and const_values(n.inputs[1]).ndim == 2)

    def carries(n: gs.Node, cur: gs.Tensor) -> bool:
        return n.op in CARRY and bool(n.inputs) and n.inputs[0] is cur
    return [n.inputs[1] for n, cur in walk(node.outputs[0], carries) if table(n, cur)]


def _length(graph: gs.Graph, ints: list[gs.Tensor], hints: dict, position_rows: int) -> int:
    for t in ints:
        dims = list(hints.get(t.name) or t.shape or [])
        if len(dims) >= 2 and isinstance(dims[1], (int, np.integer)) and dims[1] > 1:   # 1: a decoding step
            return int(dims[1])
    return min(DEFAULT_LENGTH, position_rows) if position_rows else DEFAULT_LENGTH


def _role(name: str, rows: int, largest: int, length: int) -> str:
    low = name.lower()
    if rows == largest:
        return "ids"
    if "type" in low or "segment" in low:
        return "type"
    if "pos" in low:
        return "position"
    return "position" if rows >= length else "type"


def _rotary(t: gs.Tensor) -> bool:
    """Whether the table-less integer input `t` feeds rotary embeddings (a Cos / Sin computed from it,
    not through a CumSum)."""
    return any(node.op in ("Cos", "Sin") for node, _ in walk(t, lambda node, _: node.op != "CumSum"))


def _sequence_lens_of(t: gs.Tensor) -> gs.Node | None:
    """The LSTM / GRU / RNN reading `t` (through Cast / Identity) as sequence_lens (input 4), else None."""
    for node, cur in walk(t, lambda node, _: node.op in ("Cast", "Identity")):
        if node.op in RNN and len(node.inputs) > 4 and node.inputs[4] is cur:
            return node
    return None


def token_layout(graph: gs.Graph, hints: dict | None = None) -> TokenLayout:
    """The roles of the graph's integer inputs (module docstring); raises when no ids input is found."""
    hints = hints or {}
    ints = [t for t in graph.inputs if is_int(t) or is_bool(t)]      # a boolean input can only be a mask
    for t in ints:
        rnn = _sequence_lens_of(t)
        if rnn is not None:
            raise UsageError(f"input '{t.name}' is the sequence_lens of {rnn.op} '{rnn.name}': synthetic "
                             "samples carry no sequence lengths; pass --calib FILE.npz with the lengths your "
                             f"code feeds (one row per sample, beside the other inputs)")
        if t.shape is not None and len(t.shape) != 2:
            raise UsageError(f"input '{t.name}' is an integer tensor of rank {len(t.shape)}; token inputs "
                             "are [batch, sequence]: pass --calib FILE.npz")
    tables = {t.name: _tables(t) for t in ints}
    rows = {k: max((const_values(c).shape[0] for c in v), default=0) for k, v in tables.items()}
    largest = max(rows.values(), default=0)
    if not largest:
        first = next((t for t in ints if is_int(t)), ints[0])
        raise UsageError(f"input '{first.name}' is {first.dtype} and reaches no embedding table "
                         "(Gather on a constant [V, D], or EmbedLayerNormalization); pass --calib FILE.npz")
    position_rows = max((r for k, r in rows.items() if r and r != largest and "type" not in k.lower()),
                        default=0)
    internal = [c for n in graph.nodes if n.op == "Gather" and _is_table(n.inputs[0]) for c in n.inputs[:1]]
    internal += [n.inputs[FUSED_POSITION] for n in graph.nodes if n.op == "EmbedLayerNormalization"
                 and len(n.inputs) > FUSED_POSITION and _is_table(n.inputs[FUSED_POSITION])]
    position_rows = position_rows or max((const_values(c).shape[0] for c in internal
                                          if const_values(c).shape[0] < largest), default=0)
    length = _length(graph, ints, hints, position_rows)
    def role(t: gs.Tensor) -> str:
        if rows[t.name]:
            return _role(t.name, rows[t.name], largest, length)
        return "position" if _rotary(t) else "mask"
    found = tuple(TokenInput(t.name, role(t), rows[t.name], np.dtype(t.dtype)) for t in ints)
    ids = next(t for t in found if t.role == "ids")
    table = max(tables[ids.name], key=lambda c: const_values(c).shape[0]).name
    return TokenLayout(found, length, table)


def _otsu(r: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """(threshold, separation): Otsu's split of r and the distance of the class means in pooled std."""
    hist, edges = np.histogram(r, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    k = int(np.argmax(w0 * w1 * (m0 - m1) ** 2))
    thr = edges[k + 1]
    lo, hi = r[r < thr], r[r >= thr]
    if len(lo) < 2 or len(hi) < 2:
        return thr, 0.0
    pooled = np.sqrt((lo.var() * len(lo) + hi.var() * len(hi)) / len(r))
    return thr, float((hi.mean() - lo.mean()) / max(pooled, 1e-12))


def vocab_prior(table: np.ndarray) -> tuple[np.ndarray, int]:
    """(ids the samples draw from, pad id) for a word table [V, D] (module docstring)."""
    e = np.asarray(table, np.float64)
    norms = np.linalg.norm(e, axis=1)
    zero = np.flatnonzero(norms == 0)
    pad = int(zero[0]) if len(zero) else 0
    r = np.log(np.maximum(np.linalg.norm(e - e.mean(axis=0), axis=1), 1e-12))
    thr, separation = _otsu(r)
    keep = r >= thr
    if separation <= SEPARATION or keep.sum() <= len(r) / 2:
        keep = np.ones(len(r), bool)
    keep[zero] = False
    ids = np.flatnonzero(keep)
    return (ids if len(ids) else np.arange(len(r))), pad


def sample_tokens(layout: TokenLayout, prior: np.ndarray, pad: int, n: int,
                  rng: np.random.Generator, full: bool = False) -> dict[str, np.ndarray]:
    """`n` token samples for every integer input of `layout` (module docstring); `full`: every sample
    of length S (no padding)."""
    s = layout.length
    has_mask = layout.of("mask") is not None
    lengths = rng.integers(2, s + 1, n) if has_mask and s > 2 and not full else np.full(n, s)
    valid = np.arange(s)[None, :] < lengths[:, None]
    ids = np.where(valid, prior[rng.integers(0, len(prior), (n, s))], pad)
    splits = rng.integers(1, np.maximum(lengths, 2))
    second = (np.arange(n) % 2 == 1)[:, None] & (np.arange(s)[None, :] >= splits[:, None]) & valid
    out = {}
    for t in layout.inputs:
        if t.role == "ids":
            value = ids
        elif t.role == "mask":
            value = valid
        elif t.role == "type":
            value = second if t.rows >= 2 else np.zeros((n, s))
        else:
            value = np.broadcast_to(np.arange(s), (n, s))
        out[t.name] = np.ascontiguousarray(value, dtype=t.dtype)
    return out


def random_tokens(graph: gs.Graph, n: int, seed: int, hints: dict | None = None) -> dict[str, np.ndarray]:
    """Prior samples for the integer inputs of `graph` (the noise-calibration fallback for token models)."""
    layout = token_layout(graph, hints)
    table = next(t for t in graph.tensors().values() if t.name == layout.table)
    prior, pad = vocab_prior(const_values(table))
    return sample_tokens(layout, prior, pad, n, np.random.default_rng(seed))
