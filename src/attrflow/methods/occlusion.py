"""Occlusion (Zeiler & Fergus 2014), batched over patch positions.

A ``patch_size`` × ``patch_size`` window slides over the image with ``stride``; each position is
replaced by a fill canvas (all channels at once) and the drop of the target LOGIT,
F(x) − F(x with the window filled), is recorded. A pixel's score is the MEAN drop over the
windows that cover it — Captum's Occlusion definition (sum of drops over covering windows
divided by their count), so maps are comparable across strides. Windows start at 0, stride,
2·stride, … until one reaches the far border; the last one may be cut off by the border (as in
Captum), so every pixel is covered when stride ≤ patch_size, which is required.

Maps are channel-free (n, H, W): a window removes a pixel with all its channels, so every channel
would carry the same score (Captum with a (C, p, p) window gives exactly that, per channel).

Fill canvases, in pixel space: ``black`` (0), ``mean`` (each image's mean colour), ``blur`` (the
image blurred with ``blur_sigma`` pixels, reflect padding, as BlurIG's blurred baseline) or
``value`` (the constant ``fill_value``). The papers give no patch size, stride or fill.

Cost per image: one forward of x plus one per window position, ⌈(H − p)/s + 1⌉ · ⌈(W − p)/s + 1⌉
(225 for 64² with p = 8, s = 4), no backward; positions of all samples run in chunks of
``max_batch`` model inputs.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from attrflow.methods._baselines import gaussian_blur
from attrflow.methods._batching import check_max_batch, evaluate_outputs, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge

FILLS = ("black", "mean", "blur", "value")


def window_cover(
    size: int, patch_size: int, stride: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(positions, size) 0/1 matrix: row i marks the pixels window i covers along one axis."""
    positions = math.ceil((size - patch_size) / stride) + 1
    starts = torch.arange(positions, device=device).unsqueeze(1) * stride
    pixels = torch.arange(size, device=device).unsqueeze(0)
    return ((pixels >= starts) & (pixels < starts + patch_size)).to(dtype)


def _check_geometry(patch_size: int, stride: int, height: int, width: int) -> None:
    """What the signature cannot declare: the window against the image and against each other."""
    if patch_size > min(height, width):
        raise ValueError(
            f"occlusion: parameter patch_size {patch_size} exceeds the image size {height}×{width}"
        )
    if stride > patch_size:
        raise ValueError(
            f"occlusion: parameter stride {stride} exceeds patch_size {patch_size}; pixels between "
            f"windows would get no score"
        )


def fill_canvas(
    x: torch.Tensor, fill: str, fill_value: float | None, blur_sigma: float
) -> torch.Tensor:
    """What an occluded window shows, (n, C, H, W) in pixel space."""
    if fill_value is not None and fill != "value":
        raise ValueError(
            f"occlusion: parameter fill_value is set ({fill_value!r}) but parameter fill is "
            f"{fill!r}; use fill: value to use it"
        )
    if fill == "black":
        return torch.zeros_like(x)
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if fill == "blur":
        return gaussian_blur(x, float(blur_sigma), padding="reflect")
    if fill == "value":
        if fill_value is None:
            raise ValueError("occlusion: fill 'value' needs a number in parameter fill_value; got None")
        return torch.full_like(x, float(fill_value))
    raise ValueError(f"occlusion: parameter fill must be one of {', '.join(FILLS)}; got {fill!r}")


@register_method("occlusion", channel_free=True)
def occlusion(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    patch_size: Annotated[int, Ge(1), Doc("side of the square window in pixels")] = 8,
    stride: Annotated[
        int,
        Ge(1),
        Doc("step between window positions in pixels (at most patch_size)"),
    ] = 4,
    fill: Annotated[
        Literal["black", "mean", "blur", "value"],
        Doc(
            "what an occluded window shows: black (0), the image's mean colour, the image "
            "blurred with blur_sigma, or the constant fill_value (pixel space)"
        ),
    ] = "black",
    fill_value: Annotated[
        float | None,
        Doc("for fill 'value': the pixel value of the window"),
    ] = None,
    blur_sigma: Annotated[
        float,
        Ge(0),
        Doc("Gaussian blur σ in pixels for fill 'blur'"),
    ] = 10.0,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(n, H, W) mean drop of the target logit over the windows covering each pixel.

    Diagnostics: ``window_drops`` (n, rows, cols), the logit drop of every window position
    (row-major by window start), from which the map is an exact linear function.
    """
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    n, _, height, width = x.shape
    _check_geometry(patch_size, stride, height, width)
    canvas = fill_canvas(x, fill, fill_value, blur_sigma)
    rows = window_cover(height, patch_size, stride, dtype=x.dtype, device=x.device)
    cols = window_cover(width, patch_size, stride, dtype=x.dtype, device=x.device)
    n_cols = cols.shape[0]

    def occluded(sample_idx: torch.Tensor, point_idx: torch.Tensor) -> torch.Tensor:
        window = rows[point_idx // n_cols].unsqueeze(2) * cols[point_idx % n_cols].unsqueeze(1)
        window = window.unsqueeze(1)  # (k, 1, H, W): every channel
        return x[sample_idx] * (1 - window) + canvas[sample_idx] * window

    original = evaluate_outputs(
        model, target, n_points=1, points=lambda sample_idx, _: x[sample_idx], max_batch=max_batch
    ).target_logits
    covered = evaluate_outputs(
        model, target, n_points=rows.shape[0] * n_cols, points=occluded, max_batch=max_batch
    ).target_logits
    drops = (original - covered).view(n, rows.shape[0], n_cols)
    counts = rows.sum(dim=0).unsqueeze(1) * cols.sum(dim=0).unsqueeze(0)
    maps = torch.einsum("ih,nij,jw->nhw", rows, drops, cols) / counts
    return Attribution(maps=maps, diagnostics={"window_drops": drops})
