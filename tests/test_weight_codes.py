"""Form weights as codes (backends/weight_codes.py): the same float32 bits as forms.weight_hat."""

from __future__ import annotations

import numpy as np
import pytest

from dfq_onnx.backends import forms
from dfq_onnx.backends.weight_codes import WeightCodes, common_block, weight_codes


@pytest.mark.parametrize("cand", [(8, 8, "dyn"), (4, 8, "dyn"), (8, 32, "b128"), (4, 32, "b32"),
                                  (4, 32, "row")])
def test_codes_dequantize_to_the_bits_weight_hat_gives(cand):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((256, 48)) * np.exp(rng.standard_normal((1, 48)))).astype(np.float32)
    w[3, 5] = 40.0                         # an outlier widens one column's (and block's) grid
    codes = weight_codes("MatMul", w, cand)
    assert codes is not None and codes.codes.dtype == np.uint8
    assert np.array_equal(codes.dequantize(), forms.weight_hat("MatMul", w, cand))
    assert np.array_equal(codes.expand(common_block([codes, weight_codes("MatMul", w, (8, 32, "b32"))]))
                          .dequantize(), codes.dequantize())


def test_forms_stored_otherwise_have_no_codes():
    w = np.ones((128, 4), np.float32)
    assert weight_codes("MatMul", w, (8, 32, "tensor")) is None
    assert weight_codes("MatMul", w, (32, 32)) is None
    assert weight_codes("Gather", w, (8, 32, "b32")) is None


def test_common_block_is_the_gcd_of_the_slots():
    def slot(k, groups):
        return WeightCodes(np.zeros((k, 2), np.uint8), np.zeros((groups, 2), np.float32),
                           np.ones((groups, 2), np.float32))
    assert common_block([slot(384, 1), slot(384, 3)]) == 128
    assert common_block([slot(384, 12), slot(384, 3)]) == 32
