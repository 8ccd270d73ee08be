"""The activation decision's measurements: the activation probe's evaluators, the scoring rows and
evaluation cap the work budget buys, the terms through the cache, and the loss of a whole plan.

Read by ChooseActivationPrecision (passes/act_precision.py, whose docstring says what is decided from
them), ScoreSensitivity with a budget, ChooseInputForms / ChooseRecurrentForms (`plan_scoring`),
ChooseTwinRanges (`budgeted`) and KeepFloatChosen's fallback (`plan_loss`).
"""

from __future__ import annotations

from dfq_onnx.backends.budget import broken_evaluations, evaluations, scoring_rows
from dfq_onnx.backends.chunks import static_batch
from dfq_onnx.core import cache, ir
from dfq_onnx.core.graph_utils import is_float
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.core.state import FLOAT_BITS, CompileState
from dfq_onnx.sensitivity.act_scoring import (
    ActTerms,
    broken,
    score_activations,
    scored_bits,
    switchable,
    terms_from_dict,
    terms_to_dict,
)
from dfq_onnx.sensitivity.evaluator import Evaluator
from dfq_onnx.sensitivity.probe import Probe, build_probe
from dfq_onnx.sensitivity.table import SensitivityTable, load_json, save_json_atomic

ENGINE = 4     # bump when the activation terms change: old cache entries are then ignored
BROKEN_EVALS = 8   # a broken plan's screening may spend this many times its evaluation cap more


def act_evaluator(state: CompileState, samples, labels, metric: str, batch: int | None = None) -> Evaluator:
    """The activation probe (every switchable group over float and the target's bits; Emit's weights at
    the default bits) and its evaluator on `samples`, in chunks of `batch` rows (default: the model's
    static batch, else the user's --calib-batch, else `rows_per_chunk` of its activation footprint)."""
    from dfq_onnx.passes.sensitivity import chunked

    samples, labels, batch = chunked(state, samples, labels, batch)
    base = state.target.default_act_bits
    groups = switchable(state.act_groups)
    pm = build_probe(state.graph, state.spec, [], state.ranges, state.target, (), base,
                     act_groups=tuple(groups), act_choices=scored_bits(groups),
                     fixed_weight_bits=state.target.default_weight_bits)
    fp32 = ir.session_model(ir.copy_graph(state.graph), ir_version=ir.min_ir_version(state.graph.opset))
    n = len(next(iter(samples.values())))
    return Evaluator(Probe(pm, segmented=True, samples=n), fp32, samples, labels, metric, batch,
                     output_producers(state.graph))


def plan_evaluator(state: CompileState, options, samples, labels) -> Evaluator:
    """For whole plans with activation decisions: weight switches over the scored candidates (with their
    bias correction, as the weight probe) and activation switches, one whole-probe session (a plan
    changes every segment, so it is not segmented)."""
    from dfq_onnx.passes.sensitivity import candidate_bits, chunked, input_means

    samples, labels, batch = chunked(state, samples, labels, options.batch)
    base = state.target.default_act_bits
    groups = switchable(state.act_groups)
    pm = build_probe(state.graph, state.spec, state.groups, state.ranges, state.target,
                     candidate_bits(options, state.target, base), base,
                     input_means=input_means(state, options), act_groups=tuple(groups),
                     act_choices=scored_bits(groups), input_moments=state.input_moments)
    fp32 = ir.session_model(ir.copy_graph(state.graph), ir_version=ir.min_ir_version(state.graph.opset))
    return Evaluator(Probe(pm), fp32, samples, labels, options.metric, batch)


def activation_terms(state: CompileState, samples, labels, metric: str, pairs: bool = False,
                     batch: int | None = None, max_evals: int | None = None,
                     extra_evals: int | None = None) -> tuple[ActTerms, Evaluator]:
    """The activation terms (sensitivity/act_scoring.py) and the evaluator that measured them."""
    ev = act_evaluator(state, samples, labels, metric, batch)
    return score_activations(ev, state.act_groups, state.target.default_act_bits, pairs=pairs,
                             max_evals=max_evals, extra_evals=extra_evals), ev


