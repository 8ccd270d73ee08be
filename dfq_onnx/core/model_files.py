"""Models and reports out: serialization, the onnx checker, atomic writes, and models above protobuf's
2 GB limit written with their tensors in one external-data file. Re-exported by `dfq_onnx.core.ir`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto

from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.external_data import all_tensors, tensor_bytes
from dfq_onnx.core.shared_weights import SessionModel

TWO_GB = 2**31 - 1024


def over_two_gb(model: onnx.ModelProto) -> bool:
    """Whether protobuf cannot serialize `model`: `ByteSize()` (a whole serialization under upb) is
    asked only when its tensors alone come near the limit."""
    return tensor_bytes(model) >= TWO_GB // 2 and model.ByteSize() > TWO_GB


def check_model(model: onnx.ModelProto, full: bool = True) -> None:
    """onnx.checker (models above 2 GB are checked from a temporary external-data copy)."""
    try:
        if over_two_gb(model):
            with tempfile.TemporaryDirectory(prefix="dfq-check-") as tmp:
                onnx.checker.check_model(str(save_model(model, Path(tmp) / "model.onnx")), full_check=full)
            return
        onnx.checker.check_model(model, full_check=full)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"output failed onnx.checker: {first}") from None


def serialize(model: onnx.ModelProto) -> bytes:
    if isinstance(model, SessionModel):
        raise TypeError("a SessionModel's constants are not in its proto: give it to a session, or export "
                        "the graph with to_model")
    return model.SerializeToString(deterministic=True)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, return_all: bool = False):
    """Write atomically: a temporary file in the same directory, then rename over the target.

    Models above 2 GB are written with their tensors in one external-data file `<name>.data` next to
    the model (also staged and renamed), since protobuf cannot serialize them inline; `model` is left
    as it was. Returns the path (with `return_all`, every file written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not over_two_gb(model):
        _atomic_write(path, serialize(model))
        return [path] if return_all else path
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix="." + path.name + ".") as tmp:
        staged, staged_data = Path(tmp) / path.name, Path(tmp) / data_name
        _write_external(model, staged, staged_data, data_name)
        os.replace(staged_data, path.parent / data_name)
        os.replace(staged, path)
    return [path, path.parent / data_name] if return_all else path


def _write_external(model: onnx.ModelProto, path: Path, data_path: Path, location: str,
                    threshold: int = 1024) -> None:
    """Save `model` with every tensor of >= `threshold` bytes moved to `data_path`, then put the data
    back into the proto (onnx.save_model would strip the caller's proto)."""
    moved: list[tuple[onnx.TensorProto, bytes, bool]] = []
    try:
        with open(data_path, "wb") as fh:
            for tensor in all_tensors(model):
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < threshold:
                    continue
                raw = tensor.raw_data
                offset = fh.seek(0, os.SEEK_END)
                offset += -offset % 4096
                fh.seek(offset)
                fh.write(raw)
                tensor.ClearField("raw_data")
                moved.append((tensor, raw, tensor.HasField("data_location")))
                tensor.data_location = TensorProto.EXTERNAL
                entries = (("location", location), ("offset", str(offset)), ("length", str(len(raw))))
                for key, value in entries:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        _atomic_write(path, serialize(model))
    finally:
        for tensor, raw, had_location in moved:
            del tensor.external_data[:]
            if had_location:
                tensor.data_location = TensorProto.DEFAULT
            else:
                tensor.ClearField("data_location")
            tensor.raw_data = raw


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())     # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
