"""models/builders.py: every good builder is valid ONNX that ORT runs; the bad ones are what they claim."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import normal_feeds, run, session
from dfq_onnx.models import builders

VARIANTS = {
    **{name: build for name, build in builders.GOOD_BUILDERS.items()},
    "gemm_bn-transB1": lambda: builders.gemm_bn(trans_b=1),
    "gemm_bn-nobias": lambda: builders.gemm_bn(bias=False),
    "conv_bn_relu-opset11": lambda: builders.conv_bn_relu(opset=11),
    "conv_bn_relu-ir3": lambda: builders.conv_bn_relu(opset=9, init_as_inputs=True),
    "conv_bn_relu-dynamic-hw": lambda: builders.conv_bn_relu(hw=None),
    "conv_silu-tail": lambda: builders.conv_silu(tail=True),
    "old_opset-upsample": lambda: builders.bad_old_opset(op="Upsample"),
    "conv_bn_relu-relu-output": lambda: builders.conv_bn_relu(relu_output=True),
    "convtranspose_bn": builders.convtranspose_bn,
    "convtranspose_bn-group2": lambda: builders.convtranspose_bn(group=2),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_builder_is_valid_and_runs(name):
    model = VARIANTS[name]()
    onnx.checker.check_model(model, full_check=True)
    assert 2 <= len(model.graph.node) <= 11      # constant_weights: 8 ops + 3 Constant nodes
    if name == "conv_bn_relu-dynamic-hw":
        feeds = {"input": np.zeros((2, 3, 5, 7), np.float32)}
    else:
        feeds = normal_feeds(model, n=2)
    (out,) = run(model, feeds)
    assert np.isfinite(out).all() and out.shape[0] == feeds["input"].shape[0]


def test_builders_are_seeded():
    a, b, c = builders.conv_bn_relu(seed=1), builders.conv_bn_relu(seed=1), builders.conv_bn_relu(seed=2)
    assert a.SerializeToString() == b.SerializeToString() != c.SerializeToString()


def test_batch_dimension_is_named_n():
    for name, build in builders.GOOD_BUILDERS.items():
        assert build().graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N", name


@pytest.mark.parametrize("build, runs", [(builders.conv_fp16, True), (builders.bad_already_quantized, True),
                                         (builders.bad_if_conv, True), (builders.bad_custom_domain, False)])
def test_bad_builders_are_valid_onnx(build, runs):
    model = build()
    onnx.checker.check_model(model, full_check=True)
    if runs:
        session(model)
    else:
        with pytest.raises(Exception, match="FancyAct"):
            session(model)


def test_with_data_bn_stats_matches_the_batch_statistics():
    model = builders.with_data_bn_stats(builders.conv_bn_relu(), n=64, seed=3)
    # With refitted statistics, bn1's output over the same data has mean beta and std ~ gamma.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info("bn1_out"))
    x = np.random.default_rng(3).standard_normal((64, 3, 8, 8)).astype(np.float32)
    y = session(probe).run(None, {"input": x})[0]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), inits["bn1.bias"], atol=1e-3)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), np.abs(inits["bn1.scale"]), rtol=1e-3)
