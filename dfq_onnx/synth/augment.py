"""Cheap views of synthetic image samples for range calibration: mirror images and small shifts.

Min/max activation ranges measured on N samples are the extremes of N draws: they grow with N, and
their spread from one draw of N samples to another is what makes a calibration set lucky or not.
Searched samples are costly (each is ES-optimized for many steps); views of them are free (one more
forward row each in `Calibrate`). View 0 is the sample itself, view 1 its mirror image (flip of the
last axis); views k >= 2 shift it by (dy, dx), each drawn uniformly from +-1 .. +-side/8 pixels
(never 0: a view is never the sample itself), with reflect padding, and mirror it with probability
1/2, each sample and view drawn independently from one seeded generator (deterministic in the seed).

Only image-like inputs get views: every input is rank 4 [N, C, H, W] with C <= 4 channels and
H, W >= 8 (a photo-like grid on which a mirror image or a shift is another plausible image), or
[N, H, W, C] for the inputs a caller names channels-last (synth/layout.py: TF exports). Any other
model (sequences, feature vectors, multi-input models mixing kinds) is calibrated on the samples alone.
"""

from __future__ import annotations

from typing import Collection

import numpy as np

MAX_CHANNELS, MIN_SIDE, SHIFT_FRACTION = 4, 8, 8


def is_image_like(shape: tuple[int, ...]) -> bool:
    """A per-batch shape [N, C, H, W] with few channels and a spatial grid of at least 8 x 8."""
    return len(shape) == 4 and 1 <= shape[1] <= MAX_CHANNELS and min(shape[2:]) >= MIN_SIDE


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """[C, H, W] translated by (dy, dx) pixels, the uncovered border filled by reflection."""
    h, w = x.shape[1:]
    pad = np.pad(x, ((0, 0), (abs(dy),) * 2, (abs(dx),) * 2), mode="reflect")
    return pad[:, abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def _view_params(n: int, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per view and sample: mirror flag [views, n] and shift [views, n, 2] in units of side / 8."""
    rng = np.random.default_rng([seed, views])
    flips, moves = np.zeros((views, n), bool), np.zeros((views, n, 2))
    for view in range(1, views):
        flips[view] = True if view == 1 else rng.random(n) < 0.5
        if view > 1:
            moves[view] = rng.uniform(-1.0, 1.0, (n, 2))
    return flips, moves


def _first(feeds: dict[str, np.ndarray], channels_last: Collection[str], planes: Collection[str] = ()
           ) -> dict[str, np.ndarray]:
    """The inputs as [N, C, H, W] (a transposed view of those in `channels_last`, a one-channel view of
    the [N, H, W] `planes`: synth/layout.py)."""
    return {k: v.transpose(0, 3, 1, 2) if k in channels_last and v.ndim == 4
            else v[:, None] if k in planes and v.ndim == 3 else v for k, v in feeds.items()}


def view_count(feeds: dict[str, np.ndarray], views: int, channels_last: Collection[str] = (),
               planes: Collection[str] = ()) -> int:
    """Rows per sample that `view_rows` yields: `views` for image-like inputs (channels first, or last
    for the inputs in `channels_last`, one-channel `planes` [N, H, W]), else 1."""
    first = _first(feeds, channels_last, planes)
    if views <= 1 or not feeds or not all(is_image_like(v.shape) for v in first.values()):
        return 1
    return views


def view_rows(feeds: dict[str, np.ndarray], views: int, seed: int, start: int, stop: int,
              channels_last: Collection[str] = (), planes: Collection[str] = ()) -> dict[str, np.ndarray]:
    """Rows [start, stop) of `with_views(feeds, views, seed)` without building the others: row r is
    view r // n of sample r % n. Any split of the rows into calls yields the same rows. Inputs in
    `channels_last` ([N, H, W, C]) get the views of their [N, C, H, W] transpose, transposed back;
    `planes` ([N, H, W]) those of their one-channel [N, 1, H, W] view."""
    n = len(next(iter(feeds.values())))
    if view_count(feeds, views, channels_last, planes) == 1:
        return {k: v[start:stop] for k, v in feeds.items()}
    flips, moves = _view_params(n, views, seed)
    out = {}
    for k, v in _first(feeds, channels_last, planes).items():
        reach = np.maximum(np.array(v.shape[2:]) // SHIFT_FRACTION, 1)
        rows = []
        for r in range(start, min(stop, n * views)):
            view, i = divmod(r, n)
            if view == 0:
                rows.append(v[i])
                continue
            dy, dx = (np.sign(moves[view, i]) * np.ceil(np.abs(moves[view, i]) * reach)).astype(int)
            rows.append(_shift(v[i, :, :, ::-1] if flips[view, i] else v[i], int(dy), int(dx)))
        rows = np.stack(rows).astype(v.dtype, copy=False)
        out[k] = (np.ascontiguousarray(rows.transpose(0, 2, 3, 1)) if k in channels_last
                  else np.ascontiguousarray(rows[:, 0]) if k in planes else rows)
    return out


def with_views(feeds: dict[str, np.ndarray], views: int, seed: int) -> dict[str, np.ndarray]:
    """`feeds` followed by views 1..views-1 of every sample (module docstring), concatenated on axis 0;
    unchanged when views <= 1 or an input is not image-like. The same transform is applied to every
    input of a sample."""
    if view_count(feeds, views) == 1:
        return feeds
    n = len(next(iter(feeds.values())))
    return view_rows(feeds, views, seed, 0, n * views)
