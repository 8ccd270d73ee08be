"""Keep large sample sets in a temporary file: later passes hold only the rows they read.

The calibration samples (synthetic, a user's npz, or noise) stay with the compile after Calibrate
for the passes that score on them (the activation decision, sensitivity, bias correction's data,
the report). Calibrate reads every row once; the passes after it read a prefix (the activation
decision's scoring rows: 9 of 64 samples on PP-OCRv4 det at 640 x 640, 44 of 315 MB). Held as
arrays, every sample is resident from synthesis to the end and sits beside every later stage's
peak.

`spill` moves each array above `SPILL_BYTES` into an unlinked temporary file and maps it back
copy-on-write (`np.memmap`, mode "c"): same dtype, shape and bytes, writable as before (a write
goes to a private page, never to the file). A mapped page counts in the process's RSS only once
read, so a pass reading r of n rows holds r rows; the file itself lives in the page cache, which the
kernel reclaims under pressure (where the temporary directory is a tmpfs, the bytes stay in memory,
outside the process). The file is unlinked when it is created, so nothing is left on disk whatever
happens to the process. Where no temporary file can be written the arrays stay as they are.
Values never change, only where their bytes live.
"""

from __future__ import annotations

import tempfile
from collections.abc import MutableMapping

import numpy as np

SPILL_BYTES = 1 << 26     # 64 MiB: smaller sets are small beside the process itself (~130 MB)


def file_backed(arr: np.ndarray) -> np.ndarray:
    """A copy-on-write map of `arr`'s bytes in an unlinked temporary file (`arr` when none can be written)."""
    if arr.size == 0 or arr.dtype.hasobject:
        return arr
    try:
        with tempfile.TemporaryFile(prefix="dfq-samples-") as f:
            np.ascontiguousarray(arr).tofile(f)
            f.flush()
            return np.memmap(f, dtype=arr.dtype, mode="c", shape=arr.shape)
    except OSError:
        return arr


def spill(arrays: MutableMapping[str, np.ndarray], min_bytes: int = SPILL_BYTES) -> int:
    """Replace the arrays of `arrays` in place by file-backed copies when together they exceed
    `min_bytes` (every holder of the mapping sees them); returns the bytes moved (0: none)."""
    total = sum(int(a.nbytes) for a in arrays.values() if isinstance(a, np.ndarray))
    if total <= min_bytes:
        return 0
    moved = 0
    for name, arr in list(arrays.items()):
        if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
            arrays[name] = file_backed(arr)
            moved += int(arr.nbytes) if isinstance(arrays[name], np.memmap) else 0
    return moved
