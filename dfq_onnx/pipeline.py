"""The default pass list, visible in one place."""

from __future__ import annotations

from .options import QuantizeOptions
from .pass_base import Pass
from .passes.analytic_ranges import AnalyticRanges
from .passes.calibrate import Calibrate
from .passes.emit_qdq import EmitQDQ
from .passes.fold_bn import FoldBatchNorm
from .passes.normalize import Normalize
from .passes.plan_uniform import UniformPlan
from .passes.quant_groups import FindQuantGroups
from .target import TargetProfile


def required_opset(target: TargetProfile, options: QuantizeOptions) -> int:
    w = options.weight_bits or target.default_weight_bits
    a = options.act_bits or target.default_act_bits
    return target.opset_for([target.weight_dtype(w), target.act_dtype(a)])


def default_pipeline(target: TargetProfile, options: QuantizeOptions) -> list[Pass]:
    analytic = [AnalyticRanges()] if options.calib == "analytic" else []
    return [
        Normalize(required_opset(target, options)),
        FoldBatchNorm(),
        FindQuantGroups(),
        *analytic,
        Calibrate(),
        UniformPlan(),
        EmitQDQ(),
    ]
