"""Loss of probe configurations at the model output (memoized), against the FP32 model and against the
probe's own all-slot-0 outputs (see `Evaluator`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from dfq_onnx.backends.row_store import KEPT_BYTES, RowStore
from dfq_onnx.sensitivity.dither import offsets
from dfq_onnx.sensitivity.losses import all_stats, is_distribution, total_loss
from dfq_onnx.sensitivity.probe import FP32, Probe, session
from dfq_onnx.sensitivity.table import resolve_metrics


class Evaluator:
    """Loss of configurations at the model output: on all samples and on two half-batches.

    The FP32 reference outputs are computed once (one plain forward pass) and kept; each distinct
    configuration is run once (memoized), its loss terms formed call by call against the kept rows
    (losses.py's terms are per sample), so only one call's outputs are alive at a time. The reference
    and the base outputs (below) are kept in memory up to KEPT_BYTES each, the two within one chunk's
    activations (`segments.CACHE_BYTES`), else in a file read a call's rows at a time (`row_store`).
 `loss(config)` returns [all, even rows, odd rows] of the loss
    vs the FP32 model; `relative(config)` the same vs the probe's own outputs with every weight FP32
    (activations still quantized): the damage the weights add on top of activation quantization. That
    one is >= 0 for kl/mse/sqnr and has no cross term with the activation noise (which averages to 0 but
    makes small vs-FP32 differences noisy, often negative), so the scorer builds its terms from it.
    `reference`: the FP32 outputs of `samples` when another evaluator has them (its rows): then no
    reference session is made.

    `dither` = K > 1 on a probe built with `dither=True` (sensitivity/dither.py): rows r with r mod K = k
    run with the activation grids shifted by k / K of a step (the FP32 reference is not), so the terms
    average K rounding draws and the even / odd halves (K = 2) see different ones; same forward passes.
    """

    def __init__(self, probe: Probe, reference_model, samples: dict[str, np.ndarray],
                 labels: np.ndarray | None, metric: str, batch: int | None = None,
                 producers: dict | None = None, dither: int = 1,
                 reference: list[np.ndarray] | None = None):
        self.probe, self.samples, self.labels = probe, samples, labels
        self.n = len(next(iter(samples.values())))
        self.batch = batch or self.n
        scales = probe.probe.dither if dither > 1 else {}
        self.dither = dither if scales else 1
        self._parts = [np.arange(k, self.n, self.dither) for k in range(self.dither)]
        self._offsets = [offsets(scales, k / self.dither) for k in range(self.dither)]
        self.evaluations = self.forward_passes = 0
        names = [o.name for o in probe.probe.model.graph.output]
        if reference is None:
            sess = session(reference_model)
            self._reference(lambda feeds, _key: sess.run(None, feeds), metric, names, producers)
            del sess
        else:      # another evaluator's rows: no session beside the probe's, no forward pass
            if self.dither != 1:
                raise ValueError("a given FP32 reference needs rows in order (dither 1)")
            self._reference(lambda feeds, start: [o[start:start + len(next(iter(feeds.values())))]
                                                  for o in reference], metric, names, producers)
            self.forward_passes = 0
        self.halves = (np.arange(0, self.n, 2), np.arange(1, self.n, 2))
        self._memo: dict[frozenset, np.ndarray] = {}
        self._relative: dict[frozenset, np.ndarray] = {}
        self._base: RowStore | None = None

    def _reference(self, run, metric: str, names: list[str], producers) -> None:
        """The FP32 outputs of every sample kept (`_ref`, from `run(feeds, batch key)`), the metric of each
        output (`kinds`) and whether each KL output's reference is a distribution over every sample
        (`_distribution`)."""
        self._ref = RowStore(self.n, KEPT_BYTES)
        self._distribution: list[bool | None] = []
        for rows, outs in self._batches(run):
            if not self._distribution:
                shapes = [np.broadcast_to(np.zeros((), o.dtype), (self.n, *o.shape[1:])) for o in outs]
                self.kinds = resolve_metrics(metric, shapes, self.labels, names, producers)
                self._distribution = [True] * len(outs)
            self._ref.put(rows, outs)
            flags = [is_distribution(k, o) for k, o in zip(self.kinds, outs)]
            self._distribution = [None if f is None else (a and f) for a, f in zip(self._distribution, flags)]

    @property
    def reference(self) -> list[np.ndarray]:
        """The FP32 reference outputs of every sample (read whole: for small uses, not the scoring)."""
        return self._ref.whole()

    def _batches(self, run, dithered: bool = False):
        """(rows, outputs) of each ORT call over the samples: rows a slice, or an index array when the rows
        run in parts at their grid offsets (`dither`)."""
        if self.dither == 1:
            for start in range(0, self.n, self.batch):
                rows = slice(start, min(start + self.batch, self.n))
                res = run({k: v[rows] for k, v in self.samples.items()}, start)
                self.forward_passes += 1
                yield rows, res
                del res          # the caller's rows only: not beside the next call's
            return
        for k, part in enumerate(self._parts):
            for start in range(0, len(part), self.batch):
                idx = part[start:start + self.batch]
                feeds = {name: v[idx] for name, v in self.samples.items()}
                res = run({**feeds, **self._offsets[k]} if dithered else feeds, (k, start))
                self.forward_passes += 1
                yield idx, res
                del res

    def _forward(self, run, dithered: bool = False) -> list[np.ndarray]:
        """Every sample's outputs of `run` (rows in sample order)."""
        store = RowStore(self.n)
        for rows, res in self._batches(run, dithered):
            store.put(rows, res)
        return store.whole()

    def loss(self, config: Mapping[str, int | None]) -> np.ndarray:
        key = frozenset((g, b) for g, b in config.items() if b is not FP32)
        if key not in self._memo:
            if key and self._base is None:
                self.loss({})
            base = RowStore(self.n, KEPT_BYTES) if not key else None
            vs_ref: list[list[np.ndarray]] = []
            vs_base: list[list[np.ndarray]] = []
            run = lambda feeds, k: self.probe.run_batch(config, feeds, k)  # noqa: E731
            for rows, outs in self._batches(run, dithered=True):
                labels = None if self.labels is None else self.labels[rows]
                vs_ref.append((rows, self._stats(self._ref.get(rows), outs, labels)))
                if base is not None:
                    base.put(rows, outs)
                    vs_base.append((rows, self._stats(outs, outs, labels)))
                else:
                    vs_base.append((rows, self._stats(self._base.get(rows), outs, labels)))
                del outs
            self.evaluations += 1
            if base is not None:
                self._base = base
            parts = (None, *self.halves)
            stats = self._join(vs_ref)
            self._memo[key] = np.array([total_loss(self.kinds, stats, r) for r in parts])
            stats = self._join(vs_base)
            self._relative[key] = np.array([total_loss(self.kinds, stats, r) for r in parts])
        return self._memo[key]

    def _stats(self, refs, tests, labels) -> list:
        return all_stats(self.kinds, refs, tests, labels, self._distribution)

    def _join(self, per_call: list) -> list:
        """Per-output (num_i, den_i) over every sample from each call's rows (losses.py: per-sample terms,
        so computing them a call at a time gives the same values as on all rows at once)."""
        out = []
        for j in range(len(self.kinds)):
            first = per_call[0][1][j]
            num, den = np.empty(self.n, first[0].dtype), np.empty(self.n, first[1].dtype)
            for rows, stats in per_call:
                num[rows], den[rows] = stats[j]
            out.append((num, den))
        return out

    def outputs(self, config: Mapping[str, int | None]) -> list[np.ndarray]:
        """The probe's outputs for `config` on all samples (one forward pass per batch, not memoized)."""
        return self._forward(lambda feeds, key: self.probe.run_batch(config, feeds, key), dithered=True)

    def relative(self, config: Mapping[str, int | None]) -> np.ndarray:
        """Like `loss`, against the all-FP32-weights probe outputs instead of the FP32 model."""
        self.loss(config)
        return self._relative[frozenset((g, b) for g, b in config.items() if b is not FP32)]

    def seen(self, config: Mapping[str, int | None]) -> bool:
        return frozenset((g, b) for g, b in config.items() if b is not FP32) in self._memo
