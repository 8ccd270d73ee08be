"""The `auto` metric: chosen per output by its shape and by what computes it; the losses it can pick."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _util import compile_state
from dfq_onnx.models import builders
from dfq_onnx.passes.normalize import Normalize
from onnx import TensorProto, helper, numpy_helper

from dfq_onnx.core.errors import UsageError
from dfq_onnx.core.outputs import output_producers
from dfq_onnx.sensitivity import losses
from dfq_onnx.sensitivity.losses import combine, sample_stats
from dfq_onnx.sensitivity.table import auto_metric, output_loss, resolve_metrics


def _tail(ops: list[tuple], out_shape: list, in_shape=("N", 6)) -> onnx.ModelProto:
    """input -> the given (op, extra inputs, attrs) chain -> output; constants are random."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i, (op, consts, attrs) in enumerate(ops):
        names = []
        for j, shape in enumerate(consts):
            names.append(f"c{i}_{j}")
            values = rng.standard_normal(shape).astype(np.float32) if shape else np.array(shape, np.int64)
            inits.append(numpy_helper.from_array(values, names[-1]))
        y = "output" if i == len(ops) - 1 else f"t{i}"
        nodes.append(helper.make_node(op, [x, *names], [y], name=f"n{i}", **attrs))
        x = y
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            list(in_shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _choice(model) -> tuple[str, str]:
    state = compile_state(model, [Normalize()])
    out = state.graph.outputs[0]
    shape = tuple(d if isinstance(d, int) else 2 for d in out.shape)
    return auto_metric(shape, output_producers(state.graph)[out.name])


def test_auto_metric_reads_the_producer():
    # CTC-style per-step distributions [N, T, C] after Softmax: KL per step
    kind, why = _choice(builders.conv_sequence())
    assert kind == "kl" and "Softmax" in why and "per-position distributions" in why
    # classifier logits after Gemm; conv map; probability map after Sigmoid
    assert _choice(builders.conv_bn_relu_residual())[0] == "kl"
    assert _choice(builders.conv_bn_relu())[0] == "sqnr"
    assert _choice(_tail([("Sigmoid", [], {})], ["N", 6]))[0] == "sqnr"
    # a linear layer's output, also through a bias Add and a Reshape: logits
    assert _choice(_tail([("MatMul", [(6, 5)], {}), ("Add", [(5,)], {})], ["N", 5]))[0] == "kl"
    # pooled / normalized [N, D]: an embedding, compared by direction
    pooled = _tail([("Unsqueeze", [[1]], {}), ("ReduceMean", [[1]], {"keepdims": 0})], ["N", 6])
    kind, why = _choice(pooled)
    assert kind == "cosine" and "embedding" in why
    assert _choice(_tail([("LpNormalization", [], {"axis": 1, "p": 2})], ["N", 6]))[0] == "cosine"
    # token states after LayerNormalization [N, S, D]: noise-to-signal, not KL
    ln = _tail([("LayerNormalization", [(6,), (6,)], {"axis": -1})], ["N", 4, 6], in_shape=("N", 4, 6))
    assert _choice(ln)[0] == "sqnr"


def test_softmax_on_another_axis_keeps_its_axis():
    model = _tail([("Softmax", [], {"axis": 1})], ["N", 4, 6], in_shape=("N", 4, 6))
    assert _choice(model)[0] == "kl@1"


def test_kl_of_probability_outputs_uses_them_as_distributions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 7, 9))
    noisy = logits + rng.normal(0, 0.3, logits.shape)

    def sm(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = sm(logits), sm(noisy)
    expect = np.mean(np.sum(p * np.log(p / q), -1))
    assert output_loss("kl", logits, noisy) == pytest.approx(expect)
    # the same KL from the Softmax's outputs (a softmax of probabilities would flatten them)
    assert output_loss("kl", p, q) == pytest.approx(expect, rel=1e-6)
    assert output_loss("kl@1", np.swapaxes(p, 1, 2), np.swapaxes(q, 1, 2)) == pytest.approx(expect, rel=1e-6)


def test_cosine_distance():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 16))
    assert output_loss("cosine", a, 3.0 * a) == pytest.approx(0.0, abs=1e-12)     # scale does not count
    assert output_loss("cosine", a, -a) == pytest.approx(2.0)
    noise = rng.normal(0, 0.01, a.shape)
    small = output_loss("cosine", a, a + noise)
    assert 0 < small < 1e-3


def test_resolve_metrics_with_and_without_graph_information():
    rng = np.random.default_rng(3)
    seq, emb = rng.normal(size=(4, 5, 3)), rng.normal(size=(4, 8))
    assert resolve_metrics("auto", [emb, seq], None) == ("kl", "sqnr")     # shapes only: the old rule
    from dfq_onnx.core.outputs import Producer

    producers = {"emb": Producer("ReduceMean", "embedding"), "seq": Producer("Softmax", "distribution", 2)}
    assert resolve_metrics("auto", [emb, seq], None, ["emb", "seq"], producers) == ("cosine", "kl")
    assert resolve_metrics("kl", [seq], None) == ("kl",)         # per-step KL is a legal explicit choice
    with pytest.raises(UsageError, match="'score'"):
        resolve_metrics("kl", [rng.normal(size=(4, 1))], None, ["score"])
    with pytest.raises(UsageError, match="'seq'"):
        resolve_metrics("ce", [seq], np.zeros(4, np.int64), ["seq"])


def test_report_names_the_metric_of_each_output():
    import dfq_onnx

    _, report = dfq_onnx.quantize(builders.conv_sequence(), avg_weight_bits=6, synth_samples=8, synth_steps=2,
                                  score_bits=(2, 4, 8), use_cache=False, progress=False)
    note = report.notes["sensitivity"]
    assert note["metric"] == "kl"
    assert note["metric_per_output"] == {"output": "kl (Softmax: distribution)"}


@pytest.mark.parametrize("kind", ["kl", "kl@1", "ce", "mse", "sqnr", "cosine"])
def test_loss_on_a_subset_of_samples_from_per_sample_stats(kind):
    """losses.combine over rows = the loss recomputed on those rows only (the evaluator's halves)."""
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(9, 5, 4)) if kind in ("kl@1", "mse", "sqnr") else rng.normal(size=(9, 6))
    test = ref + 0.3 * rng.normal(size=ref.shape)
    labels = rng.integers(0, ref.shape[-1], size=len(ref)) if kind == "ce" else None
    stats = sample_stats(kind, ref, test, labels)
    for rows in (np.arange(0, 9, 2), np.arange(1, 9, 2), np.array([4])):
        sub = output_loss(kind, ref[rows], test[rows], None if labels is None else labels[rows])
        assert combine(kind, stats, rows) == pytest.approx(sub, rel=1e-12)
    assert combine(kind, stats) == pytest.approx(output_loss(kind, ref, test, labels), rel=1e-12)
    assert combine(kind, sample_stats(kind, ref, ref, labels)) == pytest.approx(0.0, abs=1e-12)


def test_kl_per_sample_is_the_same_whatever_the_chunk(monkeypatch):
    """The KL runs a few samples at a time (bounded float64 temporaries); the values do not change."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(7, 3, 11))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = np.exp(logits + 0.2 * rng.normal(size=logits.shape))
    q /= q.sum(-1, keepdims=True)
    for ref, test in ((logits, logits + 0.1), (p, q)):
        whole = sample_stats("kl", ref, test)[0]
        monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 40)        # 1 sample (33 elements) per step
        np.testing.assert_array_equal(sample_stats("kl", ref, test)[0], whole)
        monkeypatch.undo()
