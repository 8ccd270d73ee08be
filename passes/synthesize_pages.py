"""Line-drawing pages offered beside the samples of a dense-output image model (synth/pages.py decides).

Taken on the label objective only (no BN statistics, not a sequence output) and on one image input:
the samples (the prior's, or the label search's) are probed with PROBE pages; when the pages drive a
dense output's span GAIN times past the samples', every second sample (the odd ones) becomes a page, so
the first rows Calibrate and the activation decision measure (`backends.budget`: CRAFT at 480 x 640
measures 28 of 64) hold both. The probe costs 2 x PROBE forward rows and the pages their drawing, so
its decision -- taken or not, with what it measured -- is cached under its own key (start
"pink+pages"; the pages themselves are redrawn from the seed, ~0.8 s per 480 x 640 page at load 5): the keys
of every other path are unchanged, and a model whose outputs' shapes say no output is a dense map runs
no probe and writes no entry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
from dfq_onnx.passes.synthesis_cache import cache_key, save_arrays
from dfq_onnx.passes.synthesis_types import SynthesisOptions, SynthesisResult

from dfq_onnx.core import cache
from dfq_onnx.synth import pages

log = logging.getLogger("dfq_onnx.passes.synthesize")


def with_pages(graph, result: SynthesisResult, options: SynthesisOptions, model_hash: str, shapes: dict,
               kind: str) -> SynthesisResult:
    """`result`, or its samples with every second one a page when the model responds to pages."""
    if kind != "label" or result.start != "pink" or len(shapes) != 1:
        return result
    (name, shape), = shapes.items()
    if len(shape) != 3 or pages.candidate_outputs(graph, tuple(shape)) is None:
        return result
    start = time.perf_counter()
    key = {**cache_key(model_hash, options, kind, shapes, result.steps), "start": "pink+pages",
           "pages": {"probe": pages.PROBE, "gain": pages.GAIN}}
    path = cache.cache_path("synthetic", key, options.cache_dir)
    use_cache = options.use_cache and bool(model_hash)
    x = result.inputs[name]
    k = len(x) // 2
    domain = options.input_ranges.get(name)
    if use_cache and (hit := _decision(path)) is not None:
        note, drawn = hit, pages.pages(options.seed, k, tuple(shape), domain) if hit.get("taken") else None
    else:
        probe, drawn = pages.offer(graph, name, x, options.seed, k, domain)
        note = {"dense": False} if probe is None else probe.note()
        if use_cache:
            save_arrays(path, {"pages": np.array(json.dumps(note))})
        result = dataclasses.replace(result, forward_passes=result.forward_passes + (probe is not None))
    result = dataclasses.replace(result, pages=note, seconds=result.seconds + time.perf_counter() - start)
    if drawn is None:
        return result
    mixed = x.copy()
    mixed[1::2][:k] = drawn
    log.info("dense output: line-drawing pages drive its span %.1fx past the samples': every second sample "
             "is a page", note["gain"])
    return dataclasses.replace(result, inputs={name: mixed}, start="pink+pages")


def _decision(path) -> dict | None:
    arrays = cache.load_npz(path)
    if arrays is None or "pages" not in arrays:
        return None
    try:
        return json.loads(str(arrays["pages"]))
    except ValueError:
        return None
