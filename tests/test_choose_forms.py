"""ort-cpu's default form decision per MatMul input (passes/choose_forms.py): the dynamic int8 form, or its
exact twin (W8A32-b128: MatMulNBits, int8 activations per block of 128) where the dynamic plan breaks
the output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _util import padded_token_feeds, run, sqnr_db
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx.sensitivity.form_scoring import predicted_prefix, shortest_prefix

OPTS = {"progress": False, "use_cache": False}


def _readers(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Float tensor -> the kernels reading it: "dyn" (through its DynamicQuantizeLinear) or "nbits"."""
    quantizer = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"}
    out: dict[str, set[str]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMulInteger":
            out.setdefault(quantizer[n.input[0]], set()).add("dyn")
        elif n.op_type == "MatMulNBits":
            out.setdefault(n.input[0], set()).add("nbits")
    return out


def test_ort_cpu_writes_the_inputs_that_break_the_dynamic_plan_in_the_exact_form(tmp_path):
    """The GELU outputs carry 4 channels 100x the rest (`ffn_outlier`, as all-mpnet-base-v2's FFN-out
    inputs): on one per-tensor grid they cost the output more than 16x what the exact form costs. The
    screen (singles on every 4th row) puts the two GELU outputs first by far, but the other way round;
    both are within 4x of the predicted prefix's last, so both get singles on every row, which put l0
    first, and l0 alone brings the plan within the bound (l1 alone does not): its FFN-out MatMul becomes
    MatMulNBits (accuracy level 4) and every other MatMul input (LayerNorm outputs, attention contexts,
    the second GELU output) stays dynamic int8, after one whole-plan step where the singles predict it.
    Ranked by the screen alone, both would move. The output is closer to FP32 than the all-dynamic
    plan's (`weight_bits=8`: a uniform plan, no decision)."""
    model = token_builders.token_classifier(act="gelu", ffn=2048, ffn_outlier=100.0)
    out, report = dfq_onnx.quantize(model, **OPTS)
    dyn, _ = dfq_onnx.quantize(model, weight_bits=8, **OPTS)
    notes = report.notes["forms"]
    assert notes["dynamic_loss"] > notes["factor"] * notes["exact_loss"]
    screen = sorted(notes["screen"], key=notes["screen"].get)
    assert len(screen) == 8 and sorted(screen[-2:]) == ["l0_gelu_out", "l1_gelu_out"]
    assert notes["screen"][screen[-2]] > 10 * notes["screen"][screen[-3]]
    singles = sorted(notes["singles"], key=notes["singles"].get)
    assert singles == ["l1_gelu_out", "l0_gelu_out"]
    assert notes["chosen"] == ["l0_gelu_out"]
    # the singles predict the prefix: one whole-plan step, J_1 within the bound
    assert notes["guess"] == 1 and [k for k, _ in notes["joint"]] == [1]
    assert notes["joint"][0][1] <= notes["factor"] * notes["exact_loss"]
    assert notes["evaluations"] == 3 + (1 + 8) + 2 + 1    # gate; the screen's base and 8; 2 singles; J_1
    reads = _readers(out)
    assert reads.pop("l0_gelu_out") == {"nbits"}
    assert len(reads) == 7 and all(kinds == {"dyn"} for kinds in reads.values())
    nbits = [n for n in out.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and all(a.i == 4 for n in nbits for a in n.attribute if a.name == "accuracy_level")
    assert all(n.op_type != "MatMulNBits" for n in dyn.graph.node)
    assert notes["latency"]["ratio"] > 1.0
    feeds = padded_token_feeds()
    ref = run(model, feeds)[0]
    assert sqnr_db(ref, run(out, feeds)[0]) > sqnr_db(ref, run(dyn, feeds)[0]) + 2.0


def test_a_dynamic_plan_within_the_bound_is_written_as_before():
    """Without outlier channels the dynamic plan costs the output less than 16x the exact form: three
    evaluations (the probe's all-FP32 outputs, every input exact, every input dynamic), no single, and
    the written model is the uniform W8 plan's, byte for byte."""
    model = token_builders.token_classifier(act="gelu")
    out, report = dfq_onnx.quantize(model, **OPTS)
    dyn, _ = dfq_onnx.quantize(model, weight_bits=8, **OPTS)
    notes = report.notes["forms"]
    assert notes["chosen"] == [] and notes["singles"] == {} and notes["evaluations"] == 3
    assert out.SerializeToString() == dyn.SerializeToString()
    assert np.isfinite(notes["dynamic_loss"])


@pytest.mark.parametrize("corrupt", ["{not json", '{"units": []}', "[]"])
def test_a_corrupt_form_cache_entry_is_recomputed(tmp_path, corrupt):
    """An unreadable `forms` cache entry (torn, edited, from another version) is measured again and
    rewritten, as the sensitivity cache's entries are (table.load_json), not raised: the recompile runs
    the form probe (every other pass reads its cache by then), a third compile reads the rewritten entry
    and runs fewer forward passes."""
    model = token_builders.token_classifier(act="gelu")
    opts = {"progress": False, "cache_dir": str(tmp_path)}
    first, _ = dfq_onnx.quantize(model, **opts)
    (entry,) = (tmp_path / "forms").glob("*.json")
    good = json.loads(entry.read_text())
    entry.write_text(corrupt)
    again, report = dfq_onnx.quantize(model, **opts)
    assert report.notes["forms"]["evaluations"] == 3 and report.notes["forms"]["chosen"] == []
    assert again.SerializeToString() == first.SerializeToString()
    rewritten = json.loads(entry.read_text())
    assert {k: v for k, v in rewritten.items() if k != "seconds"} == \
        {k: v for k, v in good.items() if k != "seconds"}
    _, cached = dfq_onnx.quantize(model, **opts)
    assert cached.forward_passes < report.forward_passes        # the rewritten entry is read


def test_the_prefix_search_starts_at_the_guess_and_brackets_the_bound():
    """shortest_prefix: the least k with fits(k) for every guess; 2 steps where the guess is right, and
    never more than plain bisection's worst plus a gallop (2 log2 n)."""
    for n in (1, 2, 5, 48):
        for true in range(1, n + 1):
            for guess in range(1, n + 1):
                asked: list[int] = []

                def fits(j: int, asked=asked, true=true) -> bool:
                    asked.append(j)
                    return j >= true
                k = shortest_prefix(fits, n, guess)
                assert k == true and len(asked) == len(set(asked))
                assert len(asked) <= 2 * max(1, n - 1).bit_length()
                if guess == true and 1 < true < n:
                    assert asked == [true, true - 1]


def test_the_predicted_prefix_is_where_the_other_singles_fit():
    """predicted_prefix: L_d x (the singles after the first k / all) within the bound."""
    singles = {"a": 0.6, "b": 0.3, "c": 0.1}
    assert predicted_prefix(["a", "b", "c"], singles, 1.0, 0.45) == 1
    assert predicted_prefix(["a", "b", "c"], singles, 1.0, 0.2) == 2
    assert predicted_prefix(["a", "b", "c"], singles, 1.0, 0.0) == 3
