"""Measured latency tables (`dfq-onnx profile-target`) and their use as an ILP latency budget.

For every quantizer group with weights and every storage class of the target's legal pairs (pairs
that store alike run alike: W5A8 and W6A8 are int8 x uint8 like W8A8), the group is cut out of the
model emitted at that class and timed on its own, Q/DQ included:

    x ─Q─DQ─┐                                    the group's ops with their input quantizers,
    W_q ─DQ─┴─► Conv ─Q─DQ─► y                   weight DQs and output quantizers

Groups are timed in interleaved rounds (every group x class once per round; median over rounds) so
a shared machine's drift hits all alike. The table is additive with one calibration term:

    model_ms(plan) ~= overhead_ms + sum_g ms_g(plan_g),   overhead_ms = model_ms(base) - sum_g ms_g(base)

where model_ms(base) is the whole model at the target's default pair, timed in the same rounds.
A `--latency-ms T` budget becomes the ILP constraint  sum_g (ms_g(c) + overhead_ms / G) x[g,c] <= T.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Mapping, TypeVar

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import candidates, ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import is_pixel_dtype

FORMAT = "dfq-onnx latency table 1"
Cand = tuple[int, int]
K = TypeVar("K", bound=Hashable)


def _key(c: Cand) -> str:
    return f"{c[0]}x{c[1]}"


@dataclass(frozen=True)
class LatencyTable:
    target: str
    batch: int
    base: Cand
    overhead_ms: float
    groups: dict[str, dict[Cand, float]]
    layers: dict[str, tuple[str, ...]]
    fp32_ms: float | None = None              # the whole FP32 model, timed in the same rounds
    model_ms: dict[str, float] = field(default_factory=dict)   # the whole model per storage class
    model_sha256: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--latency-table {path}: cannot read JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"--latency-table {path}: not a table written by `dfq-onnx profile-target`")
        try:
            groups = {g: {parse_key(k): float(v) for k, v in row["ms"].items()}
                      for g, row in data["groups"].items()}
            layers = {g: tuple(row["layers"]) for g, row in data["groups"].items()}
            base = tuple(int(x) for x in data["base"].split("x"))
            fp32 = data.get("fp32_ms")
            return cls(str(data["target"]), int(data["batch"]), base, float(data["overhead_ms"]),
                       groups, layers, None if fp32 is None else float(fp32),
                       {k: float(v) for k, v in data.get("model_ms", {}).items()},
                       str(data.get("model_sha256", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"--latency-table {path}: malformed table ({exc!r})") from None

    def integer_pays(self) -> bool | None:
        """Whether the whole model at the base pair ran faster than FP32 when profiled (None: unknown)."""
        base = _key(self.base)
        if self.fp32_ms is None or base not in self.model_ms:
            return None
        return self.model_ms[base] < self.fp32_ms

    def for_problem(self, target: str, groups, problem_groups) -> dict[str, dict[Cand, float]]:
        """Per-group latency for the ILP, the overhead spread evenly over the groups so that the sum
        over groups is the whole-model prediction; refuses a table of another target or model."""
        if target != self.target:
            raise UsageError(f"the latency table was measured for target '{self.target}', not '{target}'; "
                             f"run `dfq-onnx profile-target {target} MODEL`")
        layers = {g.id: tuple(g.layers) for g in groups}
        if set(problem_groups) != set(self.groups):
            raise UsageError("the latency table does not match this model (its groups differ); re-run "
                             "`dfq-onnx profile-target` on it")
        share = self.overhead_ms / max(len(problem_groups), 1)
        out = {}
        for g in problem_groups:
            if self.layers.get(g) != layers.get(g):
                raise UsageError(f"the latency table does not match this model (group '{g}' differs); "
                                 "re-run `dfq-onnx profile-target` on it")
            out[g] = {c: ms + share for c, ms in self.groups[g].items()}
        return out


def parse_key(text: str) -> tuple:
    """A table key: '8x8' (a static pair) or a candidate name ('W8A8-dyn', core/candidates.py)."""
    if re.fullmatch(r"\d+x\d+", text):
        return tuple(int(x) for x in text.split("x"))
    return candidates.parse(text)


def storage_classes(target) -> dict[tuple[str, str], Cand]:
    """One representative pair per (weight dtype, activation dtype) of the legal pairs."""
    out: dict[tuple[str, str], Cand] = {}
    for w, a in target.pairs:
        out.setdefault((target.weight_dtype(w), target.act_dtype(a)), (w, a))
    return out


def concrete(graph: gs.Graph, batch: int):
    """Export `graph` with a fixed batch and inferred shapes, re-imported (shapes on every tensor)."""
    g = ir.copy_graph(graph)
    keep = {id(t) for t in [*g.inputs, *g.outputs]}
    for t in g.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in keep:
            t.shape = None
    for t in [*g.inputs, *g.outputs]:
        if t.shape:
            t.shape = [batch if (i == 0 and not (isinstance(d, int) and d > 0)) else d
                       for i, d in enumerate(t.shape)]
    model = ir.to_model(g, ir_version=ir.min_ir_version(g.opset))
    return ir.to_graph(ir.infer_shapes(model))


def _float_source(t: gs.Tensor, members: set[str]) -> tuple[gs.Tensor | None, bool]:
    """(boundary tensor, internal?) for an input of a group op in an emitted graph."""
    prod = t.inputs[0] if t.inputs else None
    if prod is not None and prod.op == "DequantizeLinear":
        src = prod.inputs[0]
        if isinstance(src, gs.Constant):
            return None, True            # weight / bias DQ: part of the cut
        q = src.inputs[0] if src.inputs else None
        if q is not None and q.op == "QuantizeLinear":
            x = q.inputs[0]
            inner = bool(x.inputs) and x.inputs[0].name in members
            return (None, True) if inner else (x, False)
    if prod is not None and prod.name in members:
        return None, True
    return t, False


def cut_group(graph: gs.Graph, ops: tuple[str, ...]):
    """The subgraph of one group (its ops, their Q/DQ and weight DQs) as a model; `graph` is concrete."""
    g = ir.copy_graph(graph)
    nodes = {n.name: n for n in g.nodes}
    members = set(ops)
    inputs: dict[str, gs.Tensor] = {}
    outputs: dict[str, gs.Tensor] = {}
    for name in ops:
        node = nodes[name]
        for t in node.inputs:
            if isinstance(t, gs.Constant) or not t.name:
                continue
            src, internal = _float_source(t, members)
            if not internal:
                inputs[src.name] = src
        y = node.outputs[0]
        q = next((c for c in y.outputs if c.op == "QuantizeLinear"), None)
        dq = next((c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"), None) if q else None
        out = dq.outputs[0] if dq is not None else y
        outputs[out.name] = out
    for t in inputs.values():
        t.inputs.clear()
    g.inputs = list(inputs.values())
    g.outputs = list(outputs.values())
    g.cleanup().toposort()
    return ir.to_model(g, ir_version=ir.min_ir_version(g.opset))


def random_feeds(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Timing feeds: float inputs ~ N(0, 1) in their own float type; an integer input that indexes a
    constant table (Gather), ids spread over its rows; any other integer input (masks, type ids), ones;
    a boolean input (a mask), all True."""
    rng = np.random.default_rng(seed)
    tables = {i.name: i.dims[0] for i in model.graph.initializer if len(i.dims) == 2}
    rows = {n.input[1]: tables[n.input[0]] for n in model.graph.node
            if n.op_type in ("Gather", "GatherBlockQuantized") and len(n.input) > 1 and n.input[0] in tables}
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            raise UsageError(f"input '{inp.name}' has no concrete shape; pass --input-shape")
        elem = inp.type.tensor_type.elem_type
        if elem in (6, 7):                      # int32 / int64
            dtype = np.int64 if elem == 7 else np.int32
            feeds[inp.name] = (rng.integers(0, rows[inp.name], dims) if inp.name in rows
                               else np.ones(dims)).astype(dtype)
        elif elem == 9:                         # bool
            feeds[inp.name] = np.ones(dims, bool)
        elif is_pixel_dtype(name := ir.elem_type_name(elem)):      # 8 / 16-bit image pixels
            info = np.iinfo(name)
            feeds[inp.name] = rng.integers(info.min, info.max, dims, endpoint=True).astype(info.dtype)
        else:
            kind = name if name in ("float16", "float64") else "float32"
            feeds[inp.name] = rng.standard_normal(dims).astype(kind)
    return feeds


