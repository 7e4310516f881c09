"""Shared machinery of the removal metrics: fill canvases, pixel rankings, batched perturbation.

Deletion, insertion, MuFidelity, KPM/KNM/KAM/RAM, Sensitivity-N and ROAR all do the same three
things: build a *canvas* that removed pixels are replaced with (black, a blurred copy, the mean
colour), decide per perturbed copy which pixels show the canvas, and run every perturbed copy of
every sample through the model. This module does those three things once, in batched torch on the
model's device: perturbed copies are materialised only a chunk of at most ``max_batch`` inputs at a
time, so a 224² image with 10 pixels per step (5 018 copies) never needs 5 018 images in memory.

A pixel is removed with all of its channels: maps with channels are summed per pixel first
(`MetricInputs.maps2d`), because a removal operator acts on pixels, not on colour planes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from attrflow.metrics.base import NAN, OK, MetricInputs, MetricOutput
from attrflow.params import Doc, Ge, Gt, Odd
from attrflow.metrics.ranking import ORDERS, pixel_positions, rank_pixels, ranking_scores  # noqa: F401 (the removal metrics' API)

# Parameters several removal metrics share, declared once (`attrflow.params`): their signatures
# annotate with these.
Fill = Annotated[
    Literal["black", "blur", "mean"],
    Doc("what removed pixels show: black, the image blurred (blur_kernel, blur_sigma) or its mean colour"),
]
BlurKernel = Annotated[int, Ge(1), Odd(), Doc("taps of the Gaussian blur (odd, so the kernel has a centre)")]
BlurSigma = Annotated[float, Gt(0), Doc("σ of the Gaussian blur, in pixels")]
TargetOutput = Annotated[Literal["prob", "logit"], Doc("the target's softmax probability or its logit")]
Subsets = Annotated[int, Ge(2), Doc("random subsets per sample (at least two, to correlate)")]
FILLS = get_args(get_args(Fill)[0])
OUTPUTS = ("prob", "logit", "top1")
NONFINITE_MAP = "attribution map has non-finite values"
CONSTANT_MAP = "attribution map is constant: it ranks no pixel above another"


def gaussian_kernel1d(size: int, sigma: float, *, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps exp(-t²/2σ²), t = -(size//2) … size//2 (as OpenCV, torchvision)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd integer, got {size}")
    if sigma <= 0:
        raise ValueError(f"blur_sigma must be positive, got {sigma}")
    t = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    taps = torch.exp(-(t**2) / (2.0 * float(sigma) ** 2))
    return taps / taps.sum()


def _fitted_kernel_size(kernel_size: int, side: int) -> int:
    """Largest odd size <= kernel_size whose reflect padding (size//2) fits inside `side` pixels.

    Reflect padding cannot reach further than side - 1 pixels, so on small images (e.g. a 51-tap
    KPM blur on 16² inputs) the kernel is truncated to 2·side - 1 taps; sigma is kept.
    """
    return min(kernel_size, 2 * side - 1)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) images with reflect padding (OpenCV's REFLECT_101)."""
    n, c, h, w = images.shape
    full = gaussian_kernel1d(kernel_size, sigma, device=images.device)
    out = images.reshape(n * c, 1, h, w)
    for dim, side in ((2, h), (3, w)):
        size = _fitted_kernel_size(kernel_size, side)
        low = (kernel_size - size) // 2
        taps = full[low : low + size]
        taps = (taps / taps.sum()).to(images.dtype)
        pad = size // 2
        if dim == 2:
            weight, padding = taps.view(1, 1, size, 1), (0, 0, pad, pad)
        else:
            weight, padding = taps.view(1, 1, 1, size), (pad, pad, 0, 0)
        out = F.conv2d(F.pad(out, padding, mode="reflect") if pad else out, weight)
    return out.reshape(n, c, h, w)


def fill_image(
    images: torch.Tensor, fill: str, *, blur_kernel: int = 29, blur_sigma: float = 15.0
) -> torch.Tensor:
    """The canvas that removed pixels are replaced with, same shape as `images`.

    * ``black``: zeros (pixel space, so black whatever the model's normalisation);
    * ``blur``: a Gaussian-blurred copy of each image (Zhang et al., 2021 insertion: 29 taps, σ = 15;
      Hesse et al., 2021 KPM/KNM/KAM/RAM: 51 taps, σ = 41);
    * ``mean``: each image's mean colour, per channel.
    """
    if fill == "black":
        return torch.zeros_like(images)
    if fill == "blur":
        return gaussian_blur(images, blur_kernel, blur_sigma)
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    raise ValueError(f"unknown fill {fill!r}; use one of {FILLS}")


def step_counts(num_pixels: int, steps: int, pixels_per_step: int | None) -> torch.Tensor:
    """How many pixels are removed (or inserted) at each point of a curve, 0 first, all last.

    With `pixels_per_step` p: 0, p, 2p, …, all (ceil(HW/p) + 1 points, the last step may be
    partial). Otherwise `steps` equal fractions: round(k·HW/steps) for k = 0 … steps.
    """
    if pixels_per_step is not None:
        points = -(-num_pixels // pixels_per_step) + 1
        return torch.clamp(torch.arange(points) * pixels_per_step, max=num_pixels)
    k = torch.arange(steps + 1)
    return (2 * k * num_pixels + steps) // (2 * steps)  # round half up, in integers


def select_output(logits: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """The target's softmax probability or logit, or top-1 correctness (1.0 when the argmax is the
    target, ties going to the lower class index), in float64.

    A model with a single output (a regression model's score) has no class probability — its
    softmax is 1 whatever the input — and no top-1 choice: those are refused, naming ``logit``.
    """
    logits = logits.double()
    if logits.shape[1] == 1 and output in ("prob", "top1"):
        raise ValueError(
            f"output {output!r} needs class probabilities, but the model has a single output (a "
            "regression model's score); set the metric's output: logit to score that output"
        )
    if output == "top1":
        return (logits.argmax(dim=1) == targets.view(-1).long()).double()
    if output == "prob":
        logits = logits.softmax(dim=1)
    elif output != "logit":
        raise ValueError(f"unknown output {output!r}; use one of {OUTPUTS}")
    return logits.gather(1, targets.view(-1, 1).long()).squeeze(1)


@torch.no_grad()
def target_outputs(
    model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, output: str, max_batch: int
) -> torch.Tensor:
    """F_target(images), chunked to `max_batch` inputs per forward pass: (n,) float64."""
    parts = [
        select_output(model(images[i : i + max_batch]), targets[i : i + max_batch], output)
        for i in range(0, images.shape[0], max_batch)
    ]
    return torch.cat(parts) if parts else images.new_zeros(0, dtype=torch.float64)


ReplaceMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CopyCanvas = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def masked_outputs(
    model: torch.nn.Module,
    images: torch.Tensor,
    canvas: torch.Tensor | CopyCanvas,
    targets: torch.Tensor,
    replace_mask: ReplaceMask,
    variants: int,
    *,
    output: str,
    max_batch: int,
) -> torch.Tensor:
    """F_target of `variants` perturbed copies of every image: (n, variants) float64.

    Copy (i, v) shows ``canvas[i]`` where ``replace_mask(sample_idx, variant_idx)`` is True and
    ``images[i]`` elsewhere; `replace_mask` receives two (b,) index tensors and returns (b, H, W)
    bool. A canvas that differs between the copies of one image (DiffID fills with the mean of
    the pixels each copy preserves) is given as a function of the same two index tensors that
    returns a tensor broadcastable to (b, C, H, W). All n·variants copies go through the model in
    chunks of at most `max_batch`, so the result does not depend on `max_batch`.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    n = images.shape[0]
    flat = torch.empty(n * variants, dtype=torch.float64, device=images.device)
    for start in range(0, n * variants, max_batch):
        pair = torch.arange(start, min(start + max_batch, n * variants), device=images.device)
        sample, variant = pair // variants, pair % variants
        mask = replace_mask(sample, variant).unsqueeze(1)
        fill = canvas(sample, variant) if callable(canvas) else canvas[sample]
        copies = torch.where(mask, fill, images[sample])
        flat[start : start + pair.shape[0]] = select_output(model(copies), targets[sample], output)
    return flat.view(n, variants)


def checked_maps(inputs: MetricInputs, metric: str) -> torch.Tensor:
    """The (n, H, W) maps, after checking they match the images; errors name the method."""
    maps = inputs.maps2d
    if maps.dim() != 3 or maps.shape[0] != inputs.n or maps.shape[1:] != inputs.images.shape[2:]:
        raise ValueError(
            f"{metric}: maps of method {inputs.method!r} have shape {tuple(inputs.maps.shape)}, "
            f"expected ({inputs.n}, H, W) or ({inputs.n}, C, H, W) matching images "
            f"{tuple(inputs.images.shape)}"
        )
    return maps


def finite_maps(inputs: MetricInputs, metric: str) -> tuple[torch.Tensor, list[bool]]:
    """The checked maps with non-finite entries zeroed, and which samples were all finite."""
    maps = checked_maps(inputs, metric)
    finite = torch.isfinite(maps)
    return torch.where(finite, maps, torch.zeros_like(maps)), finite.flatten(1).all(dim=1).tolist()


def constant_maps(scores: torch.Tensor) -> torch.Tensor:
    """(n,) bool: maps whose every pixel has the same (finite) score, so no ranking exists."""
    flat = scores.reshape(scores.shape[0], -1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def trapezoid_auc(curves: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Area under each row of `curves` (n, K) over abscissae `x` (K,), by the trapezoid rule."""
    x = x.to(curves)
    return ((curves[:, 1:] + curves[:, :-1]) * 0.5 * (x[1:] - x[:-1])).sum(dim=1)


def with_reasons(
    values: np.ndarray, curves: list[np.ndarray | None] | None, reasons: list[str | None]
) -> MetricOutput:
    """A MetricOutput whose samples with a reason are NaN with that reason (curve dropped).

    Samples without a reason are ok when finite, else NaN with the default reason.
    """
    values = np.array(values, dtype=np.float64)
    curves = None if curves is None else list(curves)
    status: list[str] = []
    why: list[str | None] = []
    for i, reason in enumerate(reasons):
        if reason is not None:
            values[i] = np.nan
            if curves is not None:
                curves[i] = None
        finite = bool(np.isfinite(values[i]))
        status.append(OK if finite else NAN)
        why.append(None if finite else (reason or "value is not finite"))
    return MetricOutput(values, curves, status, why)
