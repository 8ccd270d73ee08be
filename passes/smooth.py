"""Migrate activation outliers into the weights of quantized MatMuls, alpha scored at the output.

The rewrite and its math: `dfq_onnx.corrections.smoothing` (SmoothQuant, Xiao et al. 2023):
X' = X / s folded into the LayerNorm / Mul-Add writing X, W' = diag(s) W, s_j = max|X_j|^alpha /
max|W_j|^(1 - alpha). The layers the target quantizes statically take part (`static`), and with
`dynamic` the dynamic int8 form's MatMuls (ort-cpu's [forms] W8A8-dyn): its DynamicQuantizeLinear puts
the whole tensor X on one grid computed at run time (min / max over every row and channel), so a few
large channels cost it as they cost a static grid; the probe quantizes such an X' with that very op.

Statistics. max|X_j| (and min_j, max_j) per channel j of each candidate activation are exact
reductions inside the graph over the calibration samples (the synthetic set, the user's --calib data
or noise, as Calibrate reads them), streamed in Calibrate's chunks: memory is one chunk of activations
plus C numbers per tensor, and the result does not depend on the chunk size.

alpha per group, scored at the model output like the activation decision: for a group k and alpha in
ALPHAS the probe is the FP32 graph with only group k quantized -- X' = X / s through an 8-bit
per-tensor asymmetric Q/DQ on [min_j min(lo_j / s_j, 0), max_j max(hi_j / s_j, 0)] (exact from the
per-channel statistics), W' on the target's weight grid (default bits, per channel if the target is)
-- and its loss L_k(alpha) against FP32 is the sensitivity metric (`--metric`, auto: KL on
distributions, MSE else) on the first SCORE_ROWS samples. alpha = off (s = 1) is scored the same way;
the group takes the alpha of least loss if it is below off's. Finally all groups at their alphas are
scored together against all off, and the migration is dropped if the sum of choices is worse (the
groups interact). Cost: groups x (|ALPHAS| + 1) + 2 forward passes over SCORE_ROWS rows.

Outliers only (`outliers=True`: the default where the target's `[activation] smoothing = "outliers"`,
OpenVINO; --smooth / --no-smooth override it). The migration is for activations whose channels one
8-bit grid cannot hold. Which those are is the activation decision's own rule (allocation/act_problem.py):
a group is an outlier when 8 bits on it alone cost the output more than every weight on the target's
grid together,

    L_k(off) > L_w,        L_w = L(every static weighted layer's weight on its grid, activations float)

(one more evaluation). Only outlier groups are given alphas (|ALPHAS| evaluations each); the others
keep s = 1 and cost one evaluation. A model without LayerNorm outliers is written as without the pass.
On float-input models the statistics and scores use the activation decision's budgeted rows
(`budget_rows`), so that the default costs what the decision's screening costs, not 32 whole rows.

The dynamic form's inputs (outliers mode, `_joint`): a transformer has dozens of them, each moderately
bad, so none alone passes L_w while together they dominate (all-mpnet-base-v2: 24 LayerNorm outputs,
each alone 0.01-0.8 x L_w). They are decided together: all of them quantized, L_off (one evaluation;
L_off <= L_w: nothing is scored alone and the model is written as without the pass); else each alone,
and the outliers are the inputs above their share of the weights' loss,

    L_k(off) > L_w / G        (G dynamic inputs: together they may cost what the weights cost),

which take one alpha jointly, the least of L(all quantized, the outliers at alpha) over ALPHAS, if it
beats L_off. Cost: 2 + G + |ALPHAS| evaluations, on the sensitivity scoring's token budget for token
models (passes/sensitivity.SCORE_TOKENS). Kernels are unchanged (the smoothed MatMul is still dynamic
int8); a LayerNorm output the residual stream also reads (post-LN) is computed twice.
"""

from __future__ import annotations

import time