class Timer:
    """Median wall time of a model on one runtime ('onnxruntime' or 'openvino')."""

    def __init__(self, runtime: str, threads: int):
        if runtime not in ("onnxruntime", "openvino"):
            raise UsageError(f"this target declares no runtime to measure here ([latency] runtime = "
                             f"'{runtime}'); profile-target needs 'onnxruntime' or 'openvino'")
        self.runtime, self.threads = runtime, threads
        if runtime == "openvino":
            try:
                import openvino
            except ImportError:
                raise UsageError("profile-target for this target needs OpenVINO: pip install "
                                 "openvino") from None
            self.core = openvino.Core()

    def compile(self, model):
        data = ir.serialize(model)
        if self.runtime == "onnxruntime":
            from dfq_onnx.backends.runtime import session

            sess = session(data, threads=self.threads, spin=False)     # timed in turn with the others
            return lambda feeds: sess.run(None, feeds)
        import openvino

        ov_model = self.core.read_model(data, openvino.Tensor(np.empty(0, np.uint8)))
        compiled = self.core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": str(self.threads)})
        return lambda feeds: compiled(feeds)


def call_ms(fn: Callable[[], object], runs: int, warmup: int = 1, clock=None) -> list[float]:
    """Times (ms) of `runs` calls of `fn()`, after `warmup` untimed ones: wall time, or `clock`'s (e.g.
    time.process_time: the process's CPU time)."""
    clock = clock or time.perf_counter
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = clock()
        fn()
        samples.append((clock() - start) * 1e3)
    return samples


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall time (ms) of `fn()` over `runs` timed calls, after `warmup` untimed ones."""
    return statistics.median(call_ms(fn, runs, warmup))


def interleaved_medians(callables: Mapping[K, Callable[[], object]], rounds: int, runs: int,
                        warmup: int = 1, progress=None) -> dict[K, list[float]]:
    """Per callable, its `median_ms(fn, runs, warmup)` in each of `rounds` rounds. Every round times
    every callable once, in turn, so a shared machine's drift hits all of them alike; the caller takes
    the median (or min) over the rounds. `progress.update(1)` after each timing, if given."""
    samples: dict[K, list[float]] = {k: [] for k in callables}
    for _ in range(rounds):
        for k, fn in callables.items():
            samples[k].append(median_ms(fn, runs, warmup))
            if progress is not None:
                progress.update(1)
    return samples


def interleaved(timer: Timer, models: dict, rounds: int, runs: int, progress=None) -> dict:
    """Median over `rounds` of each model's per-round median; every model timed once per round."""
    compiled = {k: (timer.compile(m), random_feeds(m)) for k, m in models.items()}
    calls = {k: functools.partial(fn, feeds) for k, (fn, feeds) in compiled.items()}
    return {k: statistics.median(v) for k, v in interleaved_medians(calls, rounds, runs, 1, progress).items()}


def expand(target, groups, by_class: dict[tuple[str, str], dict[str, float]]) -> dict[str, dict]:
    """Per group, every legal pair's latency from its storage class's measurement."""
    out = {}
    for g in groups:
        legal = target.pairs_for(g["ops"])
        out[g["id"]] = {_key(p): by_class[(target.weight_dtype(p[0]), target.act_dtype(p[1]))][g["id"]]
                        for p in legal if (target.weight_dtype(p[0]), target.act_dtype(p[1])) in by_class}
    return out


def table_json(**fields) -> str:
    return json.dumps({"format": FORMAT, **fields}, indent=2, sort_keys=True) + "\n"

