"""The default pass list, visible in one place."""

from __future__ import annotations

from dfq_onnx.allocation.problem import Budget
from dfq_onnx.core import candidates
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import Pass
from dfq_onnx.core.target import FLOAT_BITS, TargetProfile
from dfq_onnx.passes.absorb_bias import AbsorbHighBias
from dfq_onnx.passes.act_precision import ChooseActivationPrecision
from dfq_onnx.passes.allocate import AllocateBits
from dfq_onnx.passes.analytic_ranges import AnalyticRanges
from dfq_onnx.passes.assumed_input import FloatAssumedInput
from dfq_onnx.passes.bias_correction import CorrectBias
from dfq_onnx.passes.calibrate import Calibrate
from dfq_onnx.passes.check_usage import CheckUsage
from dfq_onnx.passes.choose_forms import ChooseInputForms
from dfq_onnx.passes.choose_recurrent import ChooseRecurrentForms, recurrent_forms
from dfq_onnx.passes.data_tail import AttachTail, DetachTail
from dfq_onnx.passes.dense_output_check import DenseOutputRange
from dfq_onnx.passes.dfmpc import CompensateDFMPC
from dfq_onnx.passes.emit_forms import EmitForms
from dfq_onnx.passes.emit_qdq import EmitQDQ
from dfq_onnx.passes.emit_recurrent import EmitRecurrentForms
from dfq_onnx.passes.equalize import EqualizeCrossLayer
from dfq_onnx.passes.fold_bn import FoldBatchNorm
from dfq_onnx.passes.hardswish_floor import HardSwishRangeFloor
from dfq_onnx.passes.head_ranges import HeadMaxRanges
from dfq_onnx.passes.inferred_input import CoverInferredInput
from dfq_onnx.passes.input_moments import MeasureInputMoments
from dfq_onnx.passes.interface import RestoreInterface
from dfq_onnx.passes.keep_float import KeepFloat, KeepFloatChosen
from dfq_onnx.passes.normalize import Normalize
from dfq_onnx.passes.plan_uniform import UniformPlan
from dfq_onnx.passes.pool_range import PooledRangeTop
from dfq_onnx.passes.probability_output import OutputProbabilitySpan
from dfq_onnx.passes.quant_groups import FindQuantGroups
from dfq_onnx.passes.residual_sum import ResidualSum
from dfq_onnx.passes.score_prior import ScoreTopPrior
from dfq_onnx.passes.sensitivity import ScoreSensitivity, SensitivityOptions
from dfq_onnx.passes.separate_bias import SeparateBias
from dfq_onnx.passes.silu_floor import SiluRangeFloor
from dfq_onnx.passes.smooth import SmoothActivations
from dfq_onnx.passes.synthesize import SynthesisOptions, Synthesize
from dfq_onnx.passes.twin_ranges import ChooseTwinRanges

SCORE_SAMPLES = 256   # scoring samples for sensitivity (bounds its cost on large calibration sets)
ACT_SAMPLES = 32      # scoring samples of the default activation decision (outliers are large effects)


def required_opset(target: TargetProfile, options: QuantizeOptions) -> int:
    """Opset the encodings need: every legal candidate's types for a mixed plan, else the uniform pair;
    and the activation choices' types when activation precision is a decision."""
    if options.mixed:
        pairs = [p for p in target.pairs if p[0] in options.score_bits or p[0] == target.default_weight_bits]
    else:
        pairs = [(options.weight_bits or target.default_weight_bits,
                  options.act_bits or target.default_act_bits)]
    dtypes = [target.weight_dtype(w) for w, _ in pairs]
    dtypes += [target.act_dtype(a) for _, a in pairs if a != FLOAT_BITS]
    if options.act_bits is None:
        dtypes += [target.act_dtype(a) for a in target.act_choices if a != FLOAT_BITS]
    return target.opset_for(dtypes)


