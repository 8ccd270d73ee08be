"""Token ids embedded by a one-hot product (TF / JAX exports such as Magika) are token inputs."""

from __future__ import annotations

import pytest
from _util import ids_layout, token_agreement
from dfq_onnx.models import token_builders

from dfq_onnx.core import ir
from dfq_onnx.core.errors import UsageError
from dfq_onnx.synth.tokens import token_layout


@pytest.mark.parametrize("op", ["Equal", "OneHot"])
def test_a_one_hot_product_is_an_embedding_table(op):
    assert ids_layout(token_builders.one_hot_classifier(op=op)) == ("ids", 257, "table", 32)


def test_a_one_hot_classifier_compiles_with_no_data():
    assert token_agreement(token_builders.one_hot_classifier(), 257, 32, axis=1) > 0.9


def test_equal_against_anything_but_0_to_v_is_no_table():
    model = token_builders.one_hot_classifier(first=1)
    with pytest.raises(UsageError, match="reaches no embedding table"):
        token_layout(ir.to_graph(model))