import numpy as np
import onnx_graphsurgeon as gs
from dfq_onnx.passes.calibrate import batches, load_calib_npz, noise_inputs
from dfq_onnx.passes.quant_groups import FindQuantGroups

from dfq_onnx.backends import observers, runtime
from dfq_onnx.backends.budget import scoring_rows
from dfq_onnx.backends.runtime import copy_observing
from dfq_onnx.core import candidates, ir, numerics
from dfq_onnx.core.graph_utils import is_float, node_label
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.corrections import smoothing as sm
from dfq_onnx.sensitivity.losses import all_stats, total_loss
from dfq_onnx.sensitivity.table import resolve_metrics

ALPHAS = (0.25, 0.5, 0.75)
SCORE_ROWS = 32
ACT_BITS = 8         # the grid this pass is for: static 8-bit activations


def calibration_feeds(state: CompileState) -> dict[str, np.ndarray]:
    """The samples Calibrate will measure: the user's npz, else the synthetic set, else noise."""
    opts = state.options
    if opts.calib.endswith(".npz"):
        return load_calib_npz(state.graph, opts.calib, state.batch_axis1)
    if state.calib is not None:
        return state.calib
    return noise_inputs(state.graph, opts.calib_samples, opts.seed)


def channel_stats(state: CompileState, feeds, groups: list[sm.SmoothGroup]) -> dict[str, np.ndarray]:
    """tensor -> [2, C] per-channel (min, max) over every row of `feeds` (module docstring)."""
    g, table = copy_observing(state.graph, [gr.tensor for gr in groups])
    outs = []
    for i, gr in enumerate(groups):
        shape = gs.Constant(f"__smooth_shape_{i}", np.array([-1, gr.channels], np.int64))
        flat = gs.Variable(f"__smooth_flat_{i}", dtype=np.float32)
        g.nodes.append(gs.Node("Reshape", inputs=[table[gr.tensor], shape], outputs=[flat]))
        for op in observers.STATS:
            y = gs.Variable(f"__smooth_{op}_{i}", dtype=np.float32)
            g.nodes.append(observers.reduce_node(g, op, flat, y, f"__smooth_{op}_{i}", [0]))
            outs.append(y)
    g.outputs = outs
    sess = runtime.session(ir.session_model(g, ir_version=ir.min_ir_version(g.opset)), mem_pattern=False)
    rows = len(next(iter(feeds.values())))
    lo = [np.full(gr.channels, np.inf) for gr in groups]
    hi = [np.full(gr.channels, -np.inf) for gr in groups]
    for chunk, _ in batches(state, feeds, rows, [gr.tensor for gr in groups]):
        res = sess.run(None, chunk)
        state.forward_passes += 1
        for i in range(len(groups)):
            lo[i], hi[i] = np.minimum(lo[i], res[2 * i]), np.maximum(hi[i], res[2 * i + 1])
    return {gr.tensor: np.stack([lo[i], hi[i]]) for i, gr in enumerate(groups)}


