"""Passes: one file per pass, each a small class with one job (`run(state) -> PassResult`); the default
order is the visible list in `dfq_onnx/pipeline.py`. A pass may import any stage package (core,
backends, synth, corrections, sensitivity, allocation, report) and, for shared helpers, another pass;
no stage package imports a pass.
"""
