"""The probe model: one ONNX Runtime session that evaluates any per-group weight bit-width configuration.

Built once from the FP32 (BN-folded) graph; a configuration is a feed, never a rebuild. Every weighted
layer becomes a switch over K+1 weight slots (slot 0 = FP32, slot k = Emit's weights at bits_k), driven
by one int64 scalar input per quantizer group:

    select_g ─ Equal(0) ─ is0 ─┐             ┌ then: Conv(x, W_0, b_0) ─┐
             ─ Equal(1) ─ is1 ─┼─► If(is0) ──┤                          ├─► y
                               │             └ else: If(is1) ─ then: Conv(x, W_1, b_1)
                               │                            └ else: Conv(x, W_2, b_2)
    x ─Q─DQ──────────────────── (outer-scope input of every branch)      y ─Q─DQ─► ...

Only the taken branch runs, and inside it the weight is a constant, so ONNX Runtime keeps its fast
constant-weight kernels (NCHWc convolutions with prepacked filters). A Gather/one-hot selection makes
the weight a run-time tensor and loses them: on ResNet-56 at batch 256 an evaluation then costs
1.6-2.1x a plain FP32 forward, against 1.3-1.4x with the switch. b_k is the int32 bias round trip
(scale input_scale * weight_scale_k) when the target asks for int32 biases.

Activation Q/DQ pairs are those Emit writes for the same ranges and activation bits (constant scale and
zero point, shared per encoding class, Relu/Clip absorbed into a zero-point-0 output encoding), and
constant inputs of elementwise ops are fake-quantized like Emit does. Slot k of a weight holds exactly
the float values Emit's DequantizeLinear produces for `bits_k` (`emitted_weight`), so a configuration
and the QDQ model Emit writes for the same plan compute the same function. With
`quantize_activations=False` no activation Q/DQ is inserted and the Relus stay (a weights-only study).

Segmented evaluation (`Probe(..., segmented=True)`, what the scorer uses): the probe is also cut into
segments with fast FP32-weight twins, and a configuration runs from the first segment it changes, on the
cached FP32 prefix (`dfq_onnx.sensitivity.segments`): a single costs about half a forward instead of 1.3-2.9x.

Memory bound: every weighted layer holds K+1 float32 copies of its weight (and bias), K = number of
weight candidates, so the probe's constants take (K+1) x 4 bytes x parameters -- ResNet-56 (0.85 M
parameters, K=3): 14 MB; ResNet-50 (25.6 M): 410 MB -- and ORT may keep one prepacked (e.g. NCHWc
reordered) copy of each, at most doubling that. Activation memory is that of one plain forward pass
of `batch` samples, since only the taken branch of each switch runs. A probe above protobuf's 2 GB
is refused (score fewer candidates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from dfq_onnx.backends.qdq import (
    Encoding,
    activation_encoding,
    insert_activation_qdq,
    quantize_weight,
    replace_with_dq,
)
from dfq_onnx.core import ir, numerics
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.state import QuantGroup, QuantSpec, Range
from dfq_onnx.sensitivity.table import resolve_metrics, total_loss

log = logging.getLogger(__name__)

FP32 = None   # the weight "bit-width" of an unquantized group


def emitted_weight(w: np.ndarray, bias: np.ndarray | None, x_scale: float | None, bits: int,
                   axis: int | None, target) -> tuple[np.ndarray, np.ndarray | None]:
    """Float values of W (and b) after Emit's DequantizeLinear at `bits` (mirrors EmitQDQ).

    s_w = absmax_c(W) / (2^(b-1) - 1), raised so that |b| / (s_x s_w) fits int32;
    W_hat = s_w * clip(round(W / s_w), -(2^(b-1) - 1), 2^(b-1) - 1);  b_hat = s_x s_w round(b / (s_x s_w)).
    Without an input scale (float input) the bias stays float.
    """
    q, scale, qb, bscale = quantize_weight(target, w, bias, x_scale, bits, axis)
    axis = axis if target.per_channel else None
    w_hat = numerics.dequantize(q, scale, np.zeros(scale.shape, np.int64), axis)
    if qb is None:
        return w_hat, bias
    return w_hat, numerics.dequantize(qb, bscale, np.zeros(bscale.shape, np.int64),
                                      0 if bscale.ndim else None)


def activation_encodings(spec: QuantSpec, ranges: Mapping[str, Range], target, bits: int) -> dict:
    """Encoding per activation tensor: the union of its class's ranges (as EmitQDQ computes it)."""
    classes: dict[str, list[str]] = {}
    for t in spec.act_tensors:
        classes.setdefault(spec.encoding_of[t], []).append(t)
    out = {}
    for rep, members in classes.items():
        missing = [t for t in members if t not in ranges]
        if missing:
            raise UnsupportedModelError(f"no activation range for tensor '{missing[0]}'")
        lo, hi = min(ranges[t].lo for t in members), max(ranges[t].hi for t in members)
        out[rep] = activation_encoding(target, lo, hi, bits)
    return {t: out[spec.encoding_of[t]] for t in spec.act_tensors}


