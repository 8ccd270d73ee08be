"""Keep the model float where its integer form does not pay on the target.

Two sources say whether it pays, both whole-model:

* a measured latency table (`--latency-table`, written by `dfq-onnx profile-target TARGET MODEL` on the
  machine that will run it): `model_ms(default pair) < fp32_ms` at the table's batch;
* without a table, for the default plan (no budget, no --weight-bits / --act-bits), the compile times
  the normalized FP32 graph against the default integer plan itself, at batch 1 of the compile's input
  shape (`dfq_onnx.backends.integer_pays`: alternating rounds of single-thread CPU time, "slower" only
  when the median over rounds of the round's least integer call over its least FP32 call is above
  1 + `integer_pays.MARGIN`).
  It runs after calibration, so the timed integer model is the output
  the compile would write (its ranges decide which Q/DQ pairs fold away, e.g. a Div rescale), before
  the activation decision and the bias correction (which change values, not kernels). The
  measurement is cached (model, target, input shapes, runtime, CPU), so
  a compile with the cache reproduces its output; `--no-latency-check` turns it off. Models under
  `MIN_MACS` multiply-accumulates per sample are not timed: there a session call's fixed cost, not the
  kernels, decides and the time at stake is microseconds.

The activation decision (passes/act_precision.py) runs later and may leave groups float past the cost
allowance (a broken all-A8 plan: accuracy first), so the written plan has float islands with Q/DQ at
their edges that the first timing did not see and the target's cost model did not price. `KeepFloatChosen`
re-times that plan (the same rule, its own cache entry keyed by the chosen precisions) when KeepFloat
measured the all-A8 plan paying and the joint check put groups float past the allowance; if it is
slower than FP32, FP32 is both faster and exact there, and the model is written float (a Conv - ReLU -
BN digits CNN whose two BN outputs the decision floats: 1.5x FP32 at batch 32). Floats the ILP took
within the allowance were priced by the target's cost model at most `act_cost_allowance` of the all-A8
plan's cost; that plan is timed against the all-A8 plan instead, and measured beyond the allowance
(median ratio above 1 + allowance + MARGIN) those floats go back to the default bits (CREPE full: three
allowance floats 1.2x the all-A8 plan; BENCHMARKS.md, session 23). Where that timing runs, the activation
decision chooses the outliers its screen found without the allowance (the cost model priced PP-OCRv5
rec's six at 13x the allowance; measured they cost 6 %): the chosen plan is timed the same way, kept
within the line; beyond it, the longest prefix of those outliers (chains of them whole, ordered by what
each buys in the chosen plan on the activation probe) whose plan times within the line is kept
(passes/outlier_fallback.py: a bisection, a few cached timings), and only when none fits does the
allowance's own choice replace it (timed in turn if it has floats).

When the integer form does not pay (a small model of depthwise convolutions and elementwise ops, whose
integer kernels and Q/DQ pairs cost more than the float kernels they replace), every quantizer group
stays float: the output is the normalized FP32 graph, with the figures and the reason in the report's
`keep_float` note. Mixed-precision budgets leave the choice to the allocator.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs
from dfq_onnx.passes import outlier_fallback

from dfq_onnx.allocation.costs import layer_macs
from dfq_onnx.backends import integer_pays
from dfq_onnx.backends.latency import LatencyTable, concrete
from dfq_onnx.backends.memory import release
from dfq_onnx.core import cache, ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.pass_base import Pass, PassResult, run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import FLOAT_BITS, BitPlan, CompileState, QuantSpec, Range

log = logging.getLogger(__name__)
MIN_MACS = 1_000_000     # below: not timed (module docstring)


class KeepFloat(Pass):
    """Drop every quantizer when the integer model is slower than FP32 (a latency table, or measured)."""

    name = "KeepFloat"

    def __init__(self, latency_table: str | None = None):
        self.path = latency_table

    def run(self, state: CompileState) -> PassResult:
        note = _from_table(state, self.path) if self.path else _measured(state)
        state.report.notes["keep_float"] = note
        pays = note.get("integer_pays")
        if pays is None or pays:
            why = note.get("skipped") or ("integer form pays" if pays else "table has no whole-model timings")
            return PassResult(False, why)
        return PassResult(False, _drop(state, note, "integer model"))


def _drop(state: CompileState, note: dict, what: str) -> str:
    """Every quantizer group float (the output is the normalized FP32 graph); the warning and the pass
    line."""
    dropped = len(state.groups)
    state.spec = QuantSpec(layers={}, act_tensors=(), encoding_of={}, absorbed={}, const_inputs=())
    state.groups = []
    state.act_groups = []
    if state.plan is not None:
        state.plan = BitPlan({})
    log.warning("the %s ran slower than FP32 (%.3f vs %.3f ms at batch %d, %s): writing the model float",
                what, note["integer_ms"], note["fp32_ms"], note["batch"], note["source"])
    return (f"{what} does not pay ({note['integer_ms']:.3f} ms vs FP32 {note['fp32_ms']:.3f} ms at batch "
            f"{note['batch']}): {dropped} groups float")


def measured_pays(state: CompileState) -> bool:
    """Whether KeepFloat timed the all-integer plan on the target's runtime and it paid (KeepFloatChosen
    re-times the chosen plan only then)."""
    first = state.report.notes.get("keep_float", {})
    return bool(first.get("integer_pays")) and str(first.get("source", "")).startswith("measured")


class KeepFloatChosen(Pass):
    """After the activation decision: drop every quantizer when the chosen plan, with the float groups a
    broken plan's joint check took, is slower than FP32; put floats taken within the allowance back to
    the default bits when they cost more than the allowance measured (module docstring)."""

    name = "KeepFloatChosen"

    def __init__(self, samples: int | None = None, metric: str = "auto"):
        self.samples, self.metric = samples, metric       # the activation decision's (its probe's rows)

    def run(self, state: CompileState) -> PassResult:
        first = state.report.notes.get("keep_float", {})
        floats = sorted(k for k, a in (state.plan.acts if state.plan else {}).items() if a == FLOAT_BITS)
        act = state.report.notes.get("activations", {})
        past = act.get("joint", {}).get("applied") and not act.get("reverted")
        if not measured_pays(state) or not floats:
            return PassResult(False, "no float group chosen after a measured all-integer plan: not re-timed")
        if not past:
            scoring = (self.samples, self.metric)
            return _within_allowance(state, first, floats, act.get("measured_cost"), scoring)
        m, cached = _cached_measure(state, state.target.runtime, acts=state.plan.acts)
        note = {"source": "measured" + (" (cached)" if cached else ""), "batch": 1, "float_groups": floats,
                "fp32_ms": m["fp32_ms"], "integer_ms": m["int_ms"], "ratio": round(m["ratio"], 4),
                "ratios": [round(r, 4) for r in m["ratios"]], "integer_pays": not m["integer_slower"]}
        first["chosen_plan"] = note
        if note["integer_pays"]:
            return PassResult(False, f"chosen plan ({len(floats)} float groups) pays: "
                                     f"{note['integer_ms']:.3f} ms vs FP32 {note['fp32_ms']:.3f} ms")
        what = f"chosen plan ({len(floats)} float activation groups)"
        return PassResult(False, _drop(state, note, what))


def _within_allowance(state: CompileState, first: dict, floats: list[str],
                      unpriced: dict | None = None, scoring: tuple = (None, "auto")) -> PassResult:
    """Floats the ILP took within the cost allowance (module docstring): the chosen plan timed against the
    all-A8 plan; measured beyond the allowance (median ratio > 1 + allowance + MARGIN) -> they go back to
    the default bits. `unpriced` (the activation note's `measured_cost`): the plan's outliers were chosen
    without the allowance; beyond it, the fallback (`_priced`; `scoring`: the decision's samples and
    metric)."""
    t = _against_base(state, state.plan.acts)
    m, line, beyond = t["m"], t["note"]["line"], not t["within"]
    first["chosen_plan"] = t["note"]
    if unpriced is not None:
        unpriced["kept"] = not beyond
    if not beyond:
        which = f"{len(unpriced['past_allowance'])} past the allowance" if unpriced else "within it"
        return PassResult(False, f"chosen plan ({len(floats)} float groups, {which}) "
                                 f"{m['ratio']:.3f}x the all-base plan: kept")
    if unpriced is not None:
        return _priced(state, first, unpriced, m["ratio"], scoring)
    base = state.target.default_act_bits
    state.plan = BitPlan(state.plan.bits, acts={k: a for k, a in state.plan.acts.items() if a != FLOAT_BITS})
    for k, o in state.report.notes.get("activations", {}).get("outliers", {}).items():
        if k in floats:
            o["proposed"], o["choice"] = o["choice"], base
    log.warning("the chosen plan's %d float activation groups ran %.2fx the all-A%d plan (allowance %.0f %%):"
                " kept at A%d", len(floats), m["ratio"], base, 100 * state.target.act_cost_allowance, base)
    return PassResult(False, f"chosen plan's {len(floats)} float groups {m['ratio']:.3f}x the all-base plan "
                             f"(> {line:.3f}): back to A{base}")


def _against_base(state: CompileState, acts: dict[str, int]) -> dict:
    """The plan with `acts` timed against the all-base plan (cached): {"m", "ratio", "within" the line
    1 + allowance + MARGIN, "note" for the report}."""
    m, cached = _cached_measure(state, state.target.runtime, acts=acts, against_base=True)
    line = 1.0 + state.target.act_cost_allowance + integer_pays.MARGIN
    within = bool(float(np.median(m["ratios"])) <= line)
    floats = sorted(k for k, a in acts.items() if a == FLOAT_BITS)
    note = {"source": "measured" + (" (cached)" if cached else ""), "batch": 1, "float_groups": floats,
            "against": "all-base plan", "base_ms": m["fp32_ms"], "chosen_ms": m["int_ms"],
            "ratios": [round(r, 4) for r in m["ratios"]], "line": round(line, 4),
            "floats_dropped": not within}
    return {"m": m, "ratio": m["ratio"], "within": within, "note": note}


def _priced(state: CompileState, first: dict, unpriced: dict, ratio: float, scoring: tuple) -> PassResult:
    """The outliers chosen without the allowance cost more than it measured: the prefix of them with the
    most gain measured on the activation probe that times within the line (passes/outlier_fallback.py),
    else the allowance's choice (its floats, if any, timed in turn by `_within_allowance`)."""
    from dfq_onnx.passes.act_terms import plan_loss

    priced = {k: int(a) for k, a in unpriced["priced"].items()}
    base = state.target.default_act_bits
    first["unpriced_plan"] = first.pop("chosen_plan")
    outliers = state.report.notes.get("activations", {}).get("outliers", {})
    fb = outlier_fallback.fallback(priced, dict(state.plan.acts), outliers, unpriced["past_allowance"], base,
                                   state.act_groups, lambda acts: _against_base(state, acts),
                                   plan_loss(state, *scoring))
    release()                       # the probe's sessions, if the fallback built them
    if fb["acts"] is not None:
        return outlier_fallback.apply(state, first, unpriced, fb, ratio)
    if fb["tried"]:
        unpriced["fallback"] = {"kept": [], "tried": fb["tried"]}
    state.plan = BitPlan(state.plan.bits, acts=priced)
    outlier_fallback.give_back(outliers, unpriced["past_allowance"], priced, base)
    log.warning("the outliers chosen past the cost allowance ran %.2fx the all-A%d plan: the allowance's "
                "choice kept", ratio, base)
    floats = sorted(k for k, a in priced.items() if a == FLOAT_BITS)
    if floats:
        return _within_allowance(state, first, floats)
    return PassResult(False, f"outliers past the allowance {ratio:.3f}x the all-base plan: the allowance's "
                             "choice kept")


def _from_table(state: CompileState, path: str) -> dict:
    table = LatencyTable.load(path)
    if table.target != state.target.name:
        raise UsageError(f"--latency-table {path} was measured for target '{table.target}', "
                         f"not '{state.target.name}'; run `dfq-onnx profile-target "
                         f"{state.target.name} MODEL`")
    if table.model_sha256 and state.model_hash and table.model_sha256 != state.model_hash:
        raise UsageError(f"--latency-table {path} was measured on another model; re-run "
                         "`dfq-onnx profile-target` on this one")
    return {"source": str(path), "table": str(path), "batch": table.batch, "fp32_ms": table.fp32_ms,
            "integer_ms": table.model_ms.get(f"{table.base[0]}x{table.base[1]}"),
            "integer_pays": table.integer_pays()}


def model_macs(state: CompileState, symbolic: int | None = None) -> int:
    """Multiply-accumulates per sample of the quantized weighted nodes (a layer with a dynamic dimension
    counts 0, or that dimension as `symbolic`)."""
    nodes = {node_label(n): n for n in state.graph.nodes}
    return sum(layer_macs(nodes[name], symbolic) for name, layer in state.spec.layers.items()
               if layer.role == "weighted" and name in nodes)


def timing_models(state: CompileState, batch: int = 1, acts: dict[str, int] | None = None) -> tuple:
    """(FP32 model, default integer plan's model) at `batch` (`integer_timing_model`)."""
    return _at_batch(state.graph, batch), integer_timing_model(state, batch, acts)


def integer_timing_model(state: CompileState, batch: int = 1, acts: dict[str, int] | None = None):
    """The default integer plan's model at `batch`: the plan (with `acts`, activation group -> precision)
    emitted with the calibrated ranges (a tensor without one gets a placeholder: kernel speed does not
    depend on the values)."""
    from dfq_onnx.passes.emit_qdq import emitted_graph
    from dfq_onnx.passes.plan_uniform import UniformPlan

    ranges = {t: state.ranges.get(t, Range(-1.0, 1.0, "timing")) for t in state.spec.act_tensors}
    st = dataclasses.replace(state, report=Report(), ranges=ranges, plan=None, bn_stats={}, weight_gain={})
    run_passes([UniformPlan()], st)
    return _at_batch(emitted_graph(st, dataclasses.replace(st.plan, acts=dict(acts or {}))), batch)


def _at_batch(graph: gs.Graph, batch: int):
    g = concrete(graph, batch)
    return ir.to_model(g, ir_version=ir.min_ir_version(g.opset))


def _key(state: CompileState, runtime: str) -> dict:
    t = state.target
    return {"model": state.model_hash, "target": [t.name, t.default_weight_bits, t.default_act_bits],
            "input_shapes": {k: list(v) for k, v in sorted(state.options.input_shapes.items())},
            "runtime": integer_pays.runtime_version(runtime), "cpu": integer_pays.cpu_name(),
            "threads": integer_pays.THREADS, "engine": integer_pays.ENGINE}


def _cached_measure(state: CompileState, runtime: str, acts: dict[str, int] | None = None,
                    against_base: bool = False) -> tuple[dict, bool]:
    """The timing of the default plan (with `acts`: the chosen activation precisions, keyed by them)
    against FP32, or with `against_base` against the all-base plan (then "fp32_ms" is that plan's)."""
    opts = state.options
    key = _key(state, runtime)
    if acts:
        key["acts"] = {k: int(a) for k, a in sorted(acts.items())}
    if against_base:
        key["against"] = "base"
    path = cache.cache_path("latency-check", key, opts.cache_dir)
    hit = cache.load_npz(path) if opts.use_cache else None
    if hit is not None:
        ratios = [float(r) for r in hit["ratios"]]
        return {"fp32_ms": float(hit["fp32_ms"]), "int_ms": float(hit["int_ms"]), "ratios": ratios,
                "rounds": len(ratios), "calls": int(hit["calls"]), **integer_pays.decided(ratios)}, True
    chosen = integer_timing_model(state, acts=acts)
    reference = integer_timing_model(state) if against_base else _at_batch(state.graph, 1)
    m = integer_pays.measure(runtime, reference, chosen)
    release()       # the timed sessions' heap back before the next pass (backends/memory.py: glibc keeps it)
    if opts.use_cache:
        cache.save_npz_atomic(path, {k: np.asarray(m[k]) for k in ("fp32_ms", "int_ms", "ratios", "calls")})
    return m, False


def _measured(state: CompileState) -> dict:
    """The whole-model check without a table (module docstring); {"skipped": why} when not timed."""
    runtime = state.target.runtime
    macs = model_macs(state)
    if macs < MIN_MACS:
        per_position = model_macs(state, symbolic=1)
        if per_position >= MIN_MACS:         # the count left out layers with a dynamic dimension
            return {"skipped": f"MACs not known at the dynamic dimensions ({per_position} per sample with "
                               "each counted 1): not timed", "macs": per_position}
        return {"skipped": f"{macs} MACs per sample < {MIN_MACS}: not timed", "macs": macs}
    if runtime != "onnxruntime":
        return {"skipped": f"target runtime '{runtime}' is not timed here", "macs": macs}
    try:
        m, cached = _cached_measure(state, runtime)
    except UsageError as exc:                      # e.g. a dynamic dimension without --input-shape
        return {"skipped": f"not timed: {exc}", "macs": macs}
    return {"source": "measured" + (" (cached)" if cached else ""), "batch": 1, "macs": macs,
            "fp32_ms": m["fp32_ms"], "integer_ms": m["int_ms"], "ratio": round(m["ratio"], 4),
            "ratios": [round(r, 4) for r in m["ratios"]], "calls_per_round": m["calls"],
            "margin": integer_pays.MARGIN, "integer_pays": not m["integer_slower"]}
