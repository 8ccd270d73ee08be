"""MeasureInputMoments: E[x_j^2] per input channel of every weighted layer, for weights below 8 bits.

Runs after Calibrate on the same samples (the user's data, the synthetic set, or noise; without views),
in chunks of rows (`calibrate.batches`), the FP32 graph reduced in-graph to mean(x^2) per row and
channel (dfq_onnx/backends/input_moments.py), so memory is one chunk of activations whatever the number
of samples. The moments weigh each channel's clip search of the low-bit weights (core/weight_clip.py:
the diagonal of E[x x^T]); Emit, the sensitivity probe and bias correction all read them from
`state.input_moments`, so the probe's weights stay Emit's. Only compiles that may put weights below
8 bits run it (a budget, or --weight-bits below 8); the default plan's weights do not depend on it.

With `full` (--gptq) the graph's outputs are the layers' inputs themselves: per chunk, mean(x^2) per row
and channel in numpy (the same moments), and H = E[x x^T] of each layer's rows (Conv patches per group,
MatMul / Gemm rows, positions subsampled: core/hessian.py) summed in float64; a layer with H stores its
`LaidHessian` (core/gptq.py: GPTQ's rounding, with the clip-searched scales as a candidate when `clip`)
in place of the diagonal (layers without one keep max-abs round-to-nearest unless `clip`). Memory: one
chunk of the layers' inputs, and G D^2 float64 per layer up to hessian.MAX_BYTES in all.

With `after_plan` (the default pipeline's GPTQ for a mixed plan's weights below 8 bits, --gptq not
given) it runs after the plan: the sensitivity table and the allocator saw round-to-nearest weights, and
only the layers the plan puts below 8 bits are measured and rounded. H comes from the synthetic samples,
whose cross-channel correlations are the generator's, not the data's: GPTQ's gains read 2-10x on them and
~1x (some layers > 1) on real images, so a table scored with GPTQ's weights spends the budget on that
optimism. After the plan GPTQ rounds on H with only what the samples were made to match
(core/hessian.channel_trusted: within a channel as measured, across channels the means' product;
BENCHMARKS.md, issue 17 session 14). A mixed plan's measured loss is then measured again with the weights
Emit writes (`measured_loss`; on the samples H came from) and the round-to-nearest one kept
(`measured_loss_round_to_nearest`).
"""

from __future__ import annotations

import numpy as np
from dfq_onnx.passes.calibrate import batches, measured_samples

from dfq_onnx.backends import input_moments as im
from dfq_onnx.backends import runtime
from dfq_onnx.core import candidates, hessian
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.gptq import LaidHessian
from dfq_onnx.core.graph_utils import const_values, node_label
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


def taps(geometry: tuple) -> int:
    """Row positions per input channel: a Conv's kh kw, 1 for a MatMul / Gemm."""
    return int(np.prod(geometry[1])) if geometry[0] == "conv" else 1


def moment_sums(state: CompileState, tensors: dict[str, bool], means: bool = False) -> dict[str, list]:
    """Per tensor (name -> channel-first?), [sum over the calibration samples' rows of mean(x^2) per
    channel, row count] under its name (`backends.input_moments.accumulate`), in `calibrate.batches`
    chunks; with `means`, the same of mean(x) under `name + MEAN`. One ORT pass over the samples
    Calibrate measured (`calibrate.measured_samples`: all of them unless its work budget took fewer)."""
    names = list(tensors)
    keys = [k for n in names for k in ((n + MEAN, n) if means else (n,))]
    sess = runtime.session(im.moment_model(state.graph, tensors, means=means), mem_pattern=False)
    feeds = state.calib
    sums: dict[str, list] = {}
    total = measured_samples(state, len(next(iter(feeds.values()))))
    for chunk, rows in batches(state, feeds, total, names):
        chunk = {k: np.asarray(v) for k, v in chunk.items()}
        im.accumulate(sums, sess.run(None, chunk), keys, rows, len(next(iter(chunk.values()))))
        state.forward_passes += 1
    return sums


MEAN = "/mean"          # moment_sums' key suffix of a tensor's mean(x)