def _absorb(graph: gs.Graph, spec: QuantSpec) -> None:
    """Remove each absorbed Relu/Clip: its producer writes the activation's output tensor."""
    nodes, tensors = {node_label(n): n for n in graph.nodes}, graph.tensors()
    for act_name, src in spec.absorbed.items():
        act, producer = nodes[act_name], tensors[src].inputs[0]
        out = act.outputs[0]
        act.outputs.clear()
        act.inputs.clear()
        producer.outputs.clear()
        producer.outputs.append(out)


def _quantize_activations(graph: gs.Graph, spec: QuantSpec, encodings: dict, target) -> dict:
    """Q/DQ on every activation tensor and elementwise constant; returns DQ tensor name -> encoding."""
    _absorb(graph, spec)
    tensors, shared, by_dq = graph.tensors(), {}, {}
    for name in spec.act_tensors:
        rep = spec.encoding_of[name]
        if rep not in shared:
            shared[rep] = encodings[rep].constants(rep)
        by_dq[insert_activation_qdq(graph, tensors[name], encodings[rep], shared[rep]).name] = encodings[rep]
    nodes = {node_label(n): n for n in graph.nodes}
    for node_name, const_name in spec.const_inputs:
        _quantize_constant(graph, nodes[node_name], const_name, target)
    return by_dq


def _quantize_constant(graph: gs.Graph, node: gs.Node, const_name: str, target) -> None:
    """A float constant input of an elementwise op through Q/DQ (as EmitQDQ._quantize_constant_input)."""
    for i, t in enumerate(node.inputs):
        if t.name == const_name and isinstance(t, gs.Constant):
            values, bits = const_values(t).astype(np.float32), target.default_act_bits
            enc = activation_encoding(target, float(values.min()), float(values.max()), bits)
            q = numerics.quantize(values, enc.scale, enc.zero_point, bits, enc.dtype.startswith("int"))
            replace_with_dq(graph, node, i, q, enc, f"{node_label(node)}_{const_name}")


def _branch(node: gs.Node, layer, w: np.ndarray, b: np.ndarray | None, tag: str, opset: int) -> gs.Graph:
    """A one-node subgraph: `node` with constant weight `w` (and bias `b`), other inputs from outside."""
    ins = list(node.inputs)
    ins[1] = gs.Constant(f"{tag}_weight", np.ascontiguousarray(w, np.float32))
    if layer.bias is not None:
        ins[2] = gs.Constant(f"{tag}_bias", np.ascontiguousarray(b, np.float32))
    out = gs.Variable(f"{tag}_output", dtype=np.float32)
    body = gs.Node(node.op, name=tag, inputs=ins, outputs=[out], attrs=dict(node.attrs))
    return gs.Graph(nodes=[body], outputs=[out], name=tag, opset=opset)


