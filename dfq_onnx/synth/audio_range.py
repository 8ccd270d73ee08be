"""The scale of a float waveform input, read off its first biased layer.

A waveform input [N, T] has no convention the graph declares: torchaudio / librosa / soundfile give
float audio in [-1, 1] (silero-vad), other front ends take 16-bit sample values as floats
(openWakeWord's melspectrogram). Synthesis draws standardized samples unless told, and for silero-vad
v6 those set the STFT magnitudes' encodings ~20x above a speech frame's (frame AUC 0.685 vs 0.974 with
`--input-range input:-1,1`; BENCHMARKS.md, session 15).

The evidence is the one `input_range` reads for images: a layer whose BN was fused at export (silero's
RepVGG `reparam_conv`) has |b_c| / std(y_c) = O(1) on inputs like the training inputs. When the path from
the input to that layer is homogeneous of degree 1 (a framing Pad, the STFT as a Conv, the magnitude
sqrt(re^2 + im^2): |STFT(s x)| = s |STFT(x)|), the median log-ratio falls by exactly one decade per
decade of input scale, so the scale at which it crosses 0 -- the *balance std* -- estimates the training
audio's level:

    score(s) = median_c log10(|b_c| / std(y_c)) on samples of std s,    balance = s 10^score(s)

The slope is measured (standard-normal samples, and the same samples x 0.01); a path that is not
homogeneous (a log-mel before the first bias) is not read. The pick is a class, decades apart, not a
fine scale: balance <= FLOAT_BELOW -> float audio in [-1, 1] (speech recorded at full scale in [-1, 1]
has an rms of 0.01-0.1; silero v6 balances at 0.004); balance >= INT16_ABOVE -> 16-bit sample values
(an rms of 300-3000); in between (standardized features): no pick. No biased layer (openWakeWord's
melspectrogram: STFT, mel MatMul, log, no bias anywhere) -> no pick, the samples stay standardized and the
compile's warning names `--input-range`.

The convention bounds the samples; it is not their level. A recording fills [-1, 1] only at its peaks
(speech at an rms of 0.01-0.1), while samples squashed onto the whole range have an rms of ~0.36, a
full-scale noise no microphone records: silero v6's STFT magnitudes then took 8-bit ranges ~25x above
speech, and bias correction measured E[x] at that level (shifts 10-20x those real frames give): 55.8 %
of FP32's decisions kept. The balance std is the model's own evidence of its training level, so the
samples are drawn within +-LEVEL x balance (clipped to the convention's range), an rms a decade or so
above the balance -- speech above the silence and noise the training audio also holds:

    range = (-a, a),  a = min(bound, LEVEL x balance)

silero v6 (faster-whisper's export; balance 0.0035): 55.8 -> 95.9 % of FP32's decisions kept; silero-vad
6.2.3's per-frame export (balance 0.011): 71.9 -> 95.9 %; LEVEL 10 / 30 read 93.5 / 96.5 and 96.4 / 93.4 %
on the two (BENCHMARKS.md, session 23). Not measured on a 16-bit-valued model (none with a biased first
layer found); the same rule applies.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.backends.chunks import static_batch
from dfq_onnx.synth.input_range import RangeInference, _log_ratios, biased_layers, observer, sample_count

FLOAT_AUDIO = ("[-1, 1] (float audio)", (-1.0, 1.0))
INT16_AUDIO = ("16-bit sample values", (-32768.0, 32767.0))
FLOAT_BELOW = 0.1        # balance std at or below: float audio in [-1, 1]
INT16_ABOVE = 100.0      # at or above: 16-bit sample values
LEVEL = 20.0             # samples within +-LEVEL x the balance std (module docstring)
SLOPE = (0.85, 1.15)     # decades of score per decade of input scale that count as homogeneous
MIN_SAMPLES = 256        # a waveform: [N, T] with T at least this
MIN_CHANNELS = 8


def is_waveform(shape: tuple[int, ...]) -> bool:
    """A per-batch shape [N, T] long enough to be audio samples."""
    return len(shape) == 2 and shape[1] >= MIN_SAMPLES


def infer_audio_range(graph: gs.Graph, name: str, shape: tuple[int, ...], seed: int = 0) -> RangeInference:
    """The waveform convention input `name` reads (module docstring); `shape` is its per-sample [T]."""
    layers = biased_layers(graph, name)
    sess = observer(graph, layers, prune_inputs=True) if layers else None
    if sess is None:
        return RangeInference(name, None, None, {}, 0, ())
    count = sample_count((1, *shape), layers)         # bounded by the layers' outputs (a long waveform)
    x = np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
    fixed = static_batch(graph)
    at = {}
    for scale in (1.0, 0.01):
        ratios = _log_ratios(runtime.run_all(sess, {name: x * np.float32(scale)}, fixed), layers)
        if len(ratios) < MIN_CHANNELS:
            return RangeInference(name, None, None, {}, len(ratios), ())
        at[scale] = float(np.median(ratios))
    slope = (at[0.01] - at[1.0]) / 2.0
    balance = 10.0 ** at[1.0]
    scores = {"standardized": at[1.0], "slope_decades_per_decade": slope, "log10_balance_std": at[1.0]}
    names = tuple(nd.name for nd, _ in layers)
    if not SLOPE[0] <= slope <= SLOPE[1]:
        return RangeInference(name, None, None, scores, len(ratios), names)
    pick = FLOAT_AUDIO if balance <= FLOAT_BELOW else INT16_AUDIO if balance >= INT16_ABOVE else None
    if pick is None:
        return RangeInference(name, None, None, scores, len(ratios), names)
    a = min(pick[1][1], LEVEL * balance)
    return RangeInference(name, pick[0], (-a, a), scores, len(ratios), names)