def measures_float(options: QuantizeOptions) -> bool:
    """Whether KeepFloat times the model itself: the default plan (no budget, no --weight-bits /
    --act-bits, no --latency-table, samples to run) with the check on."""
    default = options.weight_bits is None and options.act_bits is None and options.calib != "analytic"
    return options.latency_check and default and not options.mixed and not options.latency_table


def smoothing(target: TargetProfile, options: QuantizeOptions) -> bool:
    """Whether SmoothActivations runs: --smooth, or by default where the target's `[activation] smoothing`
    is "outliers" (OpenVINO) and activations may be 8-bit; never on --calib analytic's ranges."""
    default = options.smooth is None and target.smoothing == "outliers" and options.act_bits in (None, 8)
    return (bool(options.smooth) or default) and options.calib != "analytic"


def dynamic_smoothing(target: TargetProfile, options: QuantizeOptions) -> bool:
    """Whether SmoothActivations also takes the dynamic int8 form's inputs: --smooth, or by default where
    the target's `[forms] smoothing` is "outliers" (ort-cpu ships "off"), for the default plan (8-bit
    weights, no budget: the grid it scores is the dynamic form's W8); never on --calib analytic."""
    if target.form_settings.get("smoothing", "off") == "off" and not options.smooth:
        return False
    plan = not options.mixed and options.weight_bits in (None, 8) and options.act_bits in (None, 8)
    return plan and options.smooth is not False and options.calib != "analytic"


def form_decision(target: TargetProfile, options: QuantizeOptions) -> bool:
    """Whether ChooseInputForms runs: the default plan (no budget, no --weight-bits / --act-bits) on a
    target whose [forms] may write a MatMul in a dynamic form, on samples (not --calib analytic)."""
    dynamic = any(candidates.form(c) == "dyn" for op in target.forms for c in target.forms_for(op))
    default = not options.mixed and options.weight_bits is None and options.act_bits is None
    return dynamic and default and options.calib != "analytic"


def low_bit_weights(target: TargetProfile, options: QuantizeOptions) -> bool:
    """Whether the plan may put weights below 8 bits (a budget, or --weight-bits below 8) and
    --weight-clip / --gptq ask for their moment-weighted clip search or Hessian-aware rounding before
    the plan, so that the sensitivity table scores those weights (passes/input_moments.py)."""
    low = options.mixed or (options.weight_bits or target.default_weight_bits) < 8
    return bool(options.weight_clip or options.gptq) and low


def gptq_after_plan(options: QuantizeOptions) -> bool:
    """Whether GPTQ rounds a mixed plan's weights below 8 bits after the plan is made (the default: a
    budget, --gptq not given, no --weight-clip): the table and the allocator see round-to-nearest
    weights, because the synthetic samples' H overstates GPTQ's gains. A uniform --weight-bits below 8
    keeps round-to-nearest (ResNet-56 W4A8 -0.5 top-1 with it; BENCHMARKS.md, issue 17 session 14)."""
    return options.gptq is None and not options.weight_clip and options.mixed


def _synthesis(options: QuantizeOptions, forms: bool = False) -> Synthesize:
    extra = {"steps": options.synth_steps} if options.synth_steps is not None else {}
    return Synthesize(SynthesisOptions(samples=options.synth_samples, seed=options.seed,
                                       cache_dir=options.cache_dir, use_cache=options.use_cache,
                                       progress=options.progress, input_ranges=dict(options.input_ranges),
                                       **extra), forms=forms)