def _switch(graph: gs.Graph, node: gs.Node, layer, slots: list, conds: list[gs.Variable]) -> None:
    """Replace `node` by If(select == 0, slot 0, If(select == 1, slot 1, ... slot K))."""
    label, opset, out = node_label(node), graph.opset, node.outputs[0]
    tail = _branch(node, layer, *slots[-1], f"{label}_slot{len(slots) - 1}", opset)
    for k in range(len(slots) - 2, -1, -1):
        result = out if k == 0 else gs.Variable(f"{label}_switch{k}_output", dtype=np.float32)
        switch = gs.Node("If", name=f"{label}_switch{k}", inputs=[conds[k]], outputs=[result], attrs={
            "then_branch": _branch(node, layer, *slots[k], f"{label}_slot{k}", opset), "else_branch": tail})
        if k:
            tail = gs.Graph(nodes=[switch], outputs=[result], name=f"{label}_else{k}", opset=opset)
    node.outputs.clear()
    graph.nodes.append(switch)


def _slot(w, b, x_scale, bits: int, layer, target, node, mean) -> tuple:
    """Emit's weights at `bits`; with `mean` = (E[x], tap fractions), the bias carries CorrectBias's
    correction b - (W_hat - W) E[x] (passes/bias_correction.py)."""
    if mean is None or b is None:
        return emitted_weight(w, b, x_scale, bits, layer.axis, target)
    from dfq_onnx.corrections.formulas import mean_shift
    from dfq_onnx.corrections.layer_pairs import linear_kind

    w_hat, _ = emitted_weight(w, b, x_scale, bits, layer.axis, target)
    b_corr = (b - mean_shift(w_hat, w, mean[0], linear_kind(node), mean[1])).astype(np.float32)
    return emitted_weight(w, b_corr, x_scale, bits, layer.axis, target)


def _select_weights(graph: gs.Graph, spec: QuantSpec, groups, bits: tuple[int, ...], by_dq: dict,
                    target, input_means: Mapping[str, tuple] | None = None) -> dict[str, str]:
    """Replace every weighted layer by a switch over its K+1 weight slots, driven by select_<group>."""
    nodes = {node_label(n): n for n in graph.nodes}
    selects: dict[str, str] = {}
    done: dict[str, list[np.ndarray]] = {}   # shared weight -> its slots (later readers keep a float bias)
    for group in groups:
        if not group.layers:
            continue
        select = gs.Variable(f"select_{group.id}", dtype=np.int64, shape=[])
        graph.inputs.append(select)
        selects[group.id] = select.name
        conds = [gs.Variable(f"select_{group.id}_is{k}", dtype=np.bool_, shape=[]) for k in range(len(bits))]
        for k, cond in enumerate(conds):
            graph.nodes.append(gs.Node("Equal", name=f"{cond.name}_Equal", outputs=[cond], inputs=[
                select, gs.Constant(f"{cond.name}_slot", np.array(k, np.int64))]))
        for name in group.layers:
            node, layer = nodes[name], spec.layers[name]
            b = const_values(node.inputs[2]).astype(np.float32) if layer.bias else None
            if layer.weight in done:
                slots = [(w, b) for w in done[layer.weight]]
            else:
                w = const_values(node.inputs[1]).astype(np.float32)
                x_enc = by_dq.get(node.inputs[0].name)
                x_scale = None if x_enc is None else float(x_enc.scale)
                mu = (input_means or {}).get(name)
                slots = [(w, b)] + [_slot(w, b, x_scale, k, layer, target, node, mu) for k in bits]
                done[layer.weight] = [s[0] for s in slots]
            _switch(graph, node, layer, slots, conds)
    return selects


@dataclass(frozen=True)
class ProbeModel:
    model: object                    # onnx.ModelProto
    bits: tuple[int, ...]            # weight bits of slots 1..K (slot 0 is FP32)
    selects: dict[str, str]          # group id -> its int64 select input
    inputs: tuple[str, ...]          # the model's data inputs
    graph: gs.Graph | None = None        # the probe as a gs graph (for dfq_onnx.sensitivity.segments)
    fast_graph: gs.Graph | None = None   # the same before switching: FP32 weights, activation Q/DQ
    layer_group: dict | None = None      # weighted layer -> group id


