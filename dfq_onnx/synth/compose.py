"""Search short, compose long: samples for models whose output positions follow an input axis.

A text recognizer reads a line of width W as T = W / s output positions (s the stride of its
backbone), position t looking at the columns around s t. Such a model is probed once
(`aligned_axis`): its float output is computed for one zero row at the searched size and at half the
size along each spatial input axis k; axis k is aligned with output axis j when only dim j changes,
and in proportion (T' / T = W' / W).

The search then runs on pieces R = 4 times narrower along k (each keeping at least MIN_POSITIONS
output positions and a whole number of strides): one ES step costs 1/R of a full-size step and a
piece has 1/R of the parameters, so the same compute buys up to R times the steps, each with a
better gradient estimate. Sample i of the result is the concatenation along k of pieces
i, i+1, ..., i+R-1 (mod N): N samples from N pieces, each piece in R samples at R different places.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.core import ir
from dfq_onnx.synth.objectives import float_output

log = logging.getLogger(__name__)

PIECES, MIN_POSITIONS = 4, 4


@dataclasses.dataclass(frozen=True)
class Composition:
    """How pieces make samples: along axis `axis` of input `name` (batch axis included), R pieces."""

    name: str
    axis: int
    pieces: int
    piece_shape: tuple[int, ...]     # per-sample shape of a piece (batch axis excluded)
    graph: gs.Graph | None = None    # the model annotated at the piece shape (what the search runs)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {self.name: self.piece_shape}

    def split(self, full: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Sample i's piece i mod R of full-size samples (the pieces a search starts from)."""
        x = full[self.name]
        parts = np.split(x, self.pieces, axis=self.axis)
        return {self.name: np.stack([parts[i % self.pieces][i] for i in range(len(x))])}

    def compose(self, pieces: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = pieces[self.name]
        parts = [np.roll(x, -r, axis=0) for r in range(self.pieces)]
        return {self.name: np.concatenate(parts, axis=self.axis).astype(x.dtype, copy=False)}


def plan_pieces(graph: gs.Graph, kind: str, shapes: dict[str, tuple[int, ...]]) -> Composition | None:
    """The composition the search uses for a sequence objective on an aligned model, else None."""
    out = float_output(graph) if "sequence" in kind else None
    plan = aligned_axis(graph, shapes, out.name) if out is not None else None
    if plan is None:
        return None
    g = ir.copy_graph(graph)
    inputs = {t.name: t for t in g.inputs}
    inputs[plan.name].shape = [inputs[plan.name].shape[0], *plan.piece_shape]
    for t in g.tensors().values():
        if isinstance(t, gs.Variable) and t not in g.inputs:
            t.shape = None
    ir.refresh_shapes(g)
    log.info("sequence output '%s' follows input axis %d of '%s': searching %d pieces of %s per sample",
             out.name, plan.axis, plan.name, plan.pieces, plan.piece_shape)
    return dataclasses.replace(plan, graph=g)


def _output_shape(graph: gs.Graph, name: str, shape: tuple[int, ...], output: str) -> tuple[int, ...] | None:
    """The output's per-sample shape for one zero row of input `name` at `shape`, or None if it fails."""
    g = ir.copy_graph(graph)
    for t in g.tensors().values():
        if isinstance(t, gs.Variable):
            t.shape = ["N", *shape] if t.name == name else None
    g.outputs = [g.tensors()[output]]
    g.outputs[0].dtype = np.float32
    try:
        sess = runtime.session(ir.session_model(g.cleanup()), quiet=True)
        return tuple(sess.run(None, {name: np.zeros((1, *shape), np.float32)})[0].shape[1:])
    except Exception as exc:  # noqa: BLE001 - a size the model refuses means: no alignment found
        log.info("alignment probe at %s failed: %s", shape, str(exc).splitlines()[0] if str(exc) else exc)
        return None


def aligned_axis(graph: gs.Graph, shapes: dict[str, tuple[int, ...]], output: str) -> Composition | None:
    """The composition for a one-input image model whose output axis follows an input axis, or None."""
    if len(shapes) != 1:
        return None
    name, shape = next(iter(shapes.items()))
    if len(shape) != 3:
        return None
    base = _output_shape(graph, name, shape, output)
    if base is None:
        return None
    for k in (2, 1):                              # per-sample axes: width first, then height
        half = list(shape)
        half[k] = shape[k] // 2
        probe = _output_shape(graph, name, tuple(half), output)
        if probe is None or len(probe) != len(base):
            continue
        changed = [j for j, (a, b) in enumerate(zip(base, probe)) if a != b]
        if len(changed) != 1 or probe[changed[0]] * shape[k] != base[changed[0]] * half[k]:
            continue
        positions = base[changed[0]]
        stride = shape[k] // positions
        pieces = PIECES
        while pieces > 1 and (positions // pieces < MIN_POSITIONS or positions % pieces):
            pieces -= 1
        if pieces < 2:
            return None
        piece = list(shape)
        piece[k] = stride * (positions // pieces)
        if piece[k] * pieces != shape[k]:
            return None
        return Composition(name, k + 1, pieces, tuple(piece))
    return None