def _mixed(options: QuantizeOptions) -> list[Pass]:
    budget = Budget(avg_weight_bits=options.avg_weight_bits, size_mb=options.size_mb,
                    bops_ratio=options.bops_ratio, latency_ms=options.latency_ms)
    scoring = SensitivityOptions(weight_bits=options.score_bits, hops=options.hops, samples=SCORE_SAMPLES,
                                 metric=options.metric,
                                 pairs=options.allocator == "ilp-pairs", pair_bits=(2, 4), incontext=False,
                                 extrapolate=True, budget_bits=options.avg_weight_bits,
                                 bias_correction=options.correct_bias,
                                 dither=2 if options.dither_scoring else 1, cache_dir=options.cache_dir,
                                 use_cache=options.use_cache, progress=options.progress)
    return [ScoreSensitivity(scoring), AllocateBits(budget, options.allocator, options.max_drop,
                                                 pareto=options.pareto is not None,
                                                 latency_table=options.latency_table)]


def _activations(options: QuantizeOptions) -> ChooseActivationPrecision:
    return ChooseActivationPrecision(samples=ACT_SAMPLES, metric=options.metric,
                                     use_cache=options.use_cache, cache_dir=options.cache_dir)


def default_pipeline(target: TargetProfile, options: QuantizeOptions) -> list[Pass]:
    """The passes for `options`; CheckUsage runs the later passes' usage checks before any of them."""
    synthesize = options.calib == "synthetic" or (options.mixed and not options.calib.endswith(".npz"))
    dynamic = dynamic_smoothing(target, options)
    forms = form_decision(target, options)
    head = [
        Normalize(required_opset(target, options)),
        DetachTail(),
        FoldBatchNorm(),
        *([EqualizeCrossLayer(criterion=options.cle_criterion)] if options.cle else []),
        *([AbsorbHighBias()] if options.bias_absorption else []),
        FindQuantGroups(),
        *([KeepFloat(options.latency_table)] if options.latency_table and not options.mixed else []),
    ]
    tail = [
        *([_synthesis(options, forms=dynamic or forms)] if synthesize else []),
        *([AnalyticRanges()] if options.calib == "analytic" else []),
        *([SmoothActivations(outliers=options.smooth is None, static=smoothing(target, options),
                             dynamic=dynamic)] if smoothing(target, options) or dynamic else []),
        Calibrate(),
        *([ChooseTwinRanges(ACT_SAMPLES, options.metric)]
          if options.twin_ranges and options.calib == "synthetic" else []),
        *([CoverInferredInput(), FloatAssumedInput()] if options.calib == "synthetic" else []),
        *([MeasureInputMoments(full=options.gptq, clip=options.weight_clip)]
          if low_bit_weights(target, options) else []),
        *([HeadMaxRanges(), ScoreTopPrior(), PooledRangeTop(), OutputProbabilitySpan(), DenseOutputRange()]
          if options.calib == "synthetic" else []),
        SiluRangeFloor(),
        HardSwishRangeFloor(),
        *([KeepFloat()] if measures_float(options) else []),
        *(_mixed(options) if options.mixed else [UniformPlan()]),
        *([ChooseInputForms(samples=ACT_SAMPLES, metric=options.metric, use_cache=options.use_cache,
                            cache_dir=options.cache_dir)] if forms else []),
        *([ChooseRecurrentForms(samples=ACT_SAMPLES, metric=options.metric, use_cache=options.use_cache,
                                cache_dir=options.cache_dir)] if recurrent_forms(target) else []),
        *([_activations(options)] if not options.mixed and options.act_bits is None else []),
        *([KeepFloatChosen(ACT_SAMPLES, options.metric)] if measures_float(options) else []),
        *([MeasureInputMoments(full=True, after_plan=True)] if gptq_after_plan(options) else []),
        *([CompensateDFMPC()] if options.dfmpc else []),
        *([CorrectBias()] if options.correct_bias else []),
        *([EmitRecurrentForms()] if recurrent_forms(target) else []),
        EmitForms(),
        EmitQDQ(),
        *([SeparateBias(target.bias_separate)] if target.bias_separate else []),
        *([ResidualSum()] if target.residual_sum else []),
        AttachTail(),
        RestoreInterface(),
    ]
    return [*head, CheckUsage(tail), *tail]