def build_probe(graph: gs.Graph, spec: QuantSpec, groups: list[QuantGroup], ranges: Mapping[str, Range],
                target, weight_bits: tuple[int, ...], act_bits: int,
                quantize_activations: bool = True,
                input_means: Mapping[str, tuple] | None = None) -> ProbeModel:
    """The probe model for `weight_bits` candidates (see the module docstring); `graph` is untouched."""
    g = ir.copy_graph(graph)
    inputs = tuple(t.name for t in g.inputs)
    by_dq: dict[str, Encoding] = {}
    if quantize_activations:
        encodings = activation_encodings(spec, ranges, target, act_bits)
        by_dq = _quantize_activations(g, spec, encodings, target)
    fast = ir.copy_graph(g).cleanup().toposort()
    selects = _select_weights(g, spec, groups, tuple(weight_bits), by_dq, target, input_means)
    g.cleanup().toposort()
    model = ir.to_model(g, ir_version=ir.min_ir_version(g.opset))
    if model.ByteSize() > ir.TWO_GB:
        raise UnsupportedModelError(f"the probe model ({model.ByteSize() / 2**30:.1f} GB) exceeds 2 GB; "
                                    "score fewer weight candidates")
    log.debug("probe: %d groups, %d nodes, %.1f MB", len(selects), len(g.nodes), model.ByteSize() / 2**20)
    layer_group = {layer: grp.id for grp in groups for layer in grp.layers}
    return ProbeModel(model, tuple(weight_bits), selects, inputs, g, fast, layer_group)


