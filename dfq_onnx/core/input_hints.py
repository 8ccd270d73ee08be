"""Input-shape hints a compile infers instead of asking for them.

A `--calib` npz fixes every row's shape: its arrays are [N, *row], one per model input. For an input
whose non-batch dimensions are dynamic, (1, *row) is exactly what `--input-shape` would have said, so
the compile uses it as the hint (Normalize sizes shape inference with it; the written model keeps the
source's dynamic dimensions, as with a user hint). Without it the passes that size their work by the
model's activation footprint (Calibrate's rows per ORT call, the probes) see unknown dimensions and
could run every calibration row in one call. The user's own `--input-shape` hints always win.

A model with no batch axis (`core/unbatched.py`: the graph adds the batch of one) takes arrays [N, *example]
of one rank more than its inputs: the hint is then the example's shape, every dimension of it.

Only the arrays' headers are read, not their data. An npz that cannot be read, or whose array does not
fit the input's rank, gives no hint: Calibrate then reports the problem with its own error.

Without an npz, a vision transformer's image size is in its graph (`with_graph_hints`): a patchifying
Conv (stride = kernel, no padding) on the input (through a Cast), whose tokens -- through layout ops
(Reshape, Flatten, Transpose, a Concat with a class token) -- get a constant position table [1, T, D]
added (D the Conv's output channels), was built for T = n or n + 1 or n + 2 tokens (class / distillation
tokens) with n a square grid of patches: the input is [1, C, side x kernel, side x kernel], C the Conv's
input channels. Hugging Face ViT / DeiT / CLIP exports declare every dimension of pixel_values dynamic;
the table fixes them.

Else the exporter's files beside the model (`with_config_hints`): Hugging Face exports (Optimum,
`save_pretrained`) write config.json and, for image models, preprocessor_config.json next to model.onnx.
The image the processor hands the model is crop_size when it center-crops, else size ({height, width},
{shortest_edge: s} -> s x s, or an int); without a processor file, config.json's image_size (or
vision_config.image_size). Channels: config.json's num_channels, else the first Conv's input channels.
An audio model's feature extractor says what it hands the model: a raw waveform (feature_size 1,
wav2vec2 / HuBERT / WavLM) is calibrated on 1 s at its sampling_rate -- the length is the user's, any
length runs; a frame-wise convolution and attention see the same statistics per frame -- and a
log-mel input (Whisper) is feature_size x nb_max_frames. A file's size is taken only for an input whose
fixed dimensions it agrees with: the processor feeds one input, and the other float inputs of the same
folder's files are no image or audio (Optimum's Whisper / TrOCR decoder reads encoder_hidden_states
[batch, encoder_sequence_length, 384] and past_key_values [batch, 6, length, 64]: 80 x 3000 or
3 x 384 x 384 there made Normalize refuse the hint it had been given).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx

from dfq_onnx.core.options import QuantizeOptions

log = logging.getLogger(__name__)
LAYOUT = ("Reshape", "Flatten", "Transpose", "Concat", "Identity", "Squeeze", "Unsqueeze")


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


def _dynamic_rows(model: onnx.ModelProto, first: int = 1) -> dict[str, int]:
    """{input name: rank} of the graph inputs with a dynamic dimension past the batch axis (from axis
    `first`: 0 counts axis 0 too, for a model that may have no batch axis)."""
    params = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        tensor = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if vi.name in params or tensor is None or not tensor.HasField("shape"):
            continue
        dims = tensor.shape.dim
        if any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[first:]):
            out[vi.name] = len(dims)
    return out


def with_calib_hints(model: onnx.ModelProto, options: QuantizeOptions) -> QuantizeOptions:
    """`options` with (1, *row) hints from a `--calib` npz for dynamic inputs the user did not size."""
    if not str(options.calib).endswith(".npz"):
        return options
    dynamic = {k: r for k, r in _dynamic_rows(model, 0).items() if k not in options.input_shapes}
    if not dynamic:
        return options
    shapes = npz_shapes(options.calib)
    batched = _dynamic_rows(model)
    found = {k: (1, *shapes[k][1:]) for k, rank in dynamic.items()
             if k in batched and k in shapes and len(shapes[k]) == rank and shapes[k][0] > 0}
    found.update({k: tuple(shapes[k][1:]) for k, rank in dynamic.items()      # no batch axis: [N, *example]
                  if k in shapes and len(shapes[k]) == rank + 1 and shapes[k][0] > 0})
    if not found:
        return options
    return dataclasses.replace(options, input_shapes={**options.input_shapes, **found})


def _const_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes of the constant tensors: initializers, Constant nodes, Identity copies of them, and a
    Gather of a constant table at constant indices (CLIP's position_embedding(position_ids))."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                dims[n.output[0]] = list(value.dims)
        elif n.op_type == "Identity" and n.input and n.input[0] in dims:
            dims[n.output[0]] = dims[n.input[0]]
        elif n.op_type == "Gather" and all(i in dims for i in n.input[:2]) and not _attr(n, "axis", 0):
            dims[n.output[0]] = dims[n.input[1]] + dims[n.input[0]][1:]
    return dims


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):
            readers[i].append(n)
    return readers


def _attr(node: onnx.NodeProto, name: str, default):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else (list(a.ints) if a.ints else a.i)


def _first_conv(name: str, dims: dict, readers: dict) -> onnx.NodeProto | None:
    """The Conv (constant 4-D weight) reading input `name`, directly or through Cast / Identity."""
    x = name
    while x is not None:
        conv = next((n for n in readers[x] if n.op_type == "Conv" and n.input[0] == x
                     and len(dims.get(n.input[1], [])) == 4), None)
        if conv is not None:
            return conv
        x = next((n.output[0] for n in readers[x] if n.op_type in ("Cast", "Identity")), None)
    return None


def _patch_size(name: str, dims: dict, readers: dict) -> tuple[int, int, int] | None:
    """(C, H, W) of image input `name` from its patch embedding and position table (module docstring)."""
    conv = _first_conv(name, dims, readers)
    if conv is None:
        return None
    w = dims[conv.input[1]]
    kernel = _attr(conv, "kernel_shape", w[2:])
    if _attr(conv, "strides", [1, 1]) != kernel or any(_attr(conv, "pads", [0])) or kernel[0] != kernel[1]:
        return None
    todo, seen = [conv.output[0]], set()
    while todo:
        for n in readers[todo.pop()]:
            other = dims.get(next((i for i in n.input if i in dims), ""), [])
            if n.op_type == "Add" and len(other) == 3 and other[0] == 1 and other[2] == w[0]:
                sides = [math.isqrt(other[1] - k) for k in range(3) if other[1] - k > 0]
                side = next((r for k, r in enumerate(sides) if r * r == other[1] - k), None)
                channels = w[1] * _attr(conv, "group", 1)
                return None if side is None else (channels, side * kernel[0], side * kernel[1])
            if n.op_type in LAYOUT and n.name not in seen:
                seen.add(n.name)
                todo += list(n.output)
    return None


def with_graph_hints(model: onnx.ModelProto, options: QuantizeOptions) -> QuantizeOptions:
    """`options` with the image size of a vision transformer's dynamic input the graph fixes (docstring)."""
    dynamic = {k: r for k, r in _dynamic_rows(model).items() if r == 4 and k not in options.input_shapes}
    if not dynamic:
        return options
    dims, readers = _const_dims(model), _readers(model)
    found = {}
    for k in dynamic:
        size = _patch_size(k, dims, readers)
        if size is not None:
            found[k] = (1, *size)
            log.warning("input '%s': size %s from the patch embedding and position table (pass --input-shape "
                        "to choose another)", k, "x".join(map(str, found[k][1:])))
    return dataclasses.replace(options, input_shapes={**options.input_shapes, **found}) if found else options


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _side(v) -> tuple[int, int] | None:
    """(H, W) from a processor / config size entry: int, [h, w], {height, width} or {shortest_edge}."""
    if isinstance(v, int) and v > 0:
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
        return v[0], v[1]
    if isinstance(v, dict):
        if isinstance(v.get("height"), int) and isinstance(v.get("width"), int):
            return v["height"], v["width"]
        return _side(v.get("shortest_edge"))
    return None


