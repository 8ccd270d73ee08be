"""Usage errors before any expensive work: every later pass's own `check(state)`, run up front.

Some option mistakes can only be seen against the model and the target: an illegal (weight, activation)
pair for one of the model's ops, a budget no legal plan meets, a latency table of another model. Each
pass knows its own rules (`Pass.check`); this pass runs them right after FindQuantGroups, so such an
error reaches the user in seconds instead of after synthetic calibration and sensitivity scoring:

    Normalize -> FoldBatchNorm -> FindQuantGroups -> CheckUsage(later) -> Synthesize -> ... -> EmitQDQ
                                                          |  later[i].check(state), no ORT run
                                                          v
                                         UsageError naming the option (exit code 2)

An error is reported under the name of the pass whose rule failed, exactly as if that pass had raised it.
"""

from __future__ import annotations

from typing import Sequence

from dfq_onnx.core.errors import DfqError, PassError
from dfq_onnx.core.pass_base import Pass, PassResult
from dfq_onnx.core.state import CompileState


class CheckUsage(Pass):
    """Analysis: run the usage checks of the passes that follow, before any of them runs."""

    name = "CheckUsage"

    def __init__(self, passes: Sequence[Pass]):
        self.passes = tuple(passes)

    def run(self, state: CompileState) -> PassResult:
        for p in self.passes:
            try:
                p.check(state)
            except DfqError as exc:
                if isinstance(exc, PassError):
                    raise
                raise PassError(f"{p!r}: {exc}", exc) from exc
        return PassResult(False, f"usage checks of {len(self.passes)} passes")
