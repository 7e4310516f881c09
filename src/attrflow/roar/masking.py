"""The masked datasets of ROAR and DiffROAR: each image loses exactly round(k·H·W) pixels.

ROAR removes the k % *most* salient pixels of every image (train and test) and retrains; DiffROAR
also retrains on images that lost the k % *least* salient pixels, and compares the two. A removed
pixel loses all of its channels and takes the per-channel mean of the (unmasked) train split, as
in Hooker et al. (2019); the papers never name the replacement value.

Ranking reuses the removal metrics' stable sort: ties keep row-major pixel order, so equal scores
remove the same pixels on every run, device and batch size. "Least salient" ranks the same
scores ascending (ties again in row-major order); it is not the reverse of the "most" ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attrflow.data.sample_store import SampleSet
from attrflow.metrics.ranking import ORDERS, pixel_positions, ranking_scores

# Images ranked per sort call: bounds the int64 index arrays for a 50 000-image train split.
RANK_CHUNK = 4096
ARMS = ("most", "least")  # which end of the ranking is removed: ROAR's arm, and DiffROAR's other


def removed_count(fraction: float, num_pixels: int) -> int:
    """round(fraction · num_pixels), halves rounded up (Python's round() would go to even)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return int(math.floor(fraction * num_pixels + 0.5))


def removal_masks(
    maps: np.ndarray, fraction: float, arm: str, *, order: str = "signed", ids: Sequence[str] | None = None
) -> np.ndarray:
    """(n, H, W) bool: True where a pixel is removed, exactly `removed_count` per image.

    `maps` are (n, H, W) or (n, C, H, W) (channels summed first: a pixel goes with all its
    channels). `order` ranks by the signed map or its magnitude. Non-finite maps cannot be ranked
    and raise, naming the samples (`ids`) when given.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    scores = torch.from_numpy(np.asarray(maps, dtype=np.float64))
    if scores.dim() == 4:
        scores = scores.sum(dim=1)
    if scores.dim() != 3:
        raise ValueError(f"maps must be (n, H, W) or (n, C, H, W), got shape {tuple(maps.shape)}")
    n, height, width = scores.shape
    bad = np.flatnonzero(~torch.isfinite(scores.reshape(n, -1)).all(dim=1).numpy())
    if bad.size:
        names = [ids[i] for i in bad[:10]] if ids is not None else bad[:10].tolist()
        raise ValueError(f"{bad.size} attribution map(s) have non-finite values and cannot be ranked: {names}")
    k = removed_count(fraction, height * width)
    masks = np.empty((n, height, width), dtype=bool)
    for lo in range(0, n, RANK_CHUNK):
        chunk = ranking_scores(scores[lo : lo + RANK_CHUNK], order)
        removed = pixel_positions(chunk, descending=arm == "most") < k
        masks[lo : lo + RANK_CHUNK] = removed.reshape(-1, height, width).numpy()
    return masks


def channel_means(images: np.ndarray) -> np.ndarray:
    """(C,) float32 per-channel mean of (n, C, H, W) images, accumulated in float64."""
    return images.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)


def remove_pixels(samples: SampleSet, masks: np.ndarray, fill: np.ndarray) -> SampleSet:
    """A copy of `samples` whose masked pixels hold `fill` (C,) in every channel."""
    if masks.shape != (len(samples), *samples.images.shape[2:]):
        raise ValueError(f"masks {masks.shape} do not fit images {samples.images.shape}")
    fill = np.asarray(fill, dtype=np.float32).reshape(1, -1, 1, 1)
    images = np.where(masks[:, None, :, :], fill, samples.images)
    return SampleSet(images, samples.labels, samples.ids, samples.masks)