def _fake_weight(w: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """Symmetric narrow weight grid on `w`: one scale per index of `axis` (None: per tensor)."""
    return numerics.fake_quant(w, numerics.weight_scales(w, bits, axis), 0, bits, signed=True,
                               axis=axis, narrow=True)


def probe_model(state: CompileState, choices: dict[str, np.ndarray], groups, stats,
                dynamic: frozenset = frozenset()):
    """The FP32 graph with the groups in `choices` quantized (tensor -> s; module docstring); the tensors
    in `dynamic` on the dynamic int8 form's run-time grid."""
    g = ir.copy_graph(state.graph)
    bits = state.options.weight_bits or state.target.default_weight_bits
    for gr in groups:
        if gr.tensor not in choices:
            continue
        s = choices[gr.tensor]
        sm.apply(g, gr, s)
        nodes = {node_label(n): n for n in g.nodes}
        x = nodes[gr.readers[0]].inputs[0]
        scale, zp = numerics.affine_params(float(np.min(stats[gr.tensor][0] / s)),
                                           float(np.max(stats[gr.tensor][1] / s)), ACT_BITS, signed=False)
        q, dq = (gs.Variable(f"{x.name}/smooth_{k}", dtype=np.uint8 if k == "q" else np.float32)
                 for k in ("q", "dq"))
        if gr.tensor in dynamic:         # the dynamic form: one grid per tensor, computed at run time
            sc, zc = (gs.Variable(f"{x.name}/smooth_{k}", dtype=t) for k, t in (("s", np.float32),
                                                                                  ("z", np.uint8)))
            g.nodes.append(gs.Node("DynamicQuantizeLinear", inputs=[x], outputs=[q, sc, zc]))
        else:
            sc = gs.Constant(f"{x.name}/smooth_scale", np.array(scale, np.float32))
            zc = gs.Constant(f"{x.name}/smooth_zp", np.array(zp, np.uint8))
            g.nodes.append(gs.Node("QuantizeLinear", inputs=[x, sc, zc], outputs=[q]))
        g.nodes.append(gs.Node("DequantizeLinear", inputs=[q, sc, zc], outputs=[dq]))
        for r in gr.readers:
            node = nodes[r]
            node.inputs[0] = dq
            rows = sm.weight_rows(node)
            sm.set_weight_rows(node, _fake_weight(rows.astype(np.float64), bits,
                                                        1 if state.target.per_channel else None))
    g.toposort()
    return ir.session_model(g, ir_version=ir.min_ir_version(g.opset))


class Scorer:
    """Loss at the model output of probe models against FP32 on the scoring rows."""

    def __init__(self, state: CompileState, feeds):
        self.state = state
        rows = min(SCORE_ROWS, len(next(iter(feeds.values()))))
        self.feeds = {k: v[:rows] for k, v in feeds.items()}
        self.evaluations = 0
        self.ref = self._run(ir.session_model(ir.copy_graph(state.graph),
                                              ir_version=ir.min_ir_version(state.graph.opset)))
        names = [t.name for t in state.graph.outputs]
        self.kinds = resolve_metrics(state.options.metric, self.ref, None, names,
                                     output_producers(state.graph))

    def _run(self, model) -> list[np.ndarray]:
        sess = runtime.session(model, mem_pattern=False)
        outs: list[list[np.ndarray]] = []
        rows = len(next(iter(self.feeds.values())))
        for chunk, n in batches(self.state, self.feeds, rows, []):
            res = sess.run(None, chunk)
            self.state.forward_passes += 1
            outs = outs or [[] for _ in res]
            for acc, r in zip(outs, res):
                acc.append(r[:n])
        return [np.concatenate(a) for a in outs]

    def loss(self, model) -> float:
        self.evaluations += 1
        return float(total_loss(self.kinds, all_stats(self.kinds, self.ref, self._run(model))))


def budget_rows(state: CompileState, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outliers mode on a float-input model: the first rows the activation decision would score on
    within its work budget (backends/budget.py; a Whisper encoder at 80 x 3000 spent 12 minutes on all 64
    samples and 32-row evaluations); token models keep their rows (their scoring is counted in tokens)."""
    from dfq_onnx.passes.calibrate import activation_elements

    if not all(is_float(t) for t in state.graph.inputs):
        return feeds
    rows = scoring_rows(len(next(iter(feeds.values()))), activation_elements(state, feeds))
    return {k: v[:rows] for k, v in feeds.items()}


def weights_model(state: CompileState, dynamic_layers: frozenset = frozenset()):
    """The FP32 graph with every static weighted layer's weight (and the dynamic form layers' in
    `dynamic_layers`: per column, the same grid) on the target's grid (for L_w)."""
    g = ir.copy_graph(state.graph)
    bits = state.options.weight_bits or state.target.default_weight_bits
    nodes = {node_label(n): n for n in g.nodes}
    done: set[str] = set()
    for name, spec in state.spec.layers.items():
        if spec.role != "weighted" or (spec.form and name not in dynamic_layers) or name not in nodes:
            continue
        w = nodes[name].inputs[spec.weight_index]
        if not isinstance(w, gs.Constant) or w.name in done:
            continue
        done.add(w.name)
        vals = np.asarray(w.values)
        axis = 1 if spec.form else (spec.axis if state.target.per_channel else None)   # form: W [K, N]
        w.values = _fake_weight(vals.astype(np.float64), bits, axis).astype(vals.dtype)
    return ir.session_model(g, ir_version=ir.min_ir_version(g.opset))


def dynamic_layers(state: CompileState) -> frozenset:
    """Form MatMul layers that a uniform plan at the default bits writes in the dynamic int8 form."""
    from dfq_onnx.backends import forms

    target, shapes = state.target, state.graph.tensors()
    w, a = target.default_weight_bits, target.default_act_bits
    return frozenset(k for k, v in state.spec.layers.items() if v.form and v.op == "MatMul"
                     and candidates.form(forms.uniform_fit(target, v.op, shapes[v.weight].shape, w, a) or
                                         candidates.FLOAT) == "dyn")


def token_rows(state: CompileState, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Token models: the sensitivity scoring's token budget (passes/sensitivity.token_rows)."""
    from dfq_onnx.passes.sensitivity import token_rows as budget

    n = budget(state.graph, feeds)
    return feeds if n is None else {k: v[:n] for k, v in feeds.items()}


class SmoothActivations(Pass):
    """Per-channel outlier migration into statically quantized MatMul / Gemm weights (module docstring);
    `outliers`: only into the groups the activation decision's rule calls outliers; `static` / `dynamic`:
    the inputs of statically quantized layers, of the dynamic int8 form's layers."""

    name = "SmoothActivations"

    def __init__(self, outliers: bool = False, static: bool = True, dynamic: bool = False):
        self.outliers, self.static, self.dynamic = outliers, static, dynamic

    def _groups(self, state: CompileState) -> tuple[list[sm.SmoothGroup], frozenset, frozenset]:
        """(groups, the tensors read by the dynamic form, the dynamic layers)."""
        static = {k for k, v in state.spec.layers.items() if v.role == "weighted" and not v.form}
        dyn = dynamic_layers(state) if self.dynamic else frozenset()
        groups = sm.find_groups(state.graph, static) if self.static else []
        more = sm.find_groups(state.graph, set(dyn)) if dyn else []
        return groups + more, frozenset(g.tensor for g in more), dyn

    def run(self, state: CompileState) -> PassResult:
        groups, dynamic, dyn_layers = self._groups(state)
        if not groups:
            return PassResult(False, "no quantized MatMul / Gemm reads a LayerNorm / Mul output")
        t0 = time.perf_counter()
        feeds = calibration_feeds(state)
        feeds = budget_rows(state, feeds) if self.outliers else feeds
        feeds = token_rows(state, feeds) if dynamic and not self.static else feeds
        stats = channel_stats(state, feeds, groups)
        scorer = Scorer(state, feeds)
        ones = {gr.tensor: np.ones(gr.channels) for gr in groups}
        cands = {gr.tensor: {a: sm.scales(np.abs(stats[gr.tensor]).max(axis=0),
                                          sm.weight_absmax(state.graph, gr), a) for a in ALPHAS}
                 for gr in groups}

        def loss(choice: dict) -> float:
            return scorer.loss(probe_model(state, choice, groups, stats, dynamic))

        weight_loss = scorer.loss(weights_model(state, dyn_layers)) if self.outliers else None
        joint = self._joint(groups, dynamic, ones, cands, loss, weight_loss)
        notes, chosen = [], dict(joint.get("chosen", {}))
        for gr in groups:
            if gr.tensor in joint.get("losses", {}):
                losses, outlier = {"off": joint["losses"][gr.tensor]}, gr.tensor in joint["outliers"]
            else:
                losses = {"off": loss({gr.tensor: ones[gr.tensor]})}
                outlier = weight_loss is None or losses["off"] > weight_loss
                for a, sc in cands[gr.tensor].items() if outlier else ():
                    losses[a] = loss({gr.tensor: sc})
                best = min(ALPHAS, key=lambda a: losses.get(a, np.inf))
                if losses.get(best, np.inf) < losses["off"]:
                    chosen[gr.tensor] = cands[gr.tensor][best]
            absmax = np.abs(stats[gr.tensor]).max(axis=0)
            alpha = joint.get("alpha") if gr.tensor in joint.get("losses", {}) else best
            notes.append({"tensor": gr.tensor, "readers": list(gr.readers), "shared": gr.shared,
                          "loss": {str(k): v for k, v in losses.items()}, "outlier": outlier,
                          "form": "dynamic" if gr.tensor in dynamic else "static",
                          "alpha": alpha if gr.tensor in chosen else None,
                          "channel_range_ratio": float(absmax.max() / max(np.median(absmax), 1e-30))})
        together = {}
        if chosen and (not joint or any(t not in dynamic for t in chosen)):
            together = {"off": loss(ones), "chosen": loss({**ones, **chosen})}
            if together["chosen"] >= together["off"]:
                chosen = {}
        elif chosen:
            together = {"off": joint["off"], "chosen": joint["alphas"][str(joint["alpha"])]}
        for gr in groups:
            if gr.tensor in chosen:
                sm.apply(state.graph, gr, chosen[gr.tensor])
        if chosen:
            state.graph.cleanup().toposort()
            FindQuantGroups().run(state)
        state.report.notes["smoothing"] = {"mode": "outliers" if self.outliers else "all",
                                           "weight_loss": weight_loss,
                                           "groups": notes, "together": together, "applied": sorted(chosen),
                                           "evaluations": scorer.evaluations,
                                           "seconds": round(time.perf_counter() - t0, 3)}
        if joint:
            state.report.notes["smoothing"]["dynamic"] = {k: v for k, v in joint.items()
                                                          if k not in ("chosen", "losses")}
        found = f"{sum(n['outlier'] for n in notes)} outliers, " if self.outliers else ""
        return PassResult(bool(chosen), f"{len(chosen)} of {len(groups)} activations smoothed "
                                        f"({found}{scorer.evaluations} evaluations)")

    def _joint(self, groups, dynamic: frozenset, ones: dict, cands: dict, loss, weight_loss) -> dict:
        """Outliers mode, the dynamic form's inputs (module docstring): every one quantized together,
        L_off; when L_off <= L_w none is scored alone. Else each alone, L_k(off), and the outliers are
        those above their share of the weights' loss, L_k(off) > L_w / G (G dynamic inputs: together
        they may cost what the weights cost); the outliers then take one alpha, the least of L(every
        dynamic input quantized, the outliers smoothed at alpha), if it beats L_off."""
        if not (self.outliers and dynamic):
            return {}
        off = {t: ones[t] for t in dynamic}
        together = loss(off)
        if together <= weight_loss:
            return {"off": together, "screened": True, "outliers": [],
                    "losses": dict.fromkeys(dynamic, together)}
        singles = {t: loss({t: ones[t]}) for t in sorted(dynamic)}
        share = weight_loss / len(dynamic)
        found = sorted(t for t, v in singles.items() if v > share)
        out = {"off": together, "screened": False, "share": share, "outliers": found, "losses": singles}
        if not found:
            return out
        alphas = {a: loss({**off, **{t: cands[t][a] for t in found}}) for a in ALPHAS}
        best = min(ALPHAS, key=lambda a: alphas[a])
        out["alphas"], out["alpha"] = {str(a): v for a, v in alphas.items()}, best
        if alphas[best] < together:
            out["chosen"] = {t: cands[t][best] for t in found}
        return out
