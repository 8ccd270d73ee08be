"""Line-drawing pages beside the prior, for image models whose output is a dense map (objective "label").

A model that writes a spatial map (a text detector's region / affinity scores, a segmenter's logits:
an output with two axes that follow the input's H and W at one stride) and has no BN statistics to
fit the 1/f prior to can have a head that the prior's random fields never fire: EasyOCR's CRAFT
text detector (VGG16-BN, BN folded by the exporter, a Conv-ReLU head) calibrated on the prior reads its
score map up to 0.055 where real scenes reach 1.06, and finds no word at all (BENCHMARKS.md, session 22).
Writing is made of strokes, and a page of the recognizers' line drawings (`synth.strokes.drawing`)
makes such a head fire; pages are offered beside the prior and kept only where the model responds:

    PROBE prior samples and PROBE pages are run once (float, the dense outputs only); per dense output,
    gain = (max over pages of a sample's output span max - min) / (the same over the prior's samples);
    when the largest gain reaches GAIN, every second sample (n // 2 of n) is a page, else nothing moves.

CRAFT at 480 x 640: prior span 0.055, pages 1.05 (gain 19.0): its calibrated score range becomes
[-0.06, 1.00] (real scenes [-0.04, 1.06]) and it finds 99.1 % of 1361 rendered words (FP32 99.0 %, main
0 %; BENCHMARKS.md, session 23).

A page: paper p and ink q from `strokes.paper_ink` scaled by LEVEL (x 2: a standardized input's
levels, inside the squash bound 2.5) -- one paper per page, an ink per line --; lines of height
U(16, 48) px (at most H / 2) stacked down the page with gaps U(0.3, 1.5) x their height, each a
drawing of width U(0.2, 0.9) W at a random left offset; a per-channel tint U(0.9, 1) and N(0, 0.02).
Pages are drawn standardized and mapped like the prior's samples onto an `--input-range`; the probe
sees them in that range. Their generator is seeded apart from the prior's (seed, PAGE_STREAM), so the
prior's samples are the same with or without pages.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.backends.chunks import pad_rows, rows_per_chunk, static_batch
from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.synth.augment import is_image_like
from dfq_onnx.synth.search import to_range
from dfq_onnx.synth.strokes import drawing, paper_ink

PROBE, GAIN, LEVEL = 8, 2.0, 2.0
LINE_PX = (16, 48)
STRIDES = (1, 2, 4, 8, 16, 32)
MIN_SIDE = 8
PAGE_STREAM = 0x7061676573      # "pages": the pages' generator is (seed, PAGE_STREAM)


@dataclasses.dataclass(frozen=True)
class PageOffer:
    """What the probe measured: per dense output, the largest span over the prior's and the pages'
    probe samples; taken when the largest gain reaches GAIN."""

    spans: dict[str, tuple[float, float]]     # output -> (prior span, pages span)
    pages: int

    @property
    def gain(self) -> float:
        return max(p / max(q, 1e-12) for q, p in self.spans.values())

    @property
    def taken(self) -> bool:
        return self.gain >= GAIN

    def note(self) -> dict:
        return {"outputs": {k: {"prior_span": round(q, 6), "pages_span": round(p, 6)}
                            for k, (q, p) in self.spans.items()},
                "gain": round(self.gain, 3), "taken": self.taken, "pages": self.pages if self.taken else 0}


def is_dense(out_shape: tuple, in_shape: tuple) -> bool:
    """A per-sample output shape with two axes (in order) that are the input's H and W at one stride."""
    h, w = in_shape[-2:]
    dims = [d if isinstance(d, (int, np.integer)) else -1 for d in out_shape]
    for s in STRIDES:
        oh, ow = -(-h // s), -(-w // s)
        if min(oh, ow) < MIN_SIDE:
            break
        for a in range(len(dims)):
            if dims[a] in (h // s, oh) and any(d in (w // s, ow) for d in dims[a + 1:]):
                return True
    return False


def candidate_outputs(graph: gs.Graph, shape: tuple) -> list[str] | None:
    """The float outputs of rank >= 3 that may be dense maps; None when every output's shape is known
    and none is (no probe needed)."""
    outs = [t for t in graph.outputs if is_float(t) and t.shape is not None and len(t.shape) >= 3]
    known = all(all(isinstance(d, (int, np.integer)) and d > 0 for d in t.shape[1:]) for t in outs)
    if known:
        outs = [t for t in outs if is_dense(tuple(t.shape[1:]), shape)]
    return [t.name for t in outs] or None


def page(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """One page [C, H, W], standardized levels (module docstring)."""
    c, h, w = shape
    paper, _ = paper_ink(rng)
    gray = np.full((h, w), LEVEL * paper)
    y = rng.uniform(0.0, 0.1) * h
    while True:
        lh = int(min(rng.uniform(*LINE_PX), h / 2))
        if y + lh > h or lh < 4:
            break
        lw = int(rng.uniform(0.2, 0.9) * w)
        x0, y0 = int(rng.uniform(0, w - lw)), int(y)
        cover = drawing(rng, lh, lw)
        _, ink = paper_ink(rng)
        ink = -abs(ink) if paper > 0 else abs(ink)
        region = gray[y0:y0 + lh, x0:x0 + lw]
        region += (LEVEL * ink - region) * cover
        y += lh * (1 + rng.uniform(0.3, 1.5))
    tint = rng.uniform(0.9, 1.0, c)[:, None, None]
    return (gray[None] * tint + rng.normal(0, 0.02, (c, h, w))).astype(np.float32)


def pages(seed: int, n: int, shape: tuple[int, ...], domain: tuple[float, float] | None = None,
          rng: np.random.Generator | None = None) -> np.ndarray:
    """n pages [n, C, H, W] from the pages' own stream of `seed` (or the next n of `rng`, that stream
    part-drawn), in `domain` when given."""
    rng = np.random.default_rng([seed, PAGE_STREAM]) if rng is None else rng
    x = np.stack([page(rng, shape) for _ in range(n)]) if n else np.empty((0, *shape), np.float32)
    return to_range(x, *domain) if domain is not None else x


def output_spans(graph: gs.Graph, outputs: list[str], name: str, x: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """(per row of x, max - min of each of `outputs`; the outputs' per-sample shapes), on the float graph
    in memory-bounded chunks (the batch the graph fixes, when it fixes one, its last call padded)."""
    g = ir.copy_graph(graph)
    g.outputs = [g.tensors()[o] for o in outputs]
    sess = runtime.session(ir.session_model(g.cleanup()), mem_pattern=False)
    fixed = static_batch(graph)
    step = fixed or rows_per_chunk(g, {name: x.shape[1:]})
    spans = {o: [] for o in outputs}
    shapes = {}
    for i in range(0, len(x), step):
        rows = len(x[i:i + step])
        feed = pad_rows({name: x[i:i + step]}, fixed) if fixed else {name: x[i:i + step]}
        for o, y in zip(outputs, sess.run(None, feed)):
            flat = y[:rows].reshape(rows, -1)
            spans[o].append(flat.max(axis=1) - flat.min(axis=1))
            shapes[o] = y.shape[1:]
    return {o: np.concatenate(v) for o, v in spans.items()}, shapes


def offer(graph: gs.Graph, name: str, prior: np.ndarray, seed: int, n_pages: int,
          domain: tuple[float, float] | None) -> tuple[PageOffer | None, np.ndarray | None]:
    """The probe (module docstring) of input `name` whose samples are `prior` (in the input's domain):
    (what it measured, the n_pages pages when taken), or (None, None) when no output is a dense map."""
    shape = tuple(prior.shape[1:])
    if len(shape) != 3 or not is_image_like((1, *shape)) or (outs := candidate_outputs(graph, shape)) is None:
        return None, None
    k = min(PROBE, len(prior), n_pages)
    rng = np.random.default_rng([seed, PAGE_STREAM])
    drawn = pages(seed, k, shape, domain, rng)          # the rest only when taken: the same stream
    seen, shapes = output_spans(graph, outs, name, np.concatenate([prior[:k], drawn]))
    dense = [o for o in outs if is_dense(shapes[o], shape)]
    if not dense:
        return None, None
    result = PageOffer({o: (float(seen[o][:k].max()), float(seen[o][k:].max())) for o in dense}, n_pages)
    if not result.taken:
        return result, None
    return result, np.concatenate([drawn, pages(seed, n_pages - k, shape, domain, rng)])
