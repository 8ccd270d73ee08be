"""Exported control flow and batch layouts Normalize must not break: an If whose condition folds to a
constant around a nested two-output If (onnx-graphsurgeon's flattening loses the second output), and
inputs that carry the batch on another axis than 0 (one clear error, before any work)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import dfq_onnx
from dfq_onnx.core import constant_fold, ir
from dfq_onnx.core.errors import PassError, UnsupportedModelError


def _branch(name, outs, nodes):
    return h.make_graph(nodes, name, [], [h.make_tensor_value_info(o, T.FLOAT, [2]) for o in outs])


def _nested_if() -> onnx.ModelProto:
    """y = o1 + o2 from If(size(shape(x)) == 1) whose then-branch is a two-output If on input c."""
    inner = h.make_node("If", ["c"], ["i1", "i2"],
                        then_branch=_branch("it", ["a1", "a2"], [h.make_node("Neg", ["x"], ["a1"]),
                                                                 h.make_node("Abs", ["x"], ["a2"])]),
                        else_branch=_branch("ie", ["b1", "b2"], [h.make_node("Identity", ["x"], ["b1"]),
                                                                 h.make_node("Relu", ["x"], ["b2"])]))
    outer = h.make_node("If", ["k"], ["o1", "o2"], then_branch=_branch("ot", ["i1", "i2"], [inner]),
                        else_branch=_branch("oe", ["e1", "e2"], [h.make_node("Sigmoid", ["x"], ["e1"]),
                                                                 h.make_node("Tanh", ["x"], ["e2"])]))
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Size", ["s"], ["n"]),
             h.make_node("Equal", ["n", "one"], ["k"]), outer, h.make_node("Add", ["o1", "o2"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2]),
                                  h.make_tensor_value_info("c", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2])], [h.make_tensor("one", T.INT64, [], [1])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_folding_keeps_every_output_of_a_flattened_nested_if():
    model = _nested_if()
    graph = constant_fold.fold_constants(ir.to_graph(model))
    assert not ir.dangling_inputs(graph)
    # the outer If (on a shape the graph fixes) is flattened; the inner one, on input c, stays
    assert [[t.name for t in n.inputs] for n in graph.nodes if n.op == "If"] == [["c"]]
    folded = ir.to_model(graph)
    x = np.array([-1.5, 2.0], np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(_run(folded, feeds)[0], _run(model, feeds)[0])


def test_folding_without_if_is_the_plain_fold():
    model = h.make_model(h.make_graph(
        [h.make_node("Shape", ["x"], ["s"]), h.make_node("Cast", ["s"], ["f"], to=T.FLOAT),
         h.make_node("Add", ["x", "f"], ["y"])], "g", [h.make_tensor_value_info("x", T.FLOAT, [3])],
        [h.make_tensor_value_info("y", T.FLOAT, [3])]), opset_imports=[h.make_opsetid("", 17)])
    graph = constant_fold.fold_constants(ir.to_graph(model))
    assert [n.op for n in graph.nodes] == ["Add"]          # Shape -> Cast folded to a constant


def _rnn_like(state_dims) -> onnx.ModelProto:
    """y = x @ W + sum(state): x [batch, 4], state as given (names are symbolic dims)."""
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("ReduceSum", ["state"], ["r"], keepdims=0),
             h.make_node("Add", ["m", "r"], ["y"])]
    w = h.make_tensor("w", T.FLOAT, [4, 4], np.random.default_rng(0).standard_normal(16).tolist())
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4]),
                                  h.make_tensor_value_info("state", T.FLOAT, state_dims)],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_an_input_batched_on_axis_1_is_one_clear_error():
    with pytest.raises(PassError, match=r"Normalize: input 'state' carries the batch dimension 'batch' "
                                        r"on axis 1") as err:
        dfq_onnx.quantize(_rnn_like([2, "batch", 4]), progress=False, use_cache=False)
    assert isinstance(err.value.cause, UnsupportedModelError)


def test_a_scalar_input_is_one_clear_error(tmp_path):
    """A rank-0 input (transformers' `logits_to_keep`, a sampling rate) has no batch axis: named, exit 1,
    also when a --calib npz carries it (it crashed in Calibrate: len() of a 0-d array)."""
    from dfq_onnx.cli import main

    model = _rnn_like([])
    with pytest.raises(PassError, match=r"Normalize: input 'state' is a scalar \(rank 0\)") as err:
        dfq_onnx.quantize(model, progress=False, use_cache=False)
    assert isinstance(err.value.cause, UnsupportedModelError)
    src, calib, out = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "q.onnx"
    onnx.save(model, src)
    np.savez(calib, x=np.ones((4, 4), np.float32), state=np.array(1.0, np.float32))
    assert main(["-q", "quantize", str(src), "--calib", str(calib), "-o", str(out)]) == 1
    assert not out.exists()


def test_a_placeholder_name_on_several_axes_is_not_a_batch_name():
    from dfq_onnx.passes.normalize import check_batch_axes

    check_batch_axes(_rnn_like(["?", "?", 4]))              # "?" on two axes: an exporter's placeholder
    check_batch_axes(_rnn_like(["batch", 2, 4]))            # batch on axis 0 of both inputs


@pytest.mark.parametrize("flag", [True, False])
def test_an_if_around_a_conv_whose_condition_is_constant_is_replaced_by_its_branch(flag):
    """Control flow is refused only where it is left after constant folding: an If on a value the graph
    fixes (silero-vad's If on its sample rate, pinned) compiles as the branch it selects; an If on an
    input is still the one clear error (tests/test_normalize.py)."""
    from dfq_onnx.models import builders

    model = builders.bad_if_conv()
    flag_input = next(i for i in model.graph.input if i.name == "flag")
    model.graph.input.remove(flag_input)
    model.graph.initializer.append(h.make_tensor("flag", T.BOOL, [], [flag]))
    out, _ = dfq_onnx.quantize(model, synth_samples=8, synth_steps=2, progress=False, use_cache=False,
                               latency_check=False)
    assert not any(n.op_type == "If" for n in out.graph.node)
    assert any(n.op_type == "Conv" for n in out.graph.node) == flag
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    want, got = _run(model, {"input": x})[0], _run(out, {"input": x})[0]
    if not flag:            # the Identity branch: nothing to quantize
        np.testing.assert_array_equal(got, want)
        return
    sqnr = 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2))
    assert sqnr > 12        # 18 dB (a random conv on N(0, 1) inputs, 8 samples)
