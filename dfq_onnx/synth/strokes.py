"""Line-drawing starting images for models that read a sequence out of an image (objective S).

A recognizer's deep layers respond to symbols, and smooth 1/f random fields contain none: on PP-OCRv4
rec the BN statistics of the sequence neck reach 0.3-0.5 of the std the model was trained on, and the
search cannot build a symbol from noise within its budget. Writing is made of strokes, so the search
starts instead from random line drawings, and the model picks them:

    paper p ~ U(0.3, 1), ink q ~ U(-1, -0.2) (swapped for 1 sample in 8: light on dark);
    a band [top, bottom] across the reading axis, top ~ U(0.05, 0.35) H, bottom ~ U(0.65, 0.95) H;
    along the reading axis, boxes of width U(0.15, 0.55) H separated by gaps of U(0.02, 0.3) H,
    each with 1-4 strokes: a segment between two random points of the box, or (1 in 3) an arc of an
    ellipse inscribed in two random points, drawn with width U(0.04, 0.1) H (anti-aliased);
    x = p + (q - p) * ink coverage, the same in every channel up to a tint U(0.9, 1), plus N(0, 0.02).

CANDIDATES x N drawings are run through the model once and the N it reads most (highest sum over
positions of the winning probability where the winner is not the background class -- the class
winning most positions over all candidates, a CTC blank) start the search. No font and no text: the
drawings are random, the model decides which look like writing to it. Levels stay within [-1, 1],
inside the range of both [-1, 1]-scaled and mean/std-standardized image inputs.

The pick is the whole search by default (no ES steps unless given): on PP-OCRv4 rec (64 samples, 150
rendered lines, FP32 96.0 % exact) the picked drawings calibrate W8A8 to 94.0 % and W8A16 to 96.0 %;
64 further ES steps of objective bn+sequence on them lowered that to 78.7 / 94.7 (the BN term pulls the
drawings' contrast down to the first layer's statistics and the recognizer's deep layers respond less),
and searching from 1/f fields instead gave 15-41 / 13 (BENCHMARKS.md, issue 17).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.backends.chunks import rows_per_chunk
from dfq_onnx.core import ir, numerics
from dfq_onnx.synth.objectives import float_output
from dfq_onnx.synth.search import to_range
from dfq_onnx.synth.sequence import is_distribution

CANDIDATES = 4
ARC_SEGMENTS = 8


def _segment_coverage(ys: np.ndarray, xs: np.ndarray, a: np.ndarray, b: np.ndarray, width: float):
    """Anti-aliased coverage in [0, 1] of a segment a-b of `width` on the pixel grid (ys, xs)."""
    d = b - a
    t = np.clip(((ys - a[0]) * d[0] + (xs - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.hypot(ys - (a[0] + t * d[0]), xs - (a[1] + t * d[1]))
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)


def _stroke(rng, box: tuple[float, float, float, float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Segments (as point pairs) of one stroke in box (top, left, bottom, right)."""
    top, left, bottom, right = box
    p = rng.uniform([top, left], [bottom, right], (2, 2))
    if rng.random() >= 1 / 3:
        return [(p[0], p[1])]
    centre, radii = p.mean(axis=0), np.abs(p[1] - p[0]) / 2 + 1.0
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, rng.uniform(0.5, 2) * np.pi, ARC_SEGMENTS + 1)
    pts = centre + radii * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    return list(zip(pts[:-1], pts[1:]))