def session(model, optimize: bool = True, threads: int = 0,
            fuse_qdq: bool = True) -> ort.InferenceSession:
    """A CPU session; `optimize=False` runs the graph as written (no fusion into integer kernels);
    `fuse_qdq=False` keeps the other optimizations (layouts, Conv+activation fusion) but runs Q/DQ as
    written, so segments of one probe compute the same function however they are cut."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not fuse_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        # many small sessions run back to back: idle pools must not spin on the cores the next one needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(ir.serialize(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"ONNX Runtime cannot load the probe model: {first}") from None


class Probe:
    """One session over a ProbeModel; `run(config, feeds)` evaluates a configuration.

    A configuration maps group id -> weight bits (one of `bits`) or None (FP32); absent groups are FP32.
    """

    def __init__(self, probe: ProbeModel, optimize: bool = True, threads: int = 0, segmented: bool = False,
                 samples: int | None = None):
        self.probe = probe
        self.session = session(probe.model, optimize, threads)
        self.slot = {FP32: 0, **{b: i + 1 for i, b in enumerate(probe.bits)}}
        self.runner = None
        if segmented and probe.graph is not None:
            from dfq_onnx.sensitivity.segments import CACHE_BYTES, SegmentedRunner

            bound = None if samples is None else CACHE_BYTES // 4 // max(samples, 1)
            self.runner = SegmentedRunner(
                probe.graph, probe.fast_graph, probe.layer_group, probe.selects, probe.inputs,
                lambda m: session(m, optimize, threads, fuse_qdq=False), max_cache_elements=bound)

    def run_batch(self, config: Mapping[str, int | None], feeds: dict[str, np.ndarray],
                  key=None) -> list[np.ndarray]:
        """Outputs for `config` on one batch; with a segmented runner and a batch `key`, from the first
        segment the configuration changes (dfq_onnx.sensitivity.segments)."""
        select = self.select_feeds(config)
        if self.runner is None or key is None:
            return self.session.run(None, {**feeds, **select})
        changed = {g for g, b in config.items() if b is not FP32}
        by_group = {g: select[name] for g, name in self.probe.selects.items()}
        return self.runner.run(key, feeds, by_group, changed)

    def select_feeds(self, config: Mapping[str, int | None]) -> dict[str, np.ndarray]:
        unknown = sorted(set(config) - set(self.probe.selects))
        if unknown:
            raise UnsupportedModelError(f"group '{unknown[0]}' has no weights in the probe model")
        bad = [b for b in config.values() if b not in self.slot]
        if bad:
            raise UnsupportedModelError(f"weight bits {bad[0]} not among the probe's candidates "
                                        f"{self.probe.bits}")
        return {name: np.array(self.slot[config.get(g)], np.int64) for g, name in self.probe.selects.items()}

    def run(self, config: Mapping[str, int | None], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {**feeds, **self.select_feeds(config)})


class Evaluator:
    """Loss of configurations at the model output: on all samples and on two half-batches.

    The FP32 reference outputs are computed once (one plain forward pass) and kept; each distinct
    configuration is run once (memoized). `loss(config)` returns [all, even rows, odd rows] of the loss
    vs the FP32 model; `relative(config)` the same vs the probe's own outputs with every weight FP32
    (activations still quantized): the damage the weights add on top of activation quantization. That
    one is >= 0 for kl/mse/sqnr and has no cross term with the activation noise (which averages to 0 but
    makes small vs-FP32 differences noisy, often negative), so the scorer builds its terms from it.
    """

    def __init__(self, probe: Probe, reference_model, samples: dict[str, np.ndarray],
                 labels: np.ndarray | None, metric: str, batch: int | None = None,
                 producers: dict | None = None):
        self.probe, self.samples, self.labels = probe, samples, labels
        self.n = len(next(iter(samples.values())))
        self.batch = batch or self.n
        self.evaluations = self.forward_passes = 0
        ref = session(reference_model)
        self.reference = self._forward(lambda feeds, _key: ref.run(None, feeds))
        names = [o.name for o in probe.session.get_outputs()]
        self.kinds = resolve_metrics(metric, self.reference, labels, names, producers)
        self.halves = (np.arange(0, self.n, 2), np.arange(1, self.n, 2))
        self._memo: dict[frozenset, np.ndarray] = {}
        self._relative: dict[frozenset, np.ndarray] = {}
        self._base: list[np.ndarray] | None = None

    def _forward(self, run) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = []
        for start in range(0, self.n, self.batch):
            res = run({k: v[start:start + self.batch] for k, v in self.samples.items()}, start)
            self.forward_passes += 1
            outs = outs or [[] for _ in res]
            for acc, r in zip(outs, res):
                acc.append(r)
        return [np.concatenate(a, axis=0) for a in outs]

    def loss(self, config: Mapping[str, int | None]) -> np.ndarray:
        key = frozenset((g, b) for g, b in config.items() if b is not FP32)
        if key not in self._memo:
            if key and self._base is None:
                self.loss({})
            outs = self.outputs(config)
            self.evaluations += 1
            if not key:
                self._base = outs
            rows = (None, *self.halves)
            self._memo[key] = np.array([total_loss(self.kinds, self.reference, outs, self.labels, r)
                                        for r in rows])
            self._relative[key] = np.array([total_loss(self.kinds, self._base, outs, self.labels, r)
                                            for r in rows])
        return self._memo[key]

    def outputs(self, config: Mapping[str, int | None]) -> list[np.ndarray]:
        """The probe's outputs for `config` on all samples (one forward pass per batch, not memoized)."""
        return self._forward(lambda feeds, key: self.probe.run_batch(config, feeds, key))

    def relative(self, config: Mapping[str, int | None]) -> np.ndarray:
        """Like `loss`, against the all-FP32-weights probe outputs instead of the FP32 model."""
        self.loss(config)
        return self._relative[frozenset((g, b) for g, b in config.items() if b is not FP32)]

    def seen(self, config: Mapping[str, int | None]) -> bool:
        return frozenset((g, b) for g, b in config.items() if b is not FP32) in self._memo
