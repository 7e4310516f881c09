"""Super-pixels: the interpretable features of LIME, KernelSHAP and exact grid Shapley values.

A segmentation is an (H, W) int64 map of segment indices 0 … S − 1 (per image: (n, H, W)).

* ``grid``: a ``side`` × ``side`` grid of rectangles; row and column boundaries are
  round(k·H/side), so cells differ by at most one pixel when ``side`` does not divide the image.
* ``slic``: SLIC super-pixels (Achanta et al., 2012) from scikit-image, the segmentation LIME's
  image explainer uses by default (quickshift there; SLIC is the faster, deterministic choice),
  computed per image on the pixel-space image; segment indices are renumbered 0 … S − 1.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Segmentation = Literal["grid", "slic"]
SEGMENTATIONS = get_args(Segmentation)
# What a removed super-pixel shows, in pixel space (exact_shapley, lime, kernel_shap): black,
# white, the image's mean colour or the image blurred.
RemovedFill = Literal["black", "white", "mean", "blur"]


def grid_boundaries(size: int, side: int) -> list[int]:
    """Cell boundaries along one axis: round(k·size/side), k = 0 … side (round half up)."""
    return [(2 * k * size + side) // (2 * side) for k in range(side + 1)]


def grid_segments(height: int, width: int, side: int, *, device: torch.device | None = None) -> torch.Tensor:
    """(H, W) int64 cell index of a ``side`` × ``side`` grid, row-major."""
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"grid side must be an integer >= 1; got {side!r}")
    if side > min(height, width):
        raise ValueError(f"a {side}×{side} grid does not fit an image of {height}×{width} pixels")
    rows = torch.bucketize(torch.arange(height, device=device), torch.tensor(grid_boundaries(height, side)[1:-1], device=device), right=True)
    cols = torch.bucketize(torch.arange(width, device=device), torch.tensor(grid_boundaries(width, side)[1:-1], device=device), right=True)
    return rows.unsqueeze(1) * side + cols.unsqueeze(0)


def slic_segments(images: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """(n, H, W) int64 SLIC segments of pixel-space images (n, C, H, W), renumbered 0 … S_i − 1."""
    try:
        from skimage.segmentation import slic
    except ImportError as err:  # pragma: no cover - scikit-image is a dependency
        raise ImportError("segmentation 'slic' needs scikit-image (pip install scikit-image)") from err
    out = []
    for image in images.detach().cpu().double().numpy():
        channel_axis = 0 if image.shape[0] > 1 else None
        picture = image if channel_axis is not None else image[0]
        labels = slic(
            picture, n_segments=n_segments, compactness=compactness, start_label=0,
            channel_axis=channel_axis, enforce_connectivity=True,
        )
        labels = torch.as_tensor(labels, dtype=torch.int64)
        out.append(torch.unique(labels, return_inverse=True)[1])
    return torch.stack(out).to(images.device)


def segment_images(
    images: torch.Tensor, segmentation: str, n_segments: int, compactness: float = 10.0
) -> torch.Tensor:
    """(n, H, W) segments: a ``n_segments`` × ``n_segments`` grid, or about ``n_segments`` SLIC
    super-pixels."""
    n, _, height, width = images.shape
    if segmentation == "grid":
        cells = grid_segments(height, width, n_segments, device=images.device)
        return cells.unsqueeze(0).expand(n, -1, -1).contiguous()
    if segmentation == "slic":
        return slic_segments(images, n_segments, compactness)
    raise ValueError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}; got {segmentation!r}")


def pool_segments(maps: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of each (n, H, W) map over each segment: (n, count).

    A one-hot product, not ``scatter_add``: that uses atomics on CUDA, whose order (and so the
    rounding of the sums) changes from run to run."""
    onehot = torch.nn.functional.one_hot(segments.reshape(segments.shape[0], -1), count).to(maps.dtype)
    return torch.einsum("np,npk->nk", maps.reshape(maps.shape[0], -1), onehot)
