"""Backends: how a target runs and encodes -- Q/DQ node creation and the weight / activation encodings
(`qdq`, shared by Emit and the sensitivity probe), ONNX Runtime sessions (`runtime`), latency tables and
timing (`latency`), AIMET/QNN encodings export (`encodings`).

Consumes: `state.spec`, `state.ranges`, the target profile. May import: core.
"""