def _config_image(folder: Path) -> tuple[tuple[int, int], int | None, str] | None:
    """((H, W), channels or None, source file) of the image a Hugging Face export's files describe."""
    proc, cfg = _read_json(folder / "preprocessor_config.json"), _read_json(folder / "config.json")
    vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else {}
    channels = next((c["num_channels"] for c in (cfg, vision) if isinstance(c.get("num_channels"), int)),
                    None)
    crop = _side(proc.get("crop_size")) if proc.get("do_center_crop") else None
    size = crop or _side(proc.get("size"))
    if size:
        return size, channels, "preprocessor_config.json"
    size = _side(cfg.get("image_size")) or _side(vision.get("image_size"))
    return (size, channels, "config.json") if size else None


def _config_audio(folder: Path, rank: int) -> tuple[tuple[int, ...], str] | None:
    """The row a Hugging Face audio feature extractor's preprocessor_config.json describes for a rank-2
    waveform (1 s at its sampling_rate) or a rank-3 feature input (feature_size x nb_max_frames)."""
    proc = _read_json(folder / "preprocessor_config.json")
    def positive(k): return isinstance(proc.get(k), int) and proc[k] > 0   # noqa: E704
    if rank == 2 and proc.get("feature_size") == 1 and positive("sampling_rate"):
        rate = proc["sampling_rate"]
        return (rate,), f"1 s at preprocessor_config.json's sampling_rate {rate}"
    if rank == 3 and positive("feature_size") and positive("nb_max_frames"):
        return (proc["feature_size"], proc["nb_max_frames"]), "preprocessor_config.json"
    return None


