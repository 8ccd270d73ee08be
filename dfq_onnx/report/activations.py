"""Activation precision in the report: what was decided per activation group, and one line for the CLI.

Reads `state.plan.acts` (group -> bits, 32 = float), `state.act_groups` and the notes the deciding pass
left (`report.notes["activations"]`: the weights' damage L_w, the all-A8 loss, the outlier groups with
their damage per precision, and the measured output loss before / after).
"""

from __future__ import annotations

from dfq_onnx.core.graph_utils import node_label
from dfq_onnx.core.state import FLOAT_BITS, CompileState


def precision_name(bits) -> str:
    return "float" if bits == FLOAT_BITS else (f"A{bits}" if bits is not None else "-")


def annotate(state: CompileState) -> None:
    """Per-layer rows get their input's precision (float inputs included); float groups get rows in the
    activation list (no encoding); every activation row gets its group id. Run on the emitted graph."""
    acts = state.plan.acts if state.plan is not None else {}
    group_of = {t: ag.id for ag in state.act_groups for t in ag.tensors}
    nodes = {node_label(n): n for n in state.graph.nodes}
    for row in state.report.layers:
        node = nodes.get(row["node"])
        g = group_of.get(node.inputs[0].name) if node is not None and node.inputs else None
        if g is not None and acts.get(g) == FLOAT_BITS:
            row["act_bits"] = FLOAT_BITS
    for row in state.report.activations:
        row["group"] = group_of.get(row["tensor"])
    for ag in state.act_groups:
        if acts.get(ag.id) == FLOAT_BITS:
            state.report.activations += [{"tensor": t, "group": ag.id, "dtype": "float", "bits": FLOAT_BITS,
                                          "range_source": "left float by the plan"} for t in ag.tensors]


def decided_line(notes: dict) -> str:
    """'activations: 11 of 18 outlier groups float; output loss 0.1 -> 0.011' (or '' when not decided)."""
    act = notes.get("activations")
    if not act or "outliers" not in act:
        return ""
    base = act.get("base", 8)
    changed = {k: o["choice"] for k, o in act["outliers"].items() if o["choice"] != base}
    by = {}
    for bits in changed.values():
        by[precision_name(bits)] = by.get(precision_name(bits), 0) + 1
    what = ", ".join(f"{n} {name}" for name, n in sorted(by.items())) or "none changed"
    line = f"activations: {len(act['outliers'])} outlier groups of {act.get('groups', '?')} ({what})"
    m = act.get("measured")
    if m:
        line += f"; output loss {m['all_base']:.3g} -> {m['chosen']:.3g} (all-A8 -> chosen)"
        if act.get("reverted"):
            line += "; the chosen plan measured worse: all-A8 kept"
    joint = act.get("joint")
    if joint and not act.get("reverted"):
        line += (f"; all-A{base} broken (> {joint['factor']:g}x the weights' loss): {len(joint['applied'])} "
                 "outlier groups put back past the cost allowance")
    task = act.get("decisions")
    if task and not joint:
        line += (f"; all-A{base} above {task['factor']:g}x the weights' loss but keeps FP32's decisions at "
                 f"{100 * task['kept']:.1f} % of the clear positions: not broken")
    return line


def smoothed_line(notes: dict) -> str:
    """'smoothing (outliers): 6 of 6 MatMul inputs outliers, 6 smoothed (alpha 0.75 x6)' (or '')."""
    sm = notes.get("smoothing")
    if not sm:
        return ""
    groups = sm["groups"]
    alphas: dict = {}
    for g in groups:
        if g["tensor"] in sm["applied"]:
            alphas[g["alpha"]] = alphas.get(g["alpha"], 0) + 1
    how = ", ".join(f"alpha {a:g} x{n}" for a, n in sorted(alphas.items()))
    kinds = {g.get("form", "static") for g in groups}
    what = "dynamic int8 MatMul inputs" if kinds == {"dynamic"} else "static MatMul inputs" \
        if kinds == {"static"} else "static / dynamic int8 MatMul inputs"
    dyn = sm.get("dynamic")
    if sm.get("mode") == "outliers" and dyn:
        rule = ("all together within the W8 weights' loss" if dyn["screened"] else
                f"alone > their share {dyn['share']:.3g} of the W8 weights' {sm['weight_loss']:.3g}")
        head = (f"smoothing (the target's default; --no-smooth: off): {sum(g['outlier'] for g in groups)} of "
                f"{len(groups)} {what} outliers ({rule})")
    elif sm.get("mode") == "outliers":
        head = (f"smoothing (the target's default; --no-smooth: off): {sum(g['outlier'] for g in groups)} of "
                f"{len(groups)} {what} outliers (A8 alone > the W8 weights' {sm['weight_loss']:.3g})")
    else:
        head = f"smoothing: {len(groups)} {what}"
    return f"{head}; {len(sm['applied'])} smoothed" + (f" ({how})" if how else "")
