"""Loss of probe configurations at the model output (memoized), against the FP32 model and against the
probe's own all-slot-0 outputs (see `Evaluator`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from dfq_onnx.sensitivity.dither import offsets
from dfq_onnx.sensitivity.losses import all_stats, total_loss
from dfq_onnx.sensitivity.probe import FP32, Probe, session
from dfq_onnx.sensitivity.table import resolve_metrics


class Evaluator:
    """Loss of configurations at the model output: on all samples and on two half-batches.

    The FP32 reference outputs are computed once (one plain forward pass) and kept; each distinct
    configuration is run once (memoized). `loss(config)` returns [all, even rows, odd rows] of the loss
    vs the FP32 model; `relative(config)` the same vs the probe's own outputs with every weight FP32
    (activations still quantized): the damage the weights add on top of activation quantization. That
    one is >= 0 for kl/mse/sqnr and has no cross term with the activation noise (which averages to 0 but
    makes small vs-FP32 differences noisy, often negative), so the scorer builds its terms from it.

    `dither` = K > 1 on a probe built with `dither=True` (sensitivity/dither.py): rows r with r mod K = k
    run with the activation grids shifted by k / K of a step (the FP32 reference is not), so the terms
    average K rounding draws and the even / odd halves (K = 2) see different ones; same forward passes.
    """

    def __init__(self, probe: Probe, reference_model, samples: dict[str, np.ndarray],
                 labels: np.ndarray | None, metric: str, batch: int | None = None,
                 producers: dict | None = None, dither: int = 1):
        self.probe, self.samples, self.labels = probe, samples, labels
        self.n = len(next(iter(samples.values())))
        self.batch = batch or self.n
        scales = probe.probe.dither if dither > 1 else {}
        self.dither = dither if scales else 1
        self._parts = [np.arange(k, self.n, self.dither) for k in range(self.dither)]
        self._offsets = [offsets(scales, k / self.dither) for k in range(self.dither)]
        self.evaluations = self.forward_passes = 0
        ref = session(reference_model)
        self.reference = self._forward(lambda feeds, _key: ref.run(None, feeds))
        names = [o.name for o in probe.probe.model.graph.output]
        self.kinds = resolve_metrics(metric, self.reference, labels, names, producers)
        self.halves = (np.arange(0, self.n, 2), np.arange(1, self.n, 2))
        self._memo: dict[frozenset, np.ndarray] = {}
        self._relative: dict[frozenset, np.ndarray] = {}
        self._base: list[np.ndarray] | None = None

    def _forward(self, run, dithered: bool = False) -> list[np.ndarray]:
        if self.dither > 1:
            return self._forward_parts(run, dithered)
        outs: list[list[np.ndarray]] = []
        for start in range(0, self.n, self.batch):
            res = run({k: v[start:start + self.batch] for k, v in self.samples.items()}, start)
            self.forward_passes += 1
            outs = outs or [[] for _ in res]
            for acc, r in zip(outs, res):
                acc.append(r)
        return [np.concatenate(a, axis=0) for a in outs]

    def _forward_parts(self, run, dithered: bool) -> list[np.ndarray]:
        """`_forward` per part of the rows (`dither`), each at its grid offset; outputs in row order."""
        outs: list[np.ndarray] = []
        for k, rows in enumerate(self._parts):
            for start in range(0, len(rows), self.batch):
                idx = rows[start:start + self.batch]
                feeds = {name: v[idx] for name, v in self.samples.items()}
                res = run({**feeds, **self._offsets[k]} if dithered else feeds, (k, start))
                self.forward_passes += 1
                outs = outs or [np.empty((self.n, *r.shape[1:]), r.dtype) for r in res]
                for acc, r in zip(outs, res):
                    acc[idx] = r
        return outs

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
            stats = all_stats(self.kinds, self.reference, outs, self.labels)
            self._memo[key] = np.array([total_loss(self.kinds, stats, r) for r in rows])
            stats = all_stats(self.kinds, self._base, outs, self.labels)
            self._relative[key] = np.array([total_loss(self.kinds, stats, r) for r in rows])
        return self._memo[key]

    def outputs(self, config: Mapping[str, int | None]) -> list[np.ndarray]:
        """The probe's outputs for `config` on all samples (one forward pass per batch, not memoized)."""
        return self._forward(lambda feeds, key: self.probe.run_batch(config, feeds, key), dithered=True)

    def relative(self, config: Mapping[str, int | None]) -> np.ndarray:
        """Like `loss`, against the all-FP32-weights probe outputs instead of the FP32 model."""
        self.loss(config)
        return self._relative[frozenset((g, b) for g, b in config.items() if b is not FP32)]

    def seen(self, config: Mapping[str, int | None]) -> bool:
        return frozenset((g, b) for g, b in config.items() if b is not FP32) in self._memo
