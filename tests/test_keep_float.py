"""KeepFloat: a latency table whose integer model ran slower than FP32 keeps the model float."""

from __future__ import annotations

import pytest
from _util import nodes_by_op
from dfq_onnx.models import builders

import dfq_onnx
from dfq_onnx.backends.latency import table_json
from dfq_onnx.core import ir
from dfq_onnx.core.errors import PassError, UsageError


def _table(tmp_path, fp32_ms: float, int_ms: float, target: str = "ort-cpu", sha: str = "") -> str:
    path = tmp_path / "latency.json"
    path.write_text(table_json(target=target, batch=1, base="8x8", overhead_ms=0.0, groups={},
                               fp32_ms=fp32_ms, model_ms={"8x8": int_ms}, model_sha256=sha))
    return str(path)


@pytest.mark.parametrize("fp32_ms, int_ms, float_out", [(1.0, 5.0, True), (5.0, 1.0, False)])
def test_the_table_decides_whether_the_model_stays_float(tmp_path, fp32_ms, int_ms, float_out):
    model = builders.conv_bn_relu()
    out, report = dfq_onnx.quantize(model, calib="noise", latency_table=_table(tmp_path, fp32_ms, int_ms),
                                    progress=False)
    assert report.notes["keep_float"]["integer_pays"] is (not float_out)
    assert (not nodes_by_op(out, "QuantizeLinear")) is float_out
    if float_out:       # the normalized FP32 graph: BN folded, nothing quantized, no calibration run
        assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv"]
        assert report.forward_passes == 0


def test_a_table_of_another_target_or_model_is_refused(tmp_path):
    model = builders.conv_bn_relu()
    with pytest.raises(PassError) as info:
        dfq_onnx.quantize(model, calib="noise", latency_table=_table(tmp_path, 1, 5, target="openvino"),
                          progress=False)
    assert isinstance(info.value.cause, UsageError) and "openvino" in str(info.value)
    other = ir.model_hash(ir.load_model(builders.conv_silu()))
    with pytest.raises(PassError, match="another model"):
        dfq_onnx.quantize(model, calib="noise", latency_table=_table(tmp_path, 1, 5, sha=other),
                          progress=False)
