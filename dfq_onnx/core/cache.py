"""A small on-disk cache of numpy arrays, keyed by a SHA-256 of what determines the result.

Layout: ``<cache dir>/<kind>/<sha256>.npz``. The default directory is ``$DFQ_ONNX_CACHE_DIR``, else
``$XDG_CACHE_HOME/dfq-onnx``, else ``~/.cache/dfq-onnx``. Writes go to a temporary file in the same
directory and are renamed over the target (``os.replace``), so a reader never sees a partial file
and concurrent writers of the same key leave one complete copy. A corrupt or unreadable entry is a
miss (logged), never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)


def default_dir() -> Path:
    if os.environ.get("DFQ_ONNX_CACHE_DIR"):
        return Path(os.environ["DFQ_ONNX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dfq-onnx"


def cache_key(key_parts: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `key_parts` (sorted keys; tuples become lists)."""
    text = json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cache key part of type {type(obj).__name__} is not JSON-serializable")


def cache_path(kind: str, key_parts: Mapping[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the entry of `kind` ("synthetic", ...) for `key_parts` lives (not created)."""
    if not kind.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"cache kind '{kind}' must be alphanumeric")
    root = Path(cache_dir) if cache_dir is not None else default_dir()
    return root / kind / f"{cache_key(key_parts)}.npz"


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry, or None when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable cache entry %s: %s", path, exc)
        return None


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` as an uncompressed npz via a temporary file and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.stem + ".", suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