class MeasureInputMoments(Pass):
    """Measure E[x_j^2] of each weighted layer's input on the calibration samples."""

    name = "MeasureInputMoments"

    def __init__(self, full: bool = False, clip: bool = False, after_plan: bool = False):
        self.full, self.clip, self.after_plan = full, clip, after_plan

    def run(self, state: CompileState) -> PassResult:
        if state.input_moments:
            return PassResult(False, "already measured")
        if state.calib is None:
            return PassResult(False, "no samples (weights keep unweighted clipping)")
        nodes = {node_label(n): n for n in state.graph.nodes}
        low = self._low_bit_layers(state) if self.after_plan else None
        reads = {}
        for name, layer in state.spec.layers.items():
            if layer.role == "weighted" and name in nodes and (low is None or name in low):
                if (t := im.measured_input(nodes[name], layer)) is not None:
                    reads[name] = (t, nodes[name].op in im.CHANNEL_FIRST)
        tensors = dict(reads.values())
        if not tensors:
            return PassResult(False, "no measurable layer inputs")
        geos = self._geometries(nodes, reads) if self.full else {}
        sums, hs = (self._measure_full(state, tensors, {n: (reads[n][0], g) for n, g in geos.items()})
                    if self.full else (self._measure(state, tensors), {}))
        state.input_moments = {name: sums[t][0] / max(1, sums[t][1]) for name, (t, _) in reads.items()}
        for name, acc in hs.items():
            if acc.sum is not None:
                h = acc.mean()
                if self.after_plan:
                    h = hessian.channel_trusted(h, acc.row_mean(), taps(geos[name]))
                state.input_moments[name] = LaidHessian(h, geos[name][0], self.clip)
        if self.full and not self.clip:    # without H and without --weight-clip: max-abs, to nearest
            state.input_moments = {k: v for k, v in state.input_moments.items() if isinstance(v, LaidHessian)}
        bad = [t for t, (s, _) in sums.items() if not np.all(np.isfinite(s))]
        if bad:
            raise UnsupportedModelError(f"tensor '{bad[0]}' is not finite on the calibration data")
        full = f", {len(hs)} with E[x x^T]" if self.full else ""
        again = self._remeasure(state) if self.after_plan else ""
        return PassResult(False, f"{len(state.input_moments)} layers' input moments from {len(tensors)} "
                                 f"tensors{full}{again}")

    @staticmethod
    def _low_bit_layers(state: CompileState) -> set[str]:
        """The layers of the groups the plan puts below 8 weight bits."""
        if state.plan is None:
            raise UnsupportedModelError("MeasureInputMoments(after_plan) runs after a plan was made")
        low = {g for g, c in state.plan.bits.items() if c[0] < 8}
        return {n for g in state.groups if g.id in low for n in g.layers}

    @staticmethod
    def _remeasure(state: CompileState) -> str:
        """A mixed plan's measured loss again, on a probe with the weights Emit writes."""
        alloc = state.report.notes.get("allocation")
        if state.meter is None or not alloc or alloc.get("measured_loss") is None or not state.input_moments:
            return ""
        state.meter = state.meter.rebuilt()
        scored = state.sensitivity.singles if state.sensitivity is not None else {}
        keys = {g: candidates.key(c) for g, c in state.plan.bits.items() if g in scored}
        alloc["measured_loss_round_to_nearest"] = alloc["measured_loss"]
        alloc["measured_loss"] = state.meter(keys, state.plan.acts)
        return (f"; plan measured {alloc['measured_loss']:.4g} "
                f"(round-to-nearest {alloc['measured_loss_round_to_nearest']:.4g})")

    @staticmethod
    def _measure(state: CompileState, tensors: dict[str, bool]) -> dict[str, list]:
        return moment_sums(state, tensors)

    @staticmethod
    def _geometries(nodes: dict, reads: dict) -> dict[str, tuple]:
        """Layer -> H geometry, in graph order until H's bytes would pass hessian.MAX_BYTES."""
        geos, used = {}, 0
        for name in reads:
            geo = im.hessian_geometry(nodes[name])
            if geo is None:
                continue
            used += hessian.size(geo, const_values(nodes[name].inputs[1]).shape)
            if used > hessian.MAX_BYTES:
                break
            geos[name] = geo
        return geos

    @staticmethod
    def _measure_full(state: CompileState, tensors: dict[str, bool], geos: dict[str, tuple]):
        """(moment sums as `_measure`'s, layer -> hessian.Accumulator) from the raw layer inputs."""
        names = list(tensors)
        sess = runtime.session(runtime.observer_model(state.graph, names), mem_pattern=False)
        feeds = state.calib
        total = len(next(iter(feeds.values())))
        sums: dict[str, list] = {}
        accs = {name: hessian.Accumulator() for name in geos}
        for chunk, rows in batches(state, feeds, total, names):
            chunk = {k: np.asarray(v) for k, v in chunk.items()}
            call_rows = len(next(iter(chunk.values())))
            outs = sess.run(None, chunk)
            moments = []
            for name, x in zip(names, outs):
                x = np.asarray(x, np.float32)
                axes = tuple(a for a in range(1, x.ndim) if a != (1 if tensors[name] else x.ndim - 1))
                moments.append(np.mean(np.square(x), axis=axes) if axes else np.square(x))
            im.accumulate(sums, moments, names, rows, call_rows)
            by_name = dict(zip(names, outs))
            for layer, (t, geo) in geos.items():
                x = by_name[t]
                x = x[:rows] if x.shape[0] == call_rows else x
                accs[layer].add(im.hessian_rows(np.asarray(x, np.float32), geo, total))
            state.forward_passes += 1
        return sums, accs
