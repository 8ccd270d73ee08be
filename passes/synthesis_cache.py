"""The synthetic samples' cache entries (passes/synthesize.py): key, arrays, load and save.

An entry is one npz under the cache's `synthetic` kind: the inputs (`input/NAME`), labels, the search's
meta (losses -- NaN where nothing was searched --, forward passes, rows, seconds, steps), the objective,
the start ("pink", "pink+lines", "strokes", "envelopes", "pink+pages"), the twin samples, the kept-BN
notes and the pages' probe (synth/pages.py). An entry whose inputs do not match the requested shapes, or
is unreadable, is a miss (recomputed), never an error.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from dfq_onnx.passes.synthesis_types import SynthesisOptions, SynthesisResult

from dfq_onnx.core import cache

log = logging.getLogger("dfq_onnx.passes.synthesize")
ENGINE_VERSION = 6      # bump when the synthesis algorithm changes: old cache entries are then ignored
                        # (6: ArgMax / TopK picks set aside, length inputs filled: samples of another head)


def cache_key(model_hash: str, options: SynthesisOptions, kind: str, shapes: dict, steps: int) -> dict:
    return {"engine": ENGINE_VERSION, "model": model_hash, "samples": options.samples,
            "steps": steps, "population": options.population, "seed": options.seed,
            "objective": kind, "shapes": {k: list(v) for k, v in sorted(shapes.items())},
            **({"ranges": {k: list(v) for k, v in sorted(options.input_ranges.items())}}
               if options.input_ranges else {})}


def to_arrays(result: SynthesisResult) -> dict[str, np.ndarray]:
    arrays = {f"input/{k}": v for k, v in result.inputs.items()}
    if result.labels is not None:
        arrays["labels"] = result.labels
    losses = [np.nan if v is None else v for v in (result.loss_start, result.loss_end)]   # NaN: no search
    meta = [*losses, result.forward_passes, result.samples_evaluated, result.seconds, result.steps]
    arrays["meta"] = np.array(meta, np.float64)
    arrays["objective"] = np.array(result.objective)
    arrays["start"] = np.array(result.start)
    arrays.update({f"twin/{k}": v for k, v in (result.twin or {}).items()})
    if result.kept_bn:
        arrays["kept_bn"] = np.array(json.dumps(result.kept_bn))
    if result.pages:
        arrays["pages"] = np.array(json.dumps(result.pages))
    return arrays


def save(path, result: SynthesisResult) -> None:
    save_arrays(path, to_arrays(result))


def save_arrays(path, arrays: dict[str, np.ndarray]) -> None:
    """One synthesis cache entry; a read-only or full cache directory warns, it does not fail the compile."""
    try:
        cache.save_npz_atomic(path, arrays)
    except OSError as exc:
        log.warning("cannot write the synthesis cache %s: %s", path, exc)


def from_cache(path, shapes, start) -> SynthesisResult | None:
    arrays = cache.load_npz(path)
    if arrays is None or any(f"input/{k}" not in arrays for k in shapes):
        return None
    inputs = {k: arrays[f"input/{k}"] for k in shapes}
    if any(v.shape[1:] != tuple(shapes[k]) for k, v in inputs.items()):
        return None
    meta = arrays.get("meta")
    if meta is None or meta.shape != (6,) or "objective" not in arrays:
        return None
    log.info("synthetic inputs from cache %s (made in %.1fs, %d ORT runs)", path, meta[4], meta[2])
    loss = [None if np.isnan(v) else float(v) for v in meta[:2]]      # NaN: not searched
    twin = {k: arrays[f"twin/{k}"] for k in shapes} if all(f"twin/{k}" in arrays for k in shapes) else None
    return SynthesisResult(inputs, arrays.get("labels"), loss[0], loss[1], 0, 0,
                           time.perf_counter() - start, True, str(arrays["objective"]), int(meta[5]),
                           str(arrays.get("start", "pink")), twin=twin,
                           kept_bn=json.loads(str(arrays["kept_bn"])) if "kept_bn" in arrays else {},
                           pages=json.loads(str(arrays["pages"])) if "pages" in arrays else {})
