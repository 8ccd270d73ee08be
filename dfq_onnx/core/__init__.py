"""Core: what every stage shares -- the one IR (`ir`; with `declared_io`, the declared interface, and
`model_files`, the writing of models, the only modules that touch onnx protobuf helpers), the compile state
and its typed results (`state`), the pass contract and runner (`pass_base`), user options, target profiles
(`target`: the loader of the declarative TOML files), errors, the report container, pure-numpy numerics
(`numerics`, `moments`; `moment_propagation`: BN statistics through the graph), graph queries
(`graph_utils`; `outputs`: what computes each model output, read by the output metrics and the synthesis
objectives), the on-disk cache, constant folding (`constant_fold`), and Normalize's function-preserving
rewrites (`rewrites`, `affine_fold`). Memory: `shared_weights` (sessions read the graph's arrays),
`proto_release` (the loaded protobuf let go after Normalize), `rss` (each pass's peak resident memory).

Produces: nothing on the state by itself; defines it. May import: nothing else in dfq_onnx.
The target profile loader lives here (not in `backends`) because the compile state carries the profile
and every stage reads it.
"""
