"""Data-free corrections: the pure-numpy formulas of cross-layer equalization, high-bias absorption,
bias correction and DF-MPC (`formulas`), and how linear layers pair up in the graph (`layer_pairs`).

Used by passes/equalize.py, absorb_bias.py, bias_correction.py, dfmpc.py; they edit `state.graph` and
the kept `state.bn_stats`. May import: core, backends.
"""
