"""Outputs kept across evaluations, in memory while small, else in a file read one call's rows at a time.

The scorer compares every configuration's outputs with two sets it keeps for the whole stage: the FP32
reference and the probe's own base outputs (`evaluator.Evaluator`), and the segmented runner keeps each
batch's model outputs in its prefix cache (`segments.SegmentedRunner`). Their size is rows x output
elements per row: a classifier's logits are kilobytes, but a segmenter that exports its side outputs and
deep-supervision features (ISNet at 1024 x 1024: six [1, 1024, 1024] maps and six feature maps up to
[64, 512, 512], 124 MB per row) keeps a gigabyte per set on 8 scoring rows, held beside each
evaluation's outputs and their float64 loss temporaries (7.8 GB in the activation decision).

`RowStore` holds one such set. Up to `limit` bytes (the caller's share of one chunk of activations,
`segments.CACHE_BYTES`) it is plain arrays, as before; above it the rows go to an unlinked temporary
file and are read back (positioned reads) for the rows one call compares -- never mapped, so the process
holds one call's rows, not the set (the file's pages live in the kernel's page cache, which it reclaims
under pressure). `SpillFile` keeps a few arrays the same way (one descriptor for a batch's outputs),
`Spilled` being one of them. The bytes read back are the bytes written: no value changes, only where
they live.
"""

from __future__ import annotations

import tempfile

import numpy as np

from dfq_onnx.backends.chunks import ARENA, DEFAULT_BUDGET

KEPT_BYTES = DEFAULT_BUDGET // ARENA // 2   # one kept set in memory up to this (half a chunk's share)


def _rows(rows, n: int) -> np.ndarray:
    """Row indices of a slice or an index array over `n` rows."""
    return np.arange(n)[rows] if isinstance(rows, slice) else np.asarray(rows, np.int64)


class SpillFile:
    """One unlinked temporary file holding several arrays (one descriptor for all of a batch's outputs)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="dfq-outputs-")
        self._end = 0

    def add(self, arr: np.ndarray) -> "Spilled":
        arr = np.ascontiguousarray(arr)
        data = memoryview(arr.reshape(-1)).cast("B")
        _write_at(self._file, data, self._end)
        out = Spilled(self._file, self._end, arr.shape, arr.dtype)
        self._end += len(data)
        return out


class Spilled:
    """One array in a `SpillFile`; `load()` reads it back whole (a copy)."""

    def __init__(self, file, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self._file, self._offset, self.shape, self.dtype = file, offset, shape, dtype

    def load(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        _read_into(self._file, memoryview(out.reshape(-1)).cast("B"), self._offset)
        return out


def _write_at(file, data, offset: int) -> None:
    """Write `data` (bytes-like) at `offset` of `file` (seek + write: every platform; one thread)."""
    file.seek(offset)
    file.write(data)


def _read_into(file, buf: memoryview, offset: int) -> None:
    """Fill `buf` from `offset` of `file`."""
    file.seek(offset)
    done = 0
    while done < len(buf):
        got = file.readinto(buf[done:])
        if not got:
            raise OSError(f"short read from the outputs file at {offset + done}")
        done += got


class RowStore:
    """A list of arrays of `n` rows each (one per output), filled and read by rows (module docstring)."""

    def __init__(self, n: int, limit: int | None = None):
        self.n, self.limit = n, limit
        self._arrays: list[np.ndarray] | None = None
        self._file = None
        self._layout: list[tuple[tuple[int, ...], np.dtype, int, int]] = []  # shape, dtype, offset, row bytes

    @property
    def in_file(self) -> bool:
        return self._file is not None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.n, *shape) for shape, _, _, _ in self._layout]

    @property
    def dtypes(self) -> list[np.dtype]:
        return [dtype for _, dtype, _, _ in self._layout]

    def _allocate(self, outs: list[np.ndarray]) -> None:
        offset = 0
        for o in outs:
            row = int(np.prod(o.shape[1:], dtype=np.int64)) * o.dtype.itemsize
            self._layout.append((tuple(o.shape[1:]), o.dtype, offset, row))
            offset += row * self.n
        if self.limit is not None and offset > self.limit:
            self._file = tempfile.TemporaryFile(prefix="dfq-outputs-")
            self._file.truncate(offset)
        else:
            self._arrays = [np.empty((self.n, *shape), dtype) for shape, dtype, _, _ in self._layout]

    def put(self, rows, outs: list[np.ndarray]) -> None:
        """Store `outs` (one array per output, len(rows) rows each) at `rows` (a slice or indices)."""
        if not self._layout:
            self._allocate(outs)
        if self._file is None:
            for arr, o in zip(self._arrays, outs):
                arr[rows] = o
            return
        for (_, _, offset, row), o in zip(self._layout, outs):
            data = np.ascontiguousarray(o)
            for i, r in enumerate(_rows(rows, self.n)):
                _write_at(self._file, data[i:i + 1].tobytes(), offset + int(r) * row)

    def get(self, rows) -> list[np.ndarray]:
        """The stored rows `rows` of every output (a slice gives views when in memory)."""
        if self._file is None:
            return [arr[rows] for arr in self._arrays]
        idx, out = _rows(rows, self.n), []
        for shape, dtype, offset, row in self._layout:
            arr = np.empty((len(idx), *shape), dtype)
            flat = memoryview(arr.reshape(len(idx), -1)).cast("B") if arr.size else None
            for i, r in enumerate(idx):
                if flat is not None:
                    _read_into(self._file, flat[i * row:(i + 1) * row], offset + int(r) * row)
            out.append(arr)
        return out

    def whole(self) -> list[np.ndarray]:
        """Every row of every output (a copy when in the file)."""
        return self.get(slice(None))
