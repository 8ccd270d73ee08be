"""An input whose value range is only assumed is read float by the layers it reaches.

Synthetic samples need an input scale. BN statistics at the first layers pin it, an in-graph prefix or
`--input-range` names it, the first layer's biases can imply it (`synth/input_range.py`); where none of
these speaks -- a BN-free model reading log-mel frames, another model's embeddings, sensor values, or an
image whose range inference abstained -- the samples are standardized (mean 0, std 1) and Synthesize
warns (report `notes.synthesis.assumed_range`). Everything calibrated on those samples is then a guess,
and the input's own quantizer is where a wrong guess is lost for good: a value outside the guessed range
is clipped before any layer sees it. openWakeWord's speech-embedding CNN reads `log-mel / 10 + 2`, values
in [3.6, 12.3]: calibrated on standardized samples its input encoding spans [-2.3, 2.4] and clips every
frame to a constant -- the wake word is never detected (AUC 0.50; FP32 0.86). Its first convolution's
kernels sum to zero, so nothing in the graph tells the offset; no inference could have found it.

So such an input (and what layout ops make of it: carriers, `passes/inferred_input.py`) is not quantized
when it is not an image. An image input whose range inference abstained keeps its encoding: standardized
samples span [0, 1] and [-1, 1] pixels without clipping them, and a 0..255 input is what the inference's
robust part picks (`synth/input_range.py`); a signal's, a feature vector's or an embedding's scale is
anybody's guess:

    input ──► Reshape / Transpose ... ──────────► Conv (float input, W8 weights) ──Q──DQ──► ...
              (no Q/DQ: nothing clips the input)

Deeper ranges still come from the standardized samples (a scale guess, not a clip of the input itself);
the same model then keeps 94 % of FP32's decisions (AUC 0.85). The cost is the first layer's integer
kernel. A range known any other way (statistics, `--input-range`, an inferred convention, a prefix, real
`--calib` data) is untouched: this pass reads only the inputs Synthesize recorded as assumed.
"""

from __future__ import annotations

import logging

from dfq_onnx.passes.inferred_input import carriers
from dfq_onnx.passes.synthesis_notes import channels_first_shapes

from dfq_onnx.backends import act_precision
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState
from dfq_onnx.synth.augment import is_image_like

log = logging.getLogger(__name__)


def assumed_inputs(state: CompileState) -> list[str]:
    """The non-image inputs whose synthetic samples assumed a range (Synthesize's note), in name order."""
    assumed = state.report.notes.get("synthesis", {}).get("assumed_range") or {}
    if not assumed or state.synthetic is None:
        return []
    shapes = channels_first_shapes(state.synthetic)
    return sorted(k for k in assumed if k in shapes and not is_image_like(shapes[k]))


class FloatAssumedInput(Pass):
    """Analysis: leave unquantized the inputs whose range was assumed, and their layout carriers."""

    name = "FloatAssumedInput"

    def run(self, state: CompileState) -> PassResult:
        names = assumed_inputs(state)
        spec = state.spec
        quantized = set(spec.act_tensors)
        floats = {name: [t for t in carriers(state.graph, name) if t in quantized] for name in names}
        floats = {k: v for k, v in floats.items() if v}
        if not floats:
            return PassResult(False, "no quantized input with an assumed range")
        tensors = {t for v in floats.values() for t in v}
        state.spec = act_precision.without(spec, state.graph, tensors)
        state.act_groups = act_precision.build_act_groups(state.graph, state.spec, state.target)
        state.report.notes["float_assumed_input"] = floats
        log.warning("input %s: its range was assumed (standardized samples), so it is read float by the "
                    "layers it reaches (an input quantizer on a guessed range clips real values); pass "
                    "--input-range or --calib to quantize it", ", ".join(sorted(floats)))
        return PassResult(False, f"{len(tensors)} input tensors with an assumed range left float")
