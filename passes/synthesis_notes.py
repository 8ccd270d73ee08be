"""What Synthesize says about its samples: the report's `synthesis` notes, the warnings that name what the
samples assume (an inferred or assumed input range, a kept BN's range, pixels drawn for in-graph
preprocessing) and the pass's one-line summary. Reads the SynthesisResult only; moves nothing.
"""

from __future__ import annotations

import logging

import numpy as np
from dfq_onnx.passes.synthesis_types import SynthesisOptions, SynthesisResult

from dfq_onnx.core.state import CompileState
from dfq_onnx.synth import layout
from dfq_onnx.synth.audio_range import FLOAT_AUDIO, INT16_AUDIO
from dfq_onnx.synth.augment import is_image_like

log = logging.getLogger("dfq_onnx.passes.synthesize")

# where samples that no search moved came from: (short words, the pass line's words) per start
STARTS = {"strokes": ("line drawings", "line drawings picked by the model"),
          "pink+pages": ("1/f prior and line-drawing pages",
                         "the 1/f prior, every second one a line-drawing page")}


def start_words(start: str | None, long: bool = False) -> str:
    """Where unsearched samples came from, in words (`long`: the pass line's form)."""
    short, full = STARTS.get(start, ("1/f prior", "the 1/f prior"))
    return full if long else short


def record(state: CompileState, result: SynthesisResult, options: SynthesisOptions) -> None:
    """The report's `synthesis` notes and the warnings about what the samples assume."""
    searched = result.loss_start is not None
    state.report.notes["synthesis"] = {
        "objective": result.objective, "samples": options.samples, "steps": result.steps,
        "population": options.population, "seed": options.seed,
        "loss_start": round(result.loss_start, 6) if searched else None,
        "loss_end": round(result.loss_end, 6) if searched else None,
        "forward_passes": result.forward_passes, "rows_evaluated": result.samples_evaluated,
        "cache_hit": result.cache_hit}
    state.report.notes["synthesis"]["start"] = result.start
    if result.preprocessed:
        state.report.notes["synthesis"]["sampled_after_preprocessing"] = list(result.preprocessed)
    if result.channels_last:
        state.report.notes["synthesis"]["channels_last_inputs"] = list(result.channels_last)
    if result.planes:
        state.report.notes["synthesis"]["plane_inputs"] = list(result.planes)
    if result.kept_bn:
        state.report.notes["synthesis"]["kept_bn"] = result.kept_bn
    if result.pages:
        state.report.notes["synthesis"]["pages"] = result.pages
    if result.pixel_drawn:
        state.report.notes["synthesis"]["drawn_in_pixel_range"] = {k: list(r) for k, r in
                                                                   result.pixel_drawn.items()}
        for k, (lo, hi) in result.pixel_drawn.items():
            log.warning("input %s: its in-graph preprocessing cannot make standardized values out of "
                        "[%g, %g] pixels (the range its scale implies); samples drawn in that range and "
                        "put through it; if it reads another range, pass --input-range %s:LOW,HIGH",
                        k, lo, hi, k)
    _warn_assumed_range(state, result, options.input_ranges)
    for k, r in result.kept_bn.get("input_range", {}).items():
        if r["range"] is not None:
            log.warning("input %s inferred to read %s: the BatchNormalization after its first layer's "
                        "activation (%s) fits samples there best (score %s); if it reads another range, "
                        "pass --input-range %s:LOW,HIGH", k, r["convention"], r["bn"],
                        ", ".join(f"{c} {v:.3g}" for c, v in r["score"].items()), k)


def summary(result: SynthesisResult, samples: int) -> str:
    """The pass's one line: where the samples came from, the search's loss, its cost or the cache."""
    if result.loss_start is None:
        prior = start_words(result.start, long=True)
        return f"{samples} samples from {prior} (no search: {result.objective} objective)"
    how = "from cache" if result.cache_hit else f"{result.forward_passes} ORT runs"
    loss = f"loss {result.loss_start:.4f} -> {result.loss_end:.4f}, {how}"
    if result.start == "envelopes":
        off = np.exp(result.kept_bn["log_mismatch"])
        return (f"{samples} samples, each the best of {result.kept_bn['candidates']} spectral envelopes of "
                f"the 1/f prior (its scale {off:.1f}x off the BN statistics kept after activations), {loss}")
    return f"{samples} samples ({result.objective}), {loss}"


