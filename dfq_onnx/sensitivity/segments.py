"""Segmented probe: evaluate a configuration from the first segment it changes, on fast segments elsewhere.

The switch probe (`sensitivity.probe`) runs every weighted layer inside an If. ONNX Runtime cannot carry
its blocked (NCHWc) layout across an If, so on an ImageNet-size network every layer pays two layout
reorders: an evaluation then costs ~2x a plain FP32 forward (EfficientNet-Lite0: 2.2x; ResNet-56 on
32x32 images, where layout matters little: 1.3x). Most configurations the scorer runs change one or
two groups (singles, pairs), so:

  * The graph (in topological order) is cut where few tensors cross -- between blocks, where one
    activation tensor is live -- into S segments balanced by weighted layers (S <= `max_segments`).
  * Each segment exists twice: its probe version (switches, select inputs for its groups) and its fast
    version (the same nodes with the FP32 weights as constants -- no If, so NCHWc kernels and fusions
    apply). Both carry the same activation Q/DQ, so the fast version computes exactly what the probe
    version computes with every select at FP32.
  * The first evaluation of a batch runs the fast segments and caches every tensor that crosses a cut
    and every model output. A configuration then starts at the first segment holding a non-FP32 group
    (everything before it is the cache), runs probe segments where a group is quantized and fast
    segments elsewhere. A single at relative depth p costs about (1 - p) fast forwards plus one probe
    segment: about half a forward on average.

Memory bound: the cache holds, per scoring batch, the tensors crossing the S - 1 cuts plus the model
outputs -- at most (S - 1) x the largest crossing set x batch -- for every batch of the scoring set
(the sum over cuts is reported as `cache_bytes`); cuts whose crossing tensors would push the per-sample
total over `max_cache_elements` are not taken (the scorer passes CACHE_BYTES / 4 / samples, so the cache
stays under CACHE_BYTES for any scoring set). CACHE_BYTES is the chunk rule's bound on the live
activations of one ORT call (`backends.chunks`: DEFAULT_BUDGET / ARENA = 256 MiB, the budget Calibrate's
chunk is sized by): the cache is held beside every evaluation's chunk, so it may take as much as one
chunk's activations, not more (it was 2 GiB; PP-OCRv4 rec's 32 scoring rows cache 8 MB each, 257 MB).
Sessions: 2 S, holding the probe's constants once more in the fast halves (FP32 weights).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends.chunks import ARENA, DEFAULT_BUDGET
from dfq_onnx.backends.row_store import Spilled, SpillFile
from dfq_onnx.core import ir
from dfq_onnx.core.graph_utils import node_label, reads

log = logging.getLogger(__name__)
CACHE_BYTES = DEFAULT_BUDGET // ARENA    # bound of the prefix cache over the scoring set (above)


def _live_sets(nodes: list[gs.Node], skip: set[str]) -> list[list[str]]:
    """live[i]: tensors produced before node i and read at or after it (graph inputs/constants excluded)."""
    produced, last = {}, {}
    for i, n in enumerate(nodes):
        for t in reads(n):
            if isinstance(t, gs.Variable) and t.name not in skip:
                last[t.name] = i
        for t in n.outputs:
            produced[t.name] = i
    starts: dict[int, list[str]] = {}
    for t, p in produced.items():
        if last.get(t, -1) > p:
            starts.setdefault(p + 1, []).append(t)
    live, current = [], set()
    for i in range(len(nodes) + 1):
        current |= set(starts.get(i, ()))
        current = {t for t in current if last[t] >= i}
        live.append(sorted(current))
    return live


def choose_cuts(nodes: list[gs.Node], weighted: set[str], inputs: set[str], max_segments: int,
                sizes: Mapping[str, int] | None = None, max_cache: int | None = None,
                minor: set[str] = frozenset(), live: list[list[str]] | None = None) -> list[int]:
    """Node indices where segments start (besides 0): cuts with the fewest live activation tensors,
    balanced by weighted layers; fewer cuts when the crossing tensors would exceed `max_cache` elements.
    `minor` tensors (integer shape computations) cross cuts too but do not count; `live` is
    `_live_sets(nodes, inputs)` when the caller has it already."""
    live = [[t for t in ts if t not in minor] for ts in (live or _live_sets(nodes, inputs))]
    n_weighted = sum(node_label(n) in weighted for n in nodes)
    if n_weighted < 2 or max_segments < 2:
        return []
    counts = np.cumsum([node_label(n) in weighted for n in nodes])   # weighted layers in nodes[:i+1]
    # cut between the first and the last weighted layer where the fewest tensors cross, not counting
    # those crossing most of that span (a transformer's float attention mask crosses with its residual
    # stream at every layer boundary)
    interior = [i for i in range(1, len(nodes)) if 0 < counts[i - 1] < n_weighted]
    crossing = Counter(t for i in interior for t in live[i])
    long = {t for t, c in crossing.items() if 2 * c > len(interior)}
    width = {i: sum(t not in long for t in live[i]) for i in interior}
    least = min(width.values(), default=0)
    candidates = [i for i in interior if live[i] and width[i] <= max(least, 1)]
    per = n_weighted / min(max_segments, n_weighted)
    cuts, seen, total = [], 0, 0
    for i in candidates:
        done = int(counts[i - 1])
        if done - seen >= per - 1e-9 and done < n_weighted:
            size = sum((sizes or {}).get(t, 0) for t in live[i])
            if max_cache is not None and total + size > max_cache:
                continue
            cuts.append(i)
            seen, total = done, total + size
    return cuts


class SegmentedRunner:
    """Runs configurations of a switch probe from the first changed segment (see the module docstring).

    `probe_graph` is the probe's gs graph (switch nodes named `<layer>_switch0`, Equal nodes named
    `select_<group>_is<k>_Equal`, activation switches listed in `attached` by the node whose segment they
    belong to), `fast_graph` the same graph before switching (FP32 weights, switched activations float);
    `units` maps node label -> the group ids whose select it reads (a weighted layer its group, the
    producer of a switched activation its activation group), `selects` group id -> select input name;
    `fed`: probe inputs fed with every batch (the form switches' weights), inputs of the probe segments
    that read them.
    """

    def __init__(self, probe_graph: gs.Graph, fast_graph: gs.Graph, units: Mapping[str, tuple[str, ...]],
                 selects: Mapping[str, str], data_inputs: tuple[str, ...], session_factory,
                 max_segments: int = 12, max_cache_elements: int | None = None,
                 attached: Mapping[str, list[str]] | None = None, fed: tuple[str, ...] = ()):
        units = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in units.items()}
        attached = attached or {}
        fast_nodes = list(fast_graph.nodes)
        minor = {n for n, t in fast_graph.tensors().items()
                 if t.dtype is not None and not np.issubdtype(np.dtype(t.dtype), np.floating)}
        minor |= _constant_tensors(fast_nodes)
        live = _live_sets(fast_nodes, set(data_inputs))
        cuts = choose_cuts(fast_nodes, set(units), set(data_inputs), max_segments,
                           _sizes(fast_graph), max_cache_elements, minor, live)
        bounds = [0, *cuts, len(fast_nodes)]
        self.outputs = [t.name for t in fast_graph.outputs]
        self.data_inputs, self.selects = data_inputs, dict(selects)
        self.segments = []
        probe_nodes = {node_label(n): n for n in probe_graph.nodes}
        order = {id(n): i for i, n in enumerate(probe_graph.nodes)}   # the probe graph is toposorted
        ptensors, ftensors = probe_graph.tensors(), fast_graph.tensors()
        for a, b in zip(bounds, bounds[1:]):
            chunk = fast_nodes[a:b]
            ins = [*(t for t in data_inputs if any(x.name == t for n in chunk for x in reads(n))),
                   *(live[a] if a else [])]
            outs = [*(live[b] if b < len(fast_nodes) else []),
                    *(t for t in self.outputs if any(o.name == t for n in chunk for o in n.outputs))]
            outs = list(dict.fromkeys(outs))
            groups = sorted({g for n in chunk for g in units.get(node_label(n), ())})
            fast = _subgraph(chunk, ins, outs, ftensors, fast_graph.opset)
            pchunk = [probe_nodes.get(f"{node_label(n)}_switch0", probe_nodes.get(node_label(n)))
                      for n in chunk]
            pchunk += [probe_nodes[x] for x in dict.fromkeys(x for n in chunk
                                                              for x in attached.get(node_label(n), ()))]
            prefixes = tuple(f"{selects[g]}_is" for g in groups)
            equal = [n for n in probe_graph.nodes if n.op == "Equal" and n.name.startswith(prefixes)]
            pchunk = sorted(equal + pchunk, key=lambda n: order[id(n)])
            read = {t.name for n in pchunk for t in reads(n)}
            weights = [t for t in fed if t in read]
            probe = _subgraph(pchunk, ins + [selects[g] for g in groups] + weights, outs, ptensors,
                              probe_graph.opset) if groups else None
            self.segments.append({"inputs": ins, "outputs": outs, "groups": set(groups), "fed": weights,
                                  "fast": session_factory(fast),
                                  "probe": session_factory(probe) if probe is not None else None})
        self._cache: dict[object, dict[str, np.ndarray]] = {}
        self.max_cache_elements = max_cache_elements
        self.segment_runs = 0
        log.debug("segmented probe: %d segments", len(self.segments))

    @property
    def cache_bytes(self) -> int:
        """Bytes the cache holds in memory (outputs in a file not counted)."""
        return sum(v.nbytes for c in self._cache.values() for v in c.values() if not isinstance(v, Spilled))

    def _run_segment(self, seg: dict, env: dict[str, np.ndarray], select: dict[str, np.ndarray] | None):
        feeds = {t: env[t] for t in seg["inputs"]}
        self.segment_runs += 1
        if select is None:
            res = seg["fast"].run(seg["outputs"], feeds)
        else:
            feeds.update({self.selects[g]: select[g] for g in seg["groups"]})
            feeds.update({t: env[t] for t in seg["fed"]})
            res = seg["probe"].run(seg["outputs"], feeds)
        env.update(zip(seg["outputs"], res))

    def run(self, key, feeds: dict[str, np.ndarray], select: dict[str, np.ndarray],
            changed: set[str]) -> list[np.ndarray]:
        """Model outputs for the configuration whose select feeds are `select` (group -> int64 scalar)
        and whose non-FP32 groups are `changed`; `key` identifies the batch `feeds` (cached)."""
        if key not in self._cache:
            env = dict(feeds)
            for seg in self.segments:
                self._run_segment(seg, env, None)
            self._cache[key] = self._kept(env, feeds)
        cached = self._cache[key]
        first = next((i for i, seg in enumerate(self.segments) if seg["groups"] & changed), None)
        if first is None:
            return [_value(cached[t]) for t in self.outputs]
        env = {t: v for t, v in cached.items() if not isinstance(v, Spilled)}
        for seg in self.segments[first:]:
            env.update({t: _value(cached[t]) for t in seg["inputs"] if t not in env})
            self._run_segment(seg, env, select if seg["groups"] & changed else None)
        return [env[t] if t in env else _value(cached[t]) for t in self.outputs]

    def _kept(self, env: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> dict:
        """What the cache keeps of a batch's fast run: every tensor, the model outputs in a file
        (`row_store.Spilled`) when with the crossing tensors they exceed the per-sample bound (an ISNet's
        side outputs and deep-supervision features: 124 MB per row against 34 MB on 8 rows)."""
        if self.max_cache_elements is None:
            return env
        rows = max(len(next(iter(feeds.values()))), 1) if feeds else 1
        held = sum(v.size for t, v in env.items() if t not in feeds)
        if held <= self.max_cache_elements * rows:
            return env
        spilled = SpillFile()                   # one file per batch: one descriptor, whatever the outputs
        return {t: spilled.add(v) if t in self.outputs and t not in feeds else v for t, v in env.items()}


def _value(v) -> np.ndarray:
    return v.load() if isinstance(v, Spilled) else v


def _constant_tensors(nodes: list[gs.Node]) -> set[str]:
    """Outputs of nodes computed from constants only (DequantizeLinear of a quantized constant input):
    a topological order may hoist them anywhere, so they cross cuts without carrying activations."""
    out: set[str] = set()
    for n in nodes:
        if n.inputs and all(isinstance(t, gs.Constant) or t.name in out or not t.name for t in n.inputs):
            out.update(t.name for t in n.outputs)
    return out


def _sizes(graph: gs.Graph) -> dict[str, int]:
    """Elements per sample of each tensor with a known static shape (batch dimension excluded)."""
    out = {}
    for name, t in graph.tensors().items():
        shape = getattr(t, "shape", None)
        if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            out[name] = int(np.prod(shape[1:], dtype=np.int64))
    return out


def _subgraph(nodes: list[gs.Node], inputs: list[str], outputs: list[str], tensors, opset: int):
    """An ONNX model of `nodes` (shared, not modified) reading `inputs` and producing `outputs`."""
    def var(name: str) -> gs.Variable:
        t = tensors[name]
        if t.dtype is None:      # activations crossing a cut are float32 (the graphs are the probe's own)
            t.dtype = np.float32
        return t

    g = gs.Graph(nodes=list(nodes), inputs=[var(t) for t in inputs], outputs=[var(t) for t in outputs],
                 opset=opset)
    return ir.session_model(g, ir_version=ir.min_ir_version(opset))
