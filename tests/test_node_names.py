"""A converter that names each node's output after the node (madmom's: node 'matmul_60' writes tensor
'matmul_60'): the names the compile derives from a node (a dynamic MatMul's `<node>_scale`) and from a
tensor (its Q/DQ's `<tensor>_scale`) must not meet (backends/act_qdq.py: _free_base)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from _util import sqnr_db
from dfq_onnx.models import builders

import dfq_onnx

FAST = dict(synth_samples=8, synth_steps=2, use_cache=False, progress=False, latency_check=False)


@pytest.mark.parametrize("same", [False, True])
def test_outputs_named_like_their_nodes_compile_to_the_same_model(same):
    model = builders.frame_mlp_conv(outputs_named_like_nodes=same)
    out, _ = dfq_onnx.quantize(model, **FAST)
    assert any(n.op_type == "MatMulInteger" for n in out.graph.node)
    x = np.random.default_rng(1).standard_normal((4, 12, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"input": x})[0]
    assert sqnr_db(ref, got) > 25