def _warn_assumed_range(state: CompileState, result: SynthesisResult, ranges: dict) -> None:
    """Without BN statistics an image input's value range is read off the model (synth/input_range.py);
    the report keeps each inference's scores, and one warning says what the samples assume and names
    `--input-range` (a [0, 1]-pixel detector calibrated on standardized samples loses a third of its
    detections: BENCHMARKS.md, session 7; the inference can be wrong, e.g. PP-OCRv6 det: session 11)."""
    bn = result.objective.startswith("bn")      # statistics, but not at these inputs' first layers
    if (bn and not result.inferred) or result.start == "tokens":     # token path: no image input
        return
    notes = state.report.notes["synthesis"]
    where = " at its first layer" if bn else ""
    if result.inferred:
        notes["inferred_range"] = {k: r.note() for k, r in result.inferred.items()}
    for k, r in result.inferred.items():
        if r.range is not None and r.convention in AUDIO:
            log.warning("no BatchNormalization statistics: waveform input %s inferred to read %s (its first "
                        "biased layer balances biases and responses at a waveform std of %.2g: samples drawn "
                        "within +-%.3g); if it reads another range, pass --input-range %s:LOW,HIGH",
                        k, r.convention, 10 ** r.scores["log10_balance_std"], r.range[1], k)
        elif r.range is not None:
            log.warning("no BatchNormalization statistics%s: input %s inferred to read %s (the first layer's "
                        "biases match its responses there: %s); if it reads another range, pass "
                        "--input-range %s:LOW,HIGH", where, k, r.convention, _scores(r), k)
    first = channels_first_shapes(result)
    ranges = {**ranges, **result.pixel_drawn}
    unsized = [k for k, shape in first.items()
               if k not in ranges and k not in result.preprocessed and is_image_like(shape)
               and (k not in result.inferred or result.inferred[k].range is None)
               and (not bn or k in result.inferred)]
    if unsized:
        notes["assumed_range"] = {k: "standardized" for k in unsized}
        why = "; ".join(f"{k}: {_scores(result.inferred[k]) or 'no biased first layer'}"
                        for k in unsized if k in result.inferred)
        log.warning("no BatchNormalization statistics%s: synthetic samples for %s assume standardized inputs "
                    "(mean 0, std 1)%s; if the model reads a fixed range, pass it: --input-range %s:0,1 "
                    "([0, 1] pixels), %s:-1,1 ((x / 255 - 0.5) / 0.5, as PP-OCR), %s:0,255", where,
                    ", ".join(unsized), f" (range inference, log10 |bias| / response: {why})" if why else "",
                    *[unsized[0]] * 3)
    others = [k for k, shape in first.items() if k not in ranges and k not in result.preprocessed and not bn
              and k not in unsized and (k not in result.inferred or result.inferred[k].range is None)
              and result.inputs[k].dtype.kind == "f"]
    if others:       # audio, spectrograms, features: nothing in the graph tells their scale
        notes.setdefault("assumed_range", {}).update({k: "standardized" for k in others})
        log.warning("no BatchNormalization statistics: synthetic samples for %s assume standardized values "
                    "(mean 0, std 1); if it reads another scale (audio in [-1, 1], 16-bit PCM samples), pass "
                    "--input-range %s:LOW,HIGH, or --calib FILE.npz with real inputs", ", ".join(others),
                    others[0])


AUDIO = (FLOAT_AUDIO[0], INT16_AUDIO[0])


def channels_first_shapes(result: SynthesisResult) -> dict[str, tuple]:
    """Each input's sample shape as synthesis read it: channels-last inputs moved channels-first, plane
    inputs given their one channel."""
    last = result.channels_last
    return {k: (v.shape[0], *layout.to_channels_first(v.shape[1:])) if k in last
            else (v.shape[0], 1, *v.shape[1:]) if k in result.planes else v.shape
            for k, v in result.inputs.items()}


def _scores(r) -> str:
    return ", ".join(f"{k} {v:+.2f}" for k, v in sorted(r.scores.items(), key=lambda kv: abs(kv[1])))
