"""Backends: how a target runs and encodes -- Q/DQ node creation and the weight / activation encodings
(`qdq`, shared by Emit and the sensitivity probe), ONNX Runtime sessions (`runtime`), latency tables and
timing (`latency`), AIMET/QNN encodings export (`encodings`), how many rows one ORT call may take
(`chunks.rows_per_chunk`, the rule every forward-pass stage shares), in-graph range observers
(`observers`), which float ops ORT's optimized graph still runs between Q/DQ pairs (`fusion`), and
large sample and output sets kept in a temporary file (`spill`, `row_store`).

Consumes: `state.spec`, `state.ranges`, the target profile. May import: core.
"""
