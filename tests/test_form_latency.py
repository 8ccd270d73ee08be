"""Latency of emit forms: declared [forms] cost, profile-target's per-shape form timings, the default cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tomllib
from _util import run
from dfq_onnx.models import token_builders

import dfq_onnx
from dfq_onnx.allocation import form_cost
from dfq_onnx.allocation.ilp import solve
from dfq_onnx.allocation.problem import Budget, Problem
from dfq_onnx.backends import forms
from dfq_onnx.backends.form_latency import form_model
from dfq_onnx.backends.latency import LatencyTable
from dfq_onnx.cli import main
from dfq_onnx.core.errors import TargetError
from dfq_onnx.core.target import load_target, parse_profile

DYN8, DYN4, NB4, FLOAT = (8, 8, "dyn"), (4, 8, "dyn"), (4, 32, "b32"), (32, 32)


def _problem() -> Problem:
    """Two equal groups: dynamic int8 is fast and lossy, weight-only 4-bit slow and accurate."""
    groups = ("a", "b")
    cands = {g: (DYN8, DYN4, NB4, FLOAT) for g in groups}
    loss = {g: {DYN8: 0.01, DYN4: 0.2, NB4: 0.02, FLOAT: 0.0} for g in groups}
    return Problem(groups, cands, loss, {"a": 100, "b": 100})


def _lat(cost: dict) -> dict:
    return form_cost.declared(("a", "b"), _problem().candidates, {"a": 100, "b": 100}, cost)


COST = {DYN8: 0.4, DYN4: 0.45, NB4: 1.05, FLOAT: 1.0}


def test_without_a_cap_the_allocator_takes_the_slow_weight_only_form():
    assert NB4 in solve(_problem(), Budget(avg_weight_bits=6)).choice.values()


def test_default_cap_keeps_the_plan_no_slower_than_the_budget_forces():
    base = {"a": DYN8, "b": DYN8}
    p, budget, cap = form_cost.capped(_problem(), Budget(avg_weight_bits=6), _lat(COST), base, "x")
    choice = solve(p, budget).choice
    assert sorted(choice.values()) == sorted([DYN8, DYN4])   # one 4-bit group: the fastest way to 6 bits
    assert cap.fastest == pytest.approx(85.0) and cap.default == pytest.approx(80.0)
    assert cap.describe()["bound"] == "fastest plan within the budget"
    # where weight-only is measured faster (decoding, M = 1) the same budget takes it
    fast = {**COST, NB4: 0.3}
    p, budget, cap = form_cost.capped(_problem(), Budget(avg_weight_bits=6), _lat(fast), base, "x")
    assert NB4 in solve(p, budget).choice.values() and cap.describe()["bound"] == "default plan"


def test_measured_table_wins_and_missing_costs_give_no_cap():
    table = LatencyTable("t", 8, (8, 8), 0.0, {g: {DYN8: 1.0, DYN4: 1.1, NB4: 0.5, FLOAT: 2.0} for g in "ab"},
                         {})
    lat = form_cost.measured(("a", "b"), _problem().candidates, table)
    assert lat["a"][NB4] == 0.5
    assert form_cost.declared(("a",), _problem().candidates, {"a": 10}, {DYN8: 0.4}) is None
    assert form_cost.declared(("a",), _problem().candidates, {"a": 0}, {}) == {"a": dict.fromkeys(
        _problem().candidates["a"], 0.0)}                     # a Gather table: no MACs, no cost


def _profile(text: str):
    data = tomllib.loads(Path(load_target("ort-cpu").source).read_text())
    data["forms"] = {**data["forms"], "cost": tomllib.loads(text)["cost"]}
    return parse_profile(data, "t.toml")


def test_target_form_cost_is_checked():
    assert _profile('cost = { "W8A8-dyn" = 0.5 }').form_settings["cost"] == {DYN8: 0.5}
    for bad in ('cost = { "W8A8-dyn" = -1 }', 'cost = { "W8A8" = 0.5 }', 'cost = { "W2A32-b16" = 1 }',
                'cost = 3'):
        with pytest.raises(TargetError, match=r"\[forms\] cost"):
            _profile(bad)


@pytest.mark.parametrize("op, cand", [("MatMul", DYN8), ("MatMul", DYN4), ("MatMul", NB4),
                                      ("MatMul", FLOAT), ("Gather", (4, 32, "b32"))])
def test_form_models_compute_what_the_form_does(op, cand):
    settings = {"accuracy_level": 0}
    model = form_model(op, (64, 32), 16, cand, settings, seed=1)
    onnx.checker.check_model(model, full_check=True)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]) if cand == FLOAT else None
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 32)) * 0.05).astype(np.float32) if w is None else w
    hat = forms.weight_hat(op, w, cand)
    if op == "Gather":
        ids = np.arange(16, dtype=np.int64)
        np.testing.assert_allclose(run(model, {"ids": ids})[0], hat[ids], atol=1e-6)
        return
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    tol = 0.05 if cand[1] == 8 else 1e-4                     # dynamic: activations rounded to 8 bits
    np.testing.assert_allclose(run(model, {"x": x})[0], x @ hat, atol=tol)


def test_profile_target_times_the_forms_and_the_allocator_uses_the_table(tmp_path):
    model = token_builders.token_encoder(vocab=128, seq=8, d=128, ffn=128)   # d: blocks of 128 divide it
    src, out = tmp_path / "m.onnx", tmp_path / "lat.json"
    onnx.save(model, src)
    assert main(["-q", "profile-target", "ort-cpu", str(src), "-o", str(out), "--batch", "2", "--rounds", "1",
                 "--runs", "1"]) == 0
    table = json.loads(out.read_text())
    rows = [r for r in table["groups"].values() if "MatMul" in r["ops"]]
    assert rows and all({"W8A8-dyn", "W4A32-b32", "W32A32"} <= set(r["ms"]) for r in rows)
    assert all(s[-1] == 2 * 8 for r in rows for s in r["shapes"])     # M = batch x sequence
    assert LatencyTable.load(out).groups
    q, report = dfq_onnx.quantize(model, progress=False, use_cache=False, avg_weight_bits=6,
                                  latency_table=str(out))
    cap = report.notes["allocation"]["form_latency"]
    assert cap["unit"] == "ms" and cap["plan"] <= cap["limit"]
    assert run(q, {"input_ids": np.ones((2, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)})


def test_a_table_no_block_divides_takes_the_next_form_that_fits():
    """d = 96: 8-bit blocks of 128 do not divide the rows; the uniform plan keeps the table float (the
    only wider form that fits) and the mixed plan may still take 4-bit blocks of 32."""
    model = token_builders.token_encoder(vocab=128, seq=8, d=96, ffn=96)
    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False)
    assert {x["node"]: x["form"] for x in report.layers}["words"] == "W32A32"
    mixed, report = dfq_onnx.quantize(model, progress=False, use_cache=False, avg_weight_bits=6)
    assert report.notes["allocation"]["avg_weight_bits"] <= 6
    feeds = {"input_ids": np.ones((2, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)}
    assert run(out, feeds) and run(mixed, feeds)
