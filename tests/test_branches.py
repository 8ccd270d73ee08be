"""Models merged behind a flag input (dfq_onnx/core/branches.py): Optimum's decoder_model_merged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from dfq_onnx.models import builders, token_builders

import dfq_onnx
from dfq_onnx import api
from dfq_onnx.core import branches
from dfq_onnx.core.errors import UsageError


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def test_the_branches_are_standalone_models_with_the_outer_values_they_read():
    model = token_builders.merged_decoder()
    split = branches.split(model)
    assert split.flag == "use_cache_branch"
    with_past, no_past = split.branches["then_branch"], split.branches["else_branch"]
    assert [i.name for i in with_past.graph.input] == ["input_ids", "past_key", "past_value"]
    assert [i.name for i in no_past.graph.input] == ["input_ids"]
    for m in (with_past, no_past):
        onnx.checker.check_model(m, full_check=True)
    assert branches.split(token_builders.token_lm_cache()) is None      # no If: not merged


def test_a_merged_decoder_compiles_branch_by_branch_and_shares_the_weights_both_hold():
    """Refused before ('control flow around quantizable layers'; the error named the two files)."""
    model = token_builders.merged_decoder()
    before = model.SerializeToString()
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    outer = {t.name for t in out.graph.initializer}
    inner = {a.name: {t.name for t in a.g.initializer} for a in out.graph.node[0].attribute}
    assert not (inner["then_branch"] | inner["else_branch"]) & outer        # stored once
    assert any(t.data_type == onnx.TensorProto.INT8 for t in out.graph.initializer)
    assert {e["branch"] for e in report.layers} == {"then_branch", "else_branch"}
    for flag, name in ((True, "then_branch"), (False, "else_branch")):
        step = api.synthesize(branches.split(model).branches[name], samples=8, seed=1, use_cache=False,
                              progress=False).inputs
        feeds = {**step, "use_cache_branch": np.array([flag])}
        if not flag:
            feeds |= {k: np.zeros((8, 0, 32), np.float32) for k in ("past_key", "past_value")}
        want, got = _run(model, feeds)[0], _run(out, feeds)[0]
        assert np.sum(want ** 2) / np.sum((want - got) ** 2) > 100


def test_options_that_need_one_model_are_refused_on_a_merged_decoder(tmp_path):
    with pytest.raises(UsageError, match="two models behind the flag input 'use_cache_branch'"):
        dfq_onnx.quantize(token_builders.merged_decoder(), size_mb=1.0, progress=False, use_cache=False)


def test_an_image_model_merged_behind_a_flag_compiles_and_an_outer_op_keeps_the_refusal():
    model = builders.bad_if_conv(merged=True)
    out, _ = dfq_onnx.quantize(model, progress=False, use_cache=False)
    onnx.checker.check_model(out, full_check=True)
    for attr in out.graph.node[0].attribute:
        assert "QuantizeLinear" in {n.op_type for n in attr.g.node}
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for flag in (True, False):
        want, got = (_run(m, {"input": x, "flag": np.array(flag)})[0] for m in (model, out))
        assert np.sum(want ** 2) / np.sum((want - got) ** 2) > 100
    assert branches.split(builders.bad_if_conv(merged=True, after=True)) is None   # test_bad_inputs


def test_a_pinned_flag_compiles_its_branch_only():
    out, _ = dfq_onnx.quantize(token_builders.merged_decoder(), input_values={"use_cache_branch": 1},
                               progress=False, use_cache=False)
    assert "If" not in {n.op_type for n in out.graph.node} and "Concat" in {n.op_type for n in out.graph.node}


def test_inspect_shows_each_branch_of_a_merged_decoder(tmp_path, capsys):
    from dfq_onnx.cli import main
    from dfq_onnx.core import ir

    path = tmp_path / "decoder_model_merged.onnx"
    ir.save_model(token_builders.merged_decoder(), path)
    assert main(["-q", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "two models behind the flag input 'use_cache_branch'" in out
    assert "[then_branch]" in out and "[else_branch]" in out and "quantized nodes" in out
