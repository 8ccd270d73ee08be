"""Commands: the CLI's subcommands besides `quantize` -- `demo`, `inspect`, `profile-target`. Entry
points like `api` and `cli`: they run passes and pipelines. May import: anything in dfq_onnx.
"""