def drawing(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Ink coverage [height, width] in [0, 1] of one line drawing (module docstring)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    cover = np.zeros((height, width))
    top, bottom = rng.uniform(0.05, 0.35) * height, rng.uniform(0.65, 0.95) * height
    x = rng.uniform(0.0, 0.3) * height
    while x < width - 2:
        w = rng.uniform(0.15, 0.55) * height
        pen = rng.uniform(0.04, 0.1) * height
        lo, hi = max(int(x) - 2, 0), min(int(x + w) + 3, width)
        for _ in range(int(rng.integers(1, 5))):
            for a, b in _stroke(rng, (top, x, bottom, min(x + w, width - 1))):
                cov = _segment_coverage(ys[:, lo:hi], xs[:, lo:hi], a, b, pen)
                cover[:, lo:hi] = np.maximum(cover[:, lo:hi], cov)
        x += w + rng.uniform(0.02, 0.3) * height
    return cover


def paper_ink(rng: np.random.Generator) -> tuple[float, float]:
    """Paper and ink levels of one drawing (module docstring)."""
    paper, ink = rng.uniform(0.3, 1.0), rng.uniform(-1.0, -0.2)
    if rng.random() < 1 / 8:
        paper, ink = -paper, -ink
    return paper, ink


def stroke_images(rng: np.random.Generator, n: int, shape: tuple[int, ...], axis: int,
                  twin_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """n drawings of per-sample shape [C, H, W] read along per-sample axis `axis` (1: H, 2: W), and with
    `twin_rng` their contrast twins: each drawing's coverage, tint and noise with its paper and ink drawn
    again from the prior by `twin_rng` (the drawings themselves do not depend on it)."""
    c = shape[0]
    out = np.empty((n,) + tuple(shape), np.float32)
    twin = None if twin_rng is None else np.empty_like(out)
    for i in range(n):
        along, across = (shape[2], shape[1]) if axis == 2 else (shape[1], shape[2])
        cover = drawing(rng, across, along)
        cover = cover if axis == 2 else cover.T
        paper, ink = paper_ink(rng)
        gray = paper + (ink - paper) * cover
        tint = rng.uniform(0.9, 1.0, c)[:, None, None]
        noise = rng.normal(0, 0.02, (c,) + gray.shape)
        out[i] = gray[None] * tint + noise
        if twin is not None:
            paper, ink = paper_ink(twin_rng)
            twin[i] = (paper + (ink - paper) * cover)[None] * tint + noise
    return np.clip(out, -1.0, 1.0), None if twin is None else np.clip(twin, -1.0, 1.0)


def read_scores(y: np.ndarray) -> np.ndarray:
    """Per row of a per-position output [B, T, C]: sum over positions of the winning probability where
    the winner is not the background class (the class winning most positions over all rows)."""
    return _scores_of([_winners(y, not is_distribution(y))])


def _winners(y: np.ndarray, softmax: bool) -> tuple[bool, np.ndarray, np.ndarray]:
    """What `read_scores` needs of rows y: (whether read after a softmax, the winning class and its
    probability per position [B, T]). The softmax runs a row at a time (one row of float64 temporaries)."""
    if not softmax:
        return False, y.argmax(axis=-1), y.max(axis=-1)
    win, top = np.empty(y.shape[:-1], np.int64), np.empty(y.shape[:-1], np.float64)
    for i, row in enumerate(y):
        p = numerics.softmax(row, axis=-1)
        win[i], top[i] = p.argmax(axis=-1), p.max(axis=-1)
    return True, win, top


def _scores_of(parts: list[tuple[bool, np.ndarray, np.ndarray]]) -> np.ndarray:
    win, top = (np.concatenate(a) for a in list(zip(*parts))[1:])
    background = np.bincount(win.ravel(), minlength=int(win.max(initial=0)) + 1).argmax()
    return ((win != background) * top).sum(axis=1)


def model_scores(graph: gs.Graph, output: str, x: dict[str, np.ndarray]) -> np.ndarray:
    """`read_scores` of the float output `output` of `graph` for all rows of `x`, one memory-bounded chunk
    at a time: a chunk's output is reduced to its [rows, T] winners before the next runs, so the pick
    holds one chunk of outputs, not CANDIDATES x n of them (PP-OCRv4 rec: 256 x 40 x 6625 floats,
    0.27 GB, twice over while concatenated). The same scores as `read_scores` of all rows at once: the
    rows are a distribution iff every chunk is one (else the chunks read as probabilities are run
    again, through a softmax), and softmax, argmax and max are per row."""
    g = ir.copy_graph(graph)
    g.outputs = [g.tensors()[output]]
    sess = runtime.session(ir.session_model(g.cleanup()), mem_pattern=False)
    n = len(next(iter(x.values())))
    step = rows_per_chunk(g)

    def chunk(i: int, softmax: bool | None = None):
        y = sess.run(None, {k: v[i:i + step] for k, v in x.items()})[0]
        return _winners(y, not is_distribution(y) if softmax is None else softmax)

    parts = [chunk(i) for i in range(0, n, step)]
    if any(p[0] for p in parts):
        parts = [p if p[0] else chunk(i, True) for i, p in zip(range(0, n, step), parts)]
    return _scores_of(parts)


def stroke_start(graph: gs.Graph, plan, rng: np.random.Generator, n: int,
                 domain: tuple[float, float] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The n drawings the model reads most of CANDIDATES x n (module docstring), at the full size of
    the composition `plan` (synth/compose.py) and read along its axis; scored in the input's `domain`
    (`--input-range`) when it has one, returned standardized (squash maps them); and their contrast
    twins (`stroke_images`: the same shapes with paper and ink re-drawn from the prior, from a stream
    spawned off `rng`, so the drawings are the same with or without them)."""
    shape = tuple(graph.tensors()[plan.name].shape[1:])
    drawings, twins = stroke_images(rng, CANDIDATES * n, shape, plan.axis - 1, rng.spawn(1)[0])
    out = float_output(graph)
    seen = drawings if domain is None else to_range(drawings.copy(), *domain)
    scores = model_scores(graph, out.name, {plan.name: seen})
    keep = np.sort(np.argsort(-scores, kind="stable")[:n])
    return {plan.name: drawings[keep]}, {plan.name: twins[keep]}
