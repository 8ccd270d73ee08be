"""Report: fills the compile report with FP32-vs-quantized comparisons and per-layer rows (`data`) and
renders it as one self-contained HTML page (`html`). The `Report` container itself is core's
(`core.report`), since every pass writes to it.

Consumes: the final `CompileState` and the emitted model. May import: core, backends.
"""
