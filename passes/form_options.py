"""Form options: does their static layout pay on the target, and which ranges forbid it.

A MatMul with a [forms] candidate in a model with an integer region is laid out static, its form the
alternative (passes/quant_groups.py `form_option`; passes/settle_forms.py settles each). Static is chosen
only where it is within the accuracy budget (the activation decision) AND not slower. The latency side:

    static   x ─Q─DQ─► MatMul(W8) ─Q─DQ─► ...     QLinearMatMul; LayerNorm, Softmax, residual Adds, the
                                                  attention products integer beside it (or not at all)
    form     x ──────► DynamicQuantizeMatMul ──►  cheaper per MAC (ort-cpu declares 0.37 vs 0.58) but
                                                  everything around it float

Which wins depends on the shapes, not only on the per-MAC tables: PP-OCRv4 rec's SVTR neck (40 tokens x
120) does the same work static or in its form (1.02-1.03 at batch 1, single thread) and runs faster
static at batch 32 on 2 threads (0.875 of the form's time), where the float neighbours' per-op costs
add up; a ViT (197 tokens x 384) does 1.10-1.19x the work static, where the MACs dominate
(BENCHMARKS.md, issue 14 sessions 14-15). The target's tables predict neither: they price a float group
by its elements as an island in a convolutional model (130 FP32 MACs each), which calls the ViT's
static layout cheaper. So the default plan measures:

    measured   both whole models (every option static / every option in its form; batch 1 at the
               compile's input shape, placeholder ranges: kernel speed does not depend on the values)
               compared by single-thread CPU time in alternating rounds (backends/cpu_work.py: the load
               of a shared machine barely moves it, where wall time spread 0.3-4.6 per round),
               r_i = least static CPU time of round i / least form CPU time of round i; static stays iff
               median(r) <= 1 + integer_pays.MARGIN: not slower within the drift of a timing (KeepFloat's
               margin). A tie goes to static: it is ORT quantize_static's own layout, runs the
               neighbours integer and scales better over threads (rec above). Cached by model, target,
               input shapes, the options and their layout, runtime and CPU: a compile with the cache
               reproduces its output byte for byte.
    modeled    `--no-latency-check`, a --latency-table, a target runtime not timed here, a model too small
               to time (keep_float.MIN_MACS) or without concrete shapes: static stays iff the target
               declares every option's static kernel no dearer per MAC than its form (the neighbours it
               takes integer only save more). On ort-cpu every option keeps its form: the output is the
               one without options.

WeighFormOptions runs right after FindQuantGroups, before synthesis and calibration: when static does
not pay, the spec is built without options and nothing later sees them (the output is byte-identical to
a compile without the choice). SettleForms times again when the activation decision settles only some
options static (a partial static region can pay less than the whole).

Non-finite ranges: an attention product laid out static quantizes its Softmax input, which reads a -inf
mask in a Hugging Face BERT (`Where(mask, -inf)`); `settle_nonfinite` gives the options whose static
layout draws such a tensor into the spec their form (passes/calibrate.py), so the tensor stays float.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics

import numpy as np

from dfq_onnx.backends import cpu_work, forms, integer_pays
from dfq_onnx.backends.act_precision import build_act_groups
from dfq_onnx.backends.latency import concrete
from dfq_onnx.backends.memory import release
from dfq_onnx.core import cache, ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import is_float, node_label
from dfq_onnx.core.pass_base import Pass, PassResult, run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import FLOAT_BITS, CompileState, Range

ENGINE = 1            # bump when the rule changes: cached decisions are then ignored


def options_of(state: CompileState) -> list[str]:
    return [k for k, layer in state.spec.layers.items() if layer.form_option]


def settled_forms(state: CompileState) -> frozenset[str]:
    """The layers already in their form (a form the spec keeps when it is built again)."""
    return frozenset(k for k, layer in state.spec.layers.items() if layer.form)


def respec(state: CompileState, formed) -> None:
    """Spec and groups built again with `formed` (and the forms already settled) in their form."""
    from dfq_onnx.passes.quant_groups import build_groups, build_spec

    spec = build_spec(state.graph, state.target, True, settled_forms(state) | frozenset(formed))
    state.spec, state.groups = spec, build_groups(state.graph, spec)
    state.act_groups = build_act_groups(state.graph, spec, state.target)


def option_groups(state: CompileState) -> tuple[str, ...]:
    """Activation groups holding the input of a form option (passes/settle_forms.py): float there hands
    the MatMul to its [forms] candidate."""
    nodes = {node_label(n): n for n in state.graph.nodes}
    inputs = {nodes[k].inputs[0].name for k, layer in state.spec.layers.items() if layer.form_option}
    return tuple(ag.id for ag in state.act_groups if inputs & set(ag.tensors))


def form_fed(state: CompileState, ag) -> bool:
    """Every weighted reader of `ag` is a form option: float costs no float island, the form quantizes its
    input itself (its declared [forms] cost per MAC includes that) and no layout changes around it."""
    weighted = [r for r in ag.readers if state.spec.layers[r].role == "weighted"]
    return bool(weighted) and all(state.spec.layers[r].form_option for r in weighted)


def kept_forms(state: CompileState, nodes: tuple[str, ...], a: int) -> tuple[str, ...]:
    """`nodes` without the form options a float precision hands to their [forms] candidate
    (passes/settle_forms.py), when the target declares that form no dearer per MAC than the static kernel:
    they keep an integer kernel."""
    if a != FLOAT_BITS:
        return nodes
    target, layers = state.target, state.spec.layers
    cost_int = target.cost.get((target.default_weight_bits, target.default_act_bits), 1.0)
    return tuple(r for r in nodes if not (layers[r].form_option and _form_cost(state, r) <= cost_int))


def _form_cost(state: CompileState, name: str) -> float:
    """The declared cost per MAC of the form a uniform plan gives layer `name` (1.0: float, none fits)."""
    target, layer = state.target, state.spec.layers[name]
    form = forms.uniform_fit(target, layer.op, state.graph.tensors()[layer.weight].shape,
                             target.default_weight_bits, target.default_act_bits)
    return target.form_settings.get("cost", {}).get(form, 1.0) if form is not None else 1.0


def modeled_static(state: CompileState, names: list[str]) -> bool:
    """Static declared no dearer per MAC than the form for every layer of `names` (module docstring)."""
    target = state.target
    cost_int = target.cost.get((target.default_weight_bits, target.default_act_bits), 1.0)
    return all(cost_int <= _form_cost(state, n) for n in names)


def integer_model(state: CompileState, batch: int = 1):
    """The integer model of `state`'s spec and plan (UniformPlan when it has none) at `batch`, ranges
    missing a measurement filled with a placeholder."""
    from dfq_onnx.passes.emit_qdq import emitted_graph
    from dfq_onnx.passes.plan_uniform import UniformPlan

    ranges = {t: state.ranges.get(t, Range(-1.0, 1.0, "timing")) for t in state.spec.act_tensors}
    st = dataclasses.replace(state, report=Report(), ranges=ranges, bn_stats={}, weight_gain={})
    if st.plan is None:
        run_passes([UniformPlan()], st)
    g = concrete(emitted_graph(st, st.plan), batch)
    return ir.to_model(g, ir_version=ir.min_ir_version(g.opset))


def _timeable(state: CompileState) -> str | None:
    """Why the options cannot be timed (None: they can)."""
    from dfq_onnx.passes.keep_float import MIN_MACS, model_macs

    opts = state.options
    if not opts.latency_check or opts.latency_table:
        return "latency check off" if not opts.latency_check else "a latency table is given"
    if state.target.runtime != "onnxruntime":
        return f"target runtime '{state.target.runtime}' is not timed here"
    if model_macs(state) < MIN_MACS:
        if model_macs(state, symbolic=1) >= MIN_MACS:     # the count left out the dynamic dimensions
            return "MACs not known at the dynamic dimensions (pass --input-shape)"
        return f"under {MIN_MACS} MACs per sample"
    return None


def _key(state: CompileState, static_state: CompileState, static: list[str], formed: list[str]) -> dict:
    t = state.target
    layout = hashlib.sha256("\n".join(sorted(static_state.spec.act_tensors)).encode()).hexdigest()[:16]
    return {"model": state.model_hash, "target": [t.name, t.default_weight_bits, t.default_act_bits],
            "input_shapes": {k: list(v) for k, v in sorted(state.options.input_shapes.items())},
            "static": sorted(static), "form": sorted(formed), "quantized": layout,
            "runtime": integer_pays.runtime_version(t.runtime), "cpu": integer_pays.cpu_name(),
            "engine": ENGINE, "margin": integer_pays.MARGIN}


def static_pays(state: CompileState, static_state: CompileState, form_state: CompileState,
                static: list[str]) -> dict:
    """Whether `static_state`'s layout, with the options `static` static, is not slower than
    `form_state`'s, with them in their form (module docstring): a note with "static_pays", "source" and
    the figures."""
    formed = sorted(settled_forms(static_state))
    why = _timeable(state)
    if why is None:
        try:
            return _measured(state, static_state, form_state, static, formed)
        except UsageError as exc:                  # e.g. a dynamic dimension without --input-shape
            why = f"not timed: {exc}"
    pays = modeled_static(form_state, static)
    return {"source": f"modeled ({why})", "static_pays": pays}


def _measured(state, static_state, form_state, static: list[str], formed: list[str]) -> dict:
    opts = state.options
    path = cache.cache_path("form-latency", _key(state, static_state, static, formed), opts.cache_dir)
    hit = cache.load_npz(path) if opts.use_cache else None
    if hit is None:
        m = cpu_work.paired_cpu(integer_model(form_state), integer_model(static_state))
        ratios, form_ms, static_ms = m["ratios"], m["first_ms"], m["second_ms"]
        if opts.use_cache:
            cache.save_npz_atomic(path, {"ratios": np.asarray(ratios), "form_ms": np.asarray(form_ms),
                                         "static_ms": np.asarray(static_ms)})
    else:
        ratios, form_ms, static_ms = ([float(r) for r in hit["ratios"]], float(hit["form_ms"]),
                                      float(hit["static_ms"]))
    ratio = statistics.median(ratios)
    return {"source": "measured" + (" (cached)" if hit is not None else ""), "batch": 1, "threads": 1,
            "static_cpu_ms": round(static_ms, 4), "form_cpu_ms": round(form_ms, 4), "ratio": round(ratio, 4),
            "ratios": [round(r, 4) for r in ratios], "margin": integer_pays.MARGIN,
            "static_pays": bool(ratio <= 1.0 + integer_pays.MARGIN)}


def without_options(state: CompileState, formed=None) -> CompileState:
    """A copy of `state` with `formed` (default: every option) in its form (no plan)."""
    st = dataclasses.replace(state, report=Report(), plan=None)
    respec(st, options_of(state) if formed is None else formed)
    return st


def settle_nonfinite(state: CompileState, bad: set[str]) -> list[str]:
    """Give their form the options whose static layout quantizes a tensor of `bad` (non-finite on the
    calibration data): the options first met downstream of each such tensor, then, if one is still
    quantized, every option. Returns the options settled (none: the tensors are not the options')."""
    if not options_of(state):
        return []
    formed: set[str] = set()
    frontier = [t for t in state.graph.tensors().values() if t.name in bad]
    seen: set[int] = set()
    while frontier:
        t = frontier.pop()
        for node in t.outputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            label = node_label(node)
            if label in state.spec.layers and state.spec.layers[label].form_option:
                formed.add(label)           # the first option downstream: its static layout reaches back
            else:
                frontier += [o for o in node.outputs if is_float(o)]
    before = options_of(state)
    respec(state, formed)
    if bad & set(state.spec.act_tensors):
        respec(state, options_of(state))
    return [k for k in before if k not in options_of(state)]


class WeighFormOptions(Pass):
    """Analysis: the form options stay static only where static is not slower (measured, or modeled)."""

    name = "WeighFormOptions"

    def run(self, state: CompileState) -> PassResult:
        names = options_of(state)
        if not names:
            return PassResult(False, "no form options")
        base = without_options(state)
        note = static_pays(state, state, base, names)
        release()                    # the timing sessions' heap back to the system before synthesis
        note["options"] = len(names)
        state.report.notes["form_latency"] = note
        if note["static_pays"]:
            return PassResult(False, f"{len(names)} MatMuls may be static ({note['source']})")
        state.spec, state.groups, state.act_groups = base.spec, base.groups, base.act_groups
        return PassResult(False, f"static not faster ({note['source']}): "
                                 f"{len(names)} MatMuls keep their form")

