"""Synthesis: calibration samples with no user data -- gradient-free search (`search`), the objectives
run in ONNX Runtime (`objectives`: BN-statistics matching, label margins), the batched runner
(`runner`), the calibration views of image samples (`augment`) and the value range a BN-free image
input reads, inferred from its first layer (`input_range`).

Produces (through passes/synthesize.py): `state.synthetic` (samples, labels, losses) and `state.calib`.
Consumes: `state.graph`, `state.bn_stats`. May import: core, backends.
"""
