"""Normalize: constant folding, IR 3 inputs, opset upgrades, refusals, and the caller's proto untouched."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from _util import compile_state, normal_feeds, run, state_model
from dfq_onnx.models import builders
from dfq_onnx.passes.normalize import Normalize

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.core.errors import PassError, UnsupportedModelError
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.target import load_target

ATOL, RTOL = 1e-5, 1e-5   # normalization must not change the FP32 function beyond float rounding


def _normalize(model, required_opset=13):
    return compile_state(model, [Normalize(required_opset)])


def test_constant_nodes_become_initializers_and_shape_subgraph_folds():
    model = builders.constant_weights(c=8, classes=5)
    state = _normalize(model)
    ops = [n.op for n in state.graph.nodes]
    # 11 nodes in: 3 Constant + conv, relu, gap, shape, gather, concat, reshape, fc. The Constants become
    # initializers and shape -> gather -> concat folds to the constant [-1, 8] (only the static C is read).
    assert ops == ["Conv", "Relu", "GlobalAveragePool", "Reshape", "MatMul"]
    conv, reshape, fc = state.graph.nodes[0], state.graph.nodes[3], state.graph.nodes[4]
    assert isinstance(conv.inputs[1], gs.Constant) and conv.inputs[1].name == "conv.weight"
    assert isinstance(fc.inputs[1], gs.Constant)
    np.testing.assert_array_equal(reshape.inputs[1].values, [-1, 8])
    assert state.report.model["nodes_in"] == 11 and state.report.model["nodes"] == 5
    feeds = normal_feeds(model, n=4)
    np.testing.assert_allclose(run(state_model(state), feeds)[0], run(model, feeds)[0], atol=ATOL, rtol=RTOL)


def test_initializers_listed_as_inputs_are_dropped():
    model = builders.conv_bn_relu(opset=9, init_as_inputs=True)
    assert model.ir_version == 3 and len(model.graph.input) == 8   # input + 3 conv + 4 BN tensors
    state = _normalize(model)
    assert [t.name for t in state.graph.inputs] == ["input"]
    out, _ = dfq_onnx.quantize(model, progress=False)
    assert [i.name for i in out.graph.input] == ["input"]


def test_opset_upgraded_11_to_13():
    model = builders.conv_bn_relu(opset=11)
    state = _normalize(model)
    assert state.graph.opset == 13
    assert (state.report.model["opset_in"], state.report.model["opset"]) == (11, 13)
    feeds = normal_feeds(model, n=4)
    np.testing.assert_allclose(run(state_model(state), feeds)[0], run(model, feeds)[0], atol=ATOL, rtol=RTOL)


def test_opset_7_upsample_is_upgraded_exactly():
    # Observed: the ONNX version converter rewrites Upsample-7 (scales attribute) into Resize.
    model = builders.bad_old_opset(op="Upsample")
    state = _normalize(model)
    assert [n.op for n in state.graph.nodes] == ["Conv", "Relu", "Resize"] and state.graph.opset == 13
    feeds = normal_feeds(model, n=1)
    np.testing.assert_array_equal(run(state_model(state), feeds)[0], run(model, feeds)[0])


def test_opset_7_experimental_op_is_a_clean_error():
    # Observed: ImageScaler has no schema today, so the version converter raises; Normalize turns that
    # into UnsupportedModelError asking for a re-export.
    with pytest.raises(PassError) as info:
        dfq_onnx.quantize(builders.bad_old_opset(op="ImageScaler"), progress=False)
    assert isinstance(info.value.cause, UnsupportedModelError) and info.value.exit_code == 1
    assert "ImageScaler" in str(info.value) and "opset >= 13" in str(info.value)


def test_opset_upgrade_error_names_the_node():
    with pytest.raises(PassError) as info:
        dfq_onnx.quantize(builders.bad_old_opset(op="ImageScaler"), progress=False)
    assert "'legacy'" in str(info.value) and "%s" not in str(info.value)


def _run_normalize(model):
    state = CompileState(graph=None, target=load_target("ort-cpu"), options=QuantizeOptions(progress=False),
                         report=Report(), source=ir.load_model(model))
    Normalize().run(state)


@pytest.mark.parametrize("model, names", [
    (builders.bad_bf16(), ["'input'", "bfloat16"]),
    (builders.bad_already_quantized(), ["'q_in'", "already quantized"]),
    (builders.bad_custom_domain(), ["'custom'", "com.example"]),
    (builders.bad_if_conv(), ["'branch'", "Conv"]),
], ids=["bf16", "already-quantized", "custom-domain", "if-around-conv"])
def test_refusals_name_the_node_or_tensor(model, names):
    with pytest.raises(UnsupportedModelError) as info:
        _run_normalize(model)
    for name in names:
        assert name in str(info.value)
    with pytest.raises(PassError) as wrapped:    # through the API: wrapped with the pass name
        dfq_onnx.quantize(model, progress=False)
    assert isinstance(wrapped.value.cause, UnsupportedModelError)
    assert str(wrapped.value).startswith("Normalize")


@pytest.mark.parametrize("build", [*builders.GOOD_BUILDERS.values(),
                                   lambda: builders.conv_bn_relu(opset=9, init_as_inputs=True)])
def test_source_proto_not_mutated(build):
    model = build()
    before = model.SerializeToString()
    dfq_onnx.quantize(model, progress=False)
    assert model.SerializeToString() == before


def test_values_after_a_contrib_op_are_typed_by_onnx_runtime():
    """ONNX shape inference stops at com.microsoft ops: ORT's resolution types what follows, so the
    MatMul behind an ORT-fused FastGelu is quantized like the one before it."""
    model = builders.contrib_gelu_mlp()
    state = _normalize(model)
    assert state.graph.tensors()["gelu_out"].dtype == np.float32
    assert state.report.model["canonicalized"]["types from ONNX Runtime"] == 1
    q, report = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    quantized = {n.name for n in q.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")}
    assert len(quantized) == 2, [n.op_type for n in q.graph.node]
    x = normal_feeds(model, n=4)
    assert np.allclose(run(q, x)[0], run(model, x)[0], atol=0.1)
