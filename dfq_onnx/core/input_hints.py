"""Input-shape hints a compile infers instead of asking for them.

A `--calib` npz fixes every row's shape: its arrays are [N, *row], one per model input. For an input
whose non-batch dimensions are dynamic, (1, *row) is exactly what `--input-shape` would have said, so
the compile uses it as the hint (Normalize sizes shape inference with it; the written model keeps the
source's dynamic dimensions, as with a user hint). Without it the passes that size their work by the
model's activation footprint (Calibrate's rows per ORT call, the probes) see unknown dimensions and
could run every calibration row in one call. The user's own `--input-shape` hints always win.

Only the arrays' headers are read, not their data. An npz that cannot be read, or whose array does not
fit the input's rank, gives no hint: Calibrate then reports the problem with its own error.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import onnx

from dfq_onnx.core.options import QuantizeOptions


def npz_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{array name: shape} of an .npz, from the .npy headers (no array is read); {} when unreadable."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shapes[info.filename[:-4]] = tuple(int(d) for d in read(f)[0])
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}
    return shapes


def _dynamic_rows(model: onnx.ModelProto) -> dict[str, int]:
    """{input name: rank} of the graph inputs with a dynamic dimension past the batch axis."""
    params = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        tensor = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if vi.name in params or tensor is None or not tensor.HasField("shape"):
            continue
        dims = tensor.shape.dim
        if any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[1:]):
            out[vi.name] = len(dims)
    return out


def with_calib_hints(model: onnx.ModelProto, options: QuantizeOptions) -> QuantizeOptions:
    """`options` with (1, *row) hints from a `--calib` npz for dynamic inputs the user did not size."""
    if not str(options.calib).endswith(".npz"):
        return options
    dynamic = {k: r for k, r in _dynamic_rows(model).items() if k not in options.input_shapes}
    if not dynamic:
        return options
    shapes = npz_shapes(options.calib)
    found = {k: (1, *shapes[k][1:]) for k, rank in dynamic.items()
             if k in shapes and len(shapes[k]) == rank and shapes[k][0] > 0}
    if not found:
        return options
    return dataclasses.replace(options, input_shapes={**options.input_shapes, **found})