def budgeted(state: CompileState, samples, labels, rows: int | None = None
             ) -> tuple[dict, object, int | None, int | None, dict]:
    """(samples, labels, evaluation cap, rows per call, report note) within the work budget
    (passes/act_precision.py's docstring); `rows` (float inputs): score on that many rows instead of
    `scoring_rows`' (the finishing screen's). Models with non-float inputs keep their rows (token ids:
    scored on a token budget already, passes/sensitivity.scoring_data) and get the evaluation cap only:
    a BERT-base spent 11 minutes screening 104 groups without it. Rows per call: Calibrate's chunk
    (`calibrate.chunk_rows`, every activation observed), so the probe's memory is that of one calibration
    chunk."""
    from dfq_onnx.passes.calibrate import activation_elements, chunk_rows

    n = len(next(iter(samples.values())))
    elements = activation_elements(state, samples)
    if not all(is_float(t) for t in state.graph.inputs):
        cap = evaluations(n, elements)
        return samples, labels, cap, None, {"elements_per_row": elements, "rows": n, "samples": n,
                                            "max_evaluations": cap}
    rows = scoring_rows(n, elements) if rows is None else min(rows, n)
    static = static_batch(state.graph)
    if static:                 # whole static batches of at least two rows
        rows = min(n, -(-max(rows, 2) // static) * static)
    cap = evaluations(rows, elements)
    batch = None if static else chunk_rows(state, held=list(state.spec.act_tensors))
    note = {"elements_per_row": elements, "rows": rows, "samples": n, "max_evaluations": cap,
            "rows_per_call": batch}
    return ({k: v[:rows] for k, v in samples.items()}, None if labels is None else labels[:rows], cap, batch,
            note)


def plan_scoring(state: CompileState, samples: int | None, metric: str, rows: int | None = None) -> tuple:
    """(samples, labels, evaluation cap, rows per call, report note, cache key) of a decision on the
    default plan (ChooseActivationPrecision's, passes/choose_forms.py's): the scoring samples at the
    target's default bits within the work budget (`budgeted`, `rows` passed on) and their sensitivity
    cache key."""
    from dfq_onnx.passes.sensitivity import SensitivityOptions, cache_key, scoring_data

    bits = state.target.default_weight_bits
    opts = SensitivityOptions(weight_bits=(bits,), base_bits=bits, samples=samples, metric=metric,
                              pairs=False, incontext=False)
    rows, labels, cap, batch, budget = budgeted(state, *scoring_data(state, opts), rows=rows)
    key = cache_key(state, opts, (bits,), state.target.default_act_bits, rows, labels)
    return rows, labels, cap, batch, budget, key


def cached_terms(state: CompileState, samples, labels, metric: str, key: dict, use_cache: bool,
                 cache_dir, max_evals: int | None = None, batch: int | None = None,
                 budget: dict | None = None) -> tuple[ActTerms, Evaluator | None]:
    """`activation_terms` through the cache (a sensitivity-table JSON entry carrying only them); a
    broken plan's extension (`broken_evals`) in the key where it is not BROKEN_EVALS x the cap."""
    extra = broken_evals(max_evals, budget)
    key = {**key, "act_engine": ENGINE, "max_evals": max_evals}
    if max_evals is not None and extra != BROKEN_EVALS * max_evals:
        key["broken_evals"] = extra
    path = cache.cache_path("activations", key, cache_dir).with_suffix(".json")
    hit = load_json(path) if use_cache else None
    if hit is not None and hit.activations and current(hit.activations):
        return terms_from_dict(hit.activations), None
    terms, ev = activation_terms(state, samples, labels, metric, batch=batch, max_evals=max_evals,
                                 extra_evals=extra)
    if use_cache:
        save_json_atomic(path, SensitivityTable(
            groups=(), candidates=(), singles={}, incontext={}, pairs={}, metric=",".join(ev.kinds),
            samples=ev.n, evaluations=ev.evaluations, forward_passes=ev.forward_passes,
            seconds=terms.seconds, activations=terms_to_dict(terms)))
    return terms, ev


def current(entry: dict) -> bool:
    """Whether a cached entry holds what this engine measures: one whose plan the ratio calls broken was
    written before the task reading (act_scoring) when it has no "decisions" key; the others are the
    same terms (the reading adds nothing to a plan the ratio does not call broken)."""
    return "decisions" in entry or not broken(float(entry["act_loss"]), float(entry["weight_loss"]))


def broken_evals(max_evals: int | None, budget: dict | None = None) -> int:
    """Screening evaluations a broken all-base plan may add (act_scoring's joint check): BROKEN_EVALS x the
    cap, none where the cap sits at its floor on `budget`'s rows (`budget.broken_evaluations`; none
    needed without a cap: the screening then runs to the end)."""
    if max_evals is None:
        return 0
    if budget and "elements_per_row" in budget:
        return broken_evaluations(budget["rows"], budget["elements_per_row"], BROKEN_EVALS)
    return BROKEN_EVALS * max_evals


def plan_loss(state: CompileState, samples: int | None, metric: str):
    """loss(acts): the activation probe's loss vs FP32 of a plan (group -> precision, every other
    switchable group at the base bits) on the decision's scoring rows (the rows its report note keeps),
    the probe built on the first call (KeepFloatChosen's fallback, passes/outlier_fallback.py)."""
    built = []

    def loss(acts: dict[str, int]) -> float:
        if not built:
            rows = state.report.notes.get("activations", {}).get("budget", {}).get("rows")
            rows_, labels, _, batch, _, _ = plan_scoring(state, samples, metric, rows)
            built.append(act_evaluator(state, rows_, labels, metric, batch))
        base = {ag.id: state.target.default_act_bits for ag in switchable(state.act_groups)}
        plan = {**base, **{k: None if a == FLOAT_BITS else a for k, a in acts.items()}}
        return float(built[0].loss(plan)[0])
    return loss
