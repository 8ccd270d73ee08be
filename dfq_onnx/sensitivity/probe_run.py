"""Running a probe model (probe.py): one CPU session, the select feeds of a configuration, and the
segmented runner the scorer uses (dfq_onnx.sensitivity.segments)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import onnxruntime as ort

from dfq_onnx.backends import runtime
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.sensitivity.form_switch import slot_of

if TYPE_CHECKING:
    from dfq_onnx.sensitivity.probe import ProbeModel

FP32 = None   # the weight "bit-width" of an unquantized group


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
        # and each would keep an arena as large as its own peak: 2 S arenas of one chunk's activations
        # (PP-OCRv4 rec, 9 segments: 3.6 GB; MiniLM-L3, 12 segments: 1.8 GB -> 1.45); without the arena
        # a segment frees what it used
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return runtime.create(model, opts)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"ONNX Runtime cannot load the probe model: {first}") from None


class Probe:
    """One session over a ProbeModel; `run(config, feeds)` evaluates a configuration.

    A configuration maps group id -> weight bits (one of `bits`) or None (FP32), and activation group id ->
    activation bits (one of `act_bits`) or None (float); absent groups are FP32 / float.
    """

    def __init__(self, probe: "ProbeModel", optimize: bool = True, threads: int = 0, segmented: bool = False,
                 samples: int | None = None):
        self.probe, self._optimize, self._threads = probe, optimize, threads
        self._session = None
        self.slot = {FP32: 0, **{b: i + 1 for i, b in enumerate(probe.bits)}}
        self.form_slot = {g: slot_of(keys) for g, keys in (probe.form_keys or {}).items()}
        self.act_slot = {FP32: 0, **{b: i + 1 for i, b in enumerate(probe.act_bits)}}
        self.selects = {**probe.selects, **probe.act_selects}
        self._segmented, self._samples, self._runner = segmented and probe.graph is not None, samples, None

    @property
    def runner(self):
        """The segmented runner (None when not segmented), built on first use: its 2 S sessions each hold
        their segment's weights, so they are made after the evaluator's FP32 reference run (whose session
        holds the whole model's) has ended, not beside it."""
        if self._segmented and self._runner is None:
            from dfq_onnx.sensitivity.segments import CACHE_BYTES, SegmentedRunner

            probe, optimize, threads = self.probe, self._optimize, self._threads
            bound = None if self._samples is None else CACHE_BYTES // 4 // max(self._samples, 1)
            inputs = probe.inputs + tuple(probe.dither)    # the grid offsets (dither.py) feed every segment
            self._runner = SegmentedRunner(
                probe.graph, probe.fast_graph, probe.units, self.selects, inputs,
                lambda m: session(m, optimize, threads, fuse_qdq=False), max_cache_elements=bound,
                attached=probe.attached, fed=tuple(probe.fed))
        return self._runner

    @property
    def session(self):
        """The whole probe's session, built on first use (a segmented scorer may never need it)."""
        if self._session is None:
            self._session = session(self.probe.model, self._optimize, self._threads)
        return self._session

    def run_batch(self, config: Mapping[str, int | None], feeds: dict[str, np.ndarray],
                  key=None) -> list[np.ndarray]:
        """Outputs for `config` on one batch; with a segmented runner and a batch `key`, from the first
        segment the configuration changes (dfq_onnx.sensitivity.segments)."""
        select = self.select_feeds(config)
        feeds = {**feeds, **self.probe.fed}      # the form switches' weights (form_switch.py)
        if self.runner is None or key is None:
            return self.session.run(None, {**feeds, **select})
        changed = {g for g, b in config.items() if b is not FP32}
        by_group = {g: select[name] for g, name in self.selects.items()}
        return self.runner.run(key, feeds, by_group, changed)

    def select_feeds(self, config: Mapping[str, int | None]) -> dict[str, np.ndarray]:
        unknown = sorted(set(config) - set(self.selects))
        if unknown:
            raise UnsupportedModelError(f"group '{unknown[0]}' has no switch in the probe model")
        weights = {g: self.form_slot.get(g, self.slot) for g in self.probe.selects}
        for g, b in config.items():
            slots = weights[g] if g in self.probe.selects else self.act_slot
            if b not in slots:
                legal = tuple(slots)[1:]
                raise UnsupportedModelError(f"group '{g}': {b} is not among the probe's candidates {legal}")
        feeds = {name: np.array(weights[g][config.get(g)], np.int64)
                 for g, name in self.probe.selects.items()}
        feeds.update({name: np.array(self.act_slot[config.get(g)], np.int64)
                      for g, name in self.probe.act_selects.items()})
        return feeds

    def run(self, config: Mapping[str, int | None], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {**feeds, **self.probe.fed, **self.select_feeds(config)})
