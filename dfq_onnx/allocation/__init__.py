"""Allocation: the bit-allocation problem and its budgets (`problem`), the ILP and greedy solvers
(`ilp`, PuLP with HiGHS), the Pareto sweep (`pareto`) and per-group costs (params, MACs: `costs`).

Produces (through passes/allocate.py): `state.plan` (a BitPlan) and `state.pareto`.
Consumes: `state.sensitivity`, `state.groups`, a latency table. May import: core, backends.
"""
