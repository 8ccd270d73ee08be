"""Token ids embedded by a one-hot product (TF / JAX exports such as Magika) are token inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import run
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx.core import ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.synth.tokens import token_layout


@pytest.mark.parametrize("op", ["Equal", "OneHot"])
def test_a_one_hot_product_is_an_embedding_table(op):
    layout = token_layout(ir.to_graph(token_builders.one_hot_classifier(op=op)))
    ids = layout.of("ids")
    assert (ids.name, ids.rows, layout.table, layout.length) == ("ids", 257, "table", 32)


def test_a_one_hot_classifier_compiles_with_no_data():
    model = token_builders.one_hot_classifier()
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    onnx.checker.check_model(out, full_check=True)
    assert report.notes["synthesis"]["objective"] == "tokens"
    ids = np.random.default_rng(1).integers(0, 257, (64, 32)).astype(np.int32)
    want, got = run(model, {"ids": ids})[0], run(out, {"ids": ids})[0]
    assert np.mean(want.argmax(1) == got.argmax(1)) > 0.9


def test_equal_against_anything_but_0_to_v_is_no_table():
    model = token_builders.one_hot_classifier(first=1)
    with pytest.raises(UsageError, match="reaches no embedding table"):
        token_layout(ir.to_graph(model))