def _fixed_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """{graph input: its dimensions, None where dynamic}."""
    return {vi.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}


def _agrees(fixed: list[int | None], hint: tuple[int, ...]) -> bool:
    """A hint [1, *row] fits an input when every fixed non-batch dimension equals the hint's."""
    return len(fixed) == len(hint) and all(f is None or f == h for f, h in zip(fixed[1:], hint[1:]))


def _audio_hints(folder: Path, model: onnx.ModelProto, dynamic: dict[str, int]) -> dict:
    floats = {vi.name for vi in model.graph.input
              if vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    fixed = _fixed_dims(model)
    hints = {}
    for k, rank in dynamic.items():
        found = _config_audio(folder, rank) if k in floats and rank in (2, 3) else None
        if found and _agrees(fixed[k], (1, *found[0])):
            hints[k] = (1, *found[0])
            log.warning("input '%s': size %s from %s beside the model (pass --input-shape to choose "
                        "another)", k, "x".join(map(str, found[0])), found[1])
    return hints


def _image_hints(folder: Path, model: onnx.ModelProto, dynamic: list[str]) -> dict:
    found = _config_image(folder) if dynamic else None
    if not found:
        return {}
    (h, w), channels, source = found
    dims, readers, fixed = _const_dims(model), _readers(model), _fixed_dims(model)
    hints = {}
    for k in dynamic:
        conv = _first_conv(k, dims, readers)
        c = channels or (dims[conv.input[1]][1] * _attr(conv, "group", 1) if conv is not None else None)
        if c and _agrees(fixed[k], (1, c, h, w)):
            hints[k] = (1, c, h, w)
            log.warning("input '%s': size %dx%dx%d from %s beside the model (pass --input-shape to choose "
                        "another)", k, c, h, w, source)
    return hints


def with_config_hints(path, model: onnx.ModelProto, options: QuantizeOptions) -> QuantizeOptions:
    """`options` with the image or audio size a Hugging Face export's files beside `path` give
    (docstring)."""
    if not isinstance(path, (str, os.PathLike)):
        return options
    rows = {k: r for k, r in _dynamic_rows(model).items() if k not in options.input_shapes}
    folder = Path(path).parent
    hints = {**_audio_hints(folder, model, rows), **_image_hints(folder, model, [k for k, r in rows.items()
                                                                              if r == 4])}
    return dataclasses.replace(options, input_shapes={**options.input_shapes, **hints}) if hints else options


def with_inferred_shapes(path, model: onnx.ModelProto, options: QuantizeOptions) -> QuantizeOptions:
    """`options` with every hint a compile infers for dynamic input sizes the user did not give: a
    `--calib` npz's arrays, then a vision transformer's position table, then the exporter's config files
    beside `path` (when the model came from a file)."""
    return with_config_hints(path, model, with_graph_hints(model, with_calib_hints(model, options)))
