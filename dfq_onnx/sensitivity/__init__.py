"""Sensitivity: each quantizer group at each legal precision scored at the model output -- the probe
model and its evaluator (`probe`), segmented evaluation on a cached prefix (`segments`), the loss table,
metrics and its JSON form (`table`).

Produces (through passes/sensitivity.py): `state.sensitivity` (a SensitivityTable) and `state.meter`.
Consumes: `state.graph`, `state.spec`, `state.groups`, `state.ranges`, the scoring samples.
May import: core, backends, corrections (each candidate is
scored with its bias correction).
"""
