"""Reference images x' for path methods, and the Gaussian blur that BlurIG and blurred baselines share.

Baselines (n, C, H, W) in pixel space [0, 1], one per sample:

* ``black`` 0 and ``white`` 1;
* ``uniform``: i.i.d. U[0, 1) per element, independent of x — Sturmfels et al. (Distill 2020),
  cited by UNI (Choi et al., 2024) for its "uniformly noised" baseline, draw uniformly over the valid pixel range;
* ``gaussian``: clip(x + N(0, noise_sigma²), 0, 1) per element — the "gaussian noised image" of
  UNI (Choi et al., 2024) Sec. 3.1 (after Sturmfels et al.: noise centred on the input, clipped to the valid range).
  Clipping keeps the baseline an image the model was built for; it makes the noise slightly
  non-Gaussian near 0 and 1, which is why ``noise_sigma`` is best kept well below 0.5;
* ``blur``: x blurred by a Gaussian of ``blur_sigma`` pixels (``reflect`` padding, so a blurred
  baseline keeps the image's brightness at its borders: it removes texture, not colour);
* ``mean``: each image's mean colour (one value per channel);
* ``origin``: the X-DNN's homogeneity origin (refused with `MethodNotApplicable` elsewhere);
* ``file``: one (C, H, W) or (1, C, H, W) image read from ``baseline_file`` (.npy or
  .safetensors), shared by every sample.

Noise baselines draw all n samples' noise in one call of the injected generator, so a sample's
baseline depends on the generator and its position in the batch, never on ``max_batch``.

**Blur.** The Gaussian is scipy.ndimage's (PAIR's BlurIG calls ``scipy.ndimage.gaussian_filter``):
taps exp(−t²/2σ²) for |t| ≤ ⌊4σ + 0.5⌋, normalised over that support, applied separably over H
and W (never across channels); σ = 0 is the identity. A separable blur with zero (``constant``)
or ``reflect`` padding is linear in each axis, so it is a pair of (H, H) and (W, W) matrices:
blur(x) = K_H · x · K_Wᵀ. That form runs any number of different σ in one batched matmul on the
device, handles kernels wider than the image exactly (σ = 50 on a 64-pixel image), and lets
BlurIG difference two blurs in float64 kernel space instead of subtracting blurred images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from attrflow.methods.base import MethodNotApplicable

# The pixel-space references x' a path method may start from, declared once: methods annotate
# their `baseline` parameter with `Baseline`.
Baseline = Literal["black", "white", "uniform", "gaussian", "blur", "mean", "origin", "file"]
BASELINES = get_args(Baseline)
PADDINGS = ("constant", "reflect")
TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: taps out to ⌊4σ + 0.5⌋


def blur_radius(sigma: float) -> int:
    """Half-width of scipy's truncated Gaussian kernel for ``sigma``."""
    return int(TRUNCATE * sigma + 0.5)


def _normalised_taps(sigmas: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Gaussian weights (k, *offsets.shape) at integer ``offsets``, zero beyond each σ's radius,
    normalised over the full truncated support (k,) — scipy's kernel, evaluated anywhere."""
    radius = torch.floor(TRUNCATE * sigmas + 0.5)
    widest = int(radius.max()) if sigmas.numel() else 0
    support = torch.arange(-widest, widest + 1, dtype=sigmas.dtype, device=sigmas.device)
    safe = sigmas.clamp_min(1e-12).view(-1, 1)
    inside = support.abs().view(1, -1) <= radius.view(-1, 1)
    norm = (torch.exp(-0.5 * (support / safe) ** 2) * inside).sum(dim=1)
    shape = (-1,) + (1,) * offsets.dim()
    safe, radius, norm = safe.view(shape), radius.view(shape), norm.view(shape)
    taps = torch.exp(-0.5 * (offsets / safe) ** 2) * (offsets.abs() <= radius)
    return taps / norm


def gaussian_blur_matrices(
    sigmas: torch.Tensor, size: int, padding: str = "constant"
) -> torch.Tensor:
    """(k, size, size) matrices K with blur_1d(v) = K @ v along one axis, one per σ in ``sigmas``.

    Built in ``sigmas``' dtype and device (pass float64: BlurIG differences these matrices).
    ``constant`` pads with zeros (scipy mode='constant', cval=0: large σ darkens the borders);
    ``reflect`` mirrors about the edge, d c b a | a b c d (scipy mode='reflect'), repeatedly when
    the kernel is wider than the image.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    sigmas = sigmas.reshape(-1)
    positions = torch.arange(size, dtype=sigmas.dtype, device=sigmas.device)
    if padding == "constant":
        offsets = positions.view(-1, 1) - positions.view(1, -1)
        return _normalised_taps(sigmas, offsets)
    # reflect: out[i] = Σ_t w(t) · v[reflect(i + t)]; several taps may land on one pixel.
    widest = blur_radius(float(sigmas.max())) if sigmas.numel() else 0
    support = torch.arange(-widest, widest + 1, device=sigmas.device)
    weights = _normalised_taps(sigmas, support.to(sigmas.dtype))  # (k, taps)
    source = (torch.arange(size, device=sigmas.device).view(-1, 1) + support.view(1, -1)) % (
        2 * size
    )
    source = torch.where(source >= size, 2 * size - 1 - source, source)  # (size, taps)
    matrices = torch.zeros((sigmas.shape[0], size, size), dtype=sigmas.dtype)
    index = source.cpu().unsqueeze(0).expand(sigmas.shape[0], -1, -1)
    values = weights.cpu().unsqueeze(1).expand(-1, size, -1)
    # scatter_add on the CPU: deterministic summation order (CUDA's uses atomics)
    matrices.scatter_add_(2, index, values)
    return matrices.to(sigmas.device)


def apply_blur(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """K_H · image · K_Wᵀ per image: ``images`` (k, C, H, W), ``rows`` (k or 1, H, H), ``cols``
    (k or 1, W, W), already in the images' dtype and device."""
    return rows.unsqueeze(1) @ images @ cols.unsqueeze(1).transpose(-1, -2)


def gaussian_blur(images: torch.Tensor, sigma: float, padding: str = "constant") -> torch.Tensor:
    """Blur every image of (n, C, H, W) ``images`` with one σ (scipy's kernel, see module doc)."""
    height, width = images.shape[-2:]
    sigma_t = torch.tensor([float(sigma)], dtype=torch.float64, device=images.device)
    rows = gaussian_blur_matrices(sigma_t, height, padding).to(images.dtype)
    cols = rows if width == height else gaussian_blur_matrices(sigma_t, width, padding)
    return apply_blur(images, rows, cols.to(images.dtype))


def _draw(kind: str, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform or standard-normal noise shaped like ``like``, from ``generator`` (the global RNG
    when None), in one call so the draw does not depend on chunking."""
    device = generator.device if generator is not None else like.device
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _load_array(path: Path, parameter: str) -> torch.Tensor:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise ValueError(f"parameter {parameter}: cannot read {str(path)!r}: {err}") from None
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as err:
            raise ValueError(f"parameter {parameter}: cannot read {str(path)!r}: {err}") from None
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        if "baseline" in tensors:
            return tensors["baseline"]
        raise ValueError(
            f"parameter {parameter}: {str(path)!r} holds tensors {sorted(tensors)}; store one "
            f"tensor, or name the baseline 'baseline'"
        )
    raise ValueError(
        f"parameter {parameter}: {str(path)!r} must be a .npy or .safetensors file holding a "
        f"(C, H, W) or (1, C, H, W) image"
    )


def load_baseline_file(
    path: str, like: torch.Tensor, parameter: str = "baseline_file"
) -> torch.Tensor:
    """The (C, H, W) pixel-space image stored at ``path``, checked against ``like`` (n, C, H, W).

    Errors name the parameter and the file: a missing file, another format, a shape that does
    not match the inputs, non-finite values, or values outside [0, 1] (a baseline saved in the
    model's normalised space instead of pixel space).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"parameter {parameter}: file {str(file)!r} does not exist")
    array = _load_array(file, parameter)
    expected = tuple(like.shape[1:])
    if array.dim() == 4 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) != expected:
        raise ValueError(
            f"parameter {parameter}: {str(file)!r} holds shape {tuple(array.shape)}; the inputs "
            f"need (C, H, W) = {expected} or (1, C, H, W)"
        )
    if not array.dtype.is_floating_point:
        array = array.double()
    if not bool(torch.isfinite(array).all()):
        raise ValueError(f"parameter {parameter}: {str(file)!r} holds a non-finite value")
    if bool((array < 0).any() or (array > 1).any()):
        raise ValueError(
            f"parameter {parameter}: {str(file)!r} holds values in "
            f"[{float(array.min()):.4g}, {float(array.max()):.4g}]; baselines are pixel-space "
            f"images in [0, 1]"
        )
    return array.to(dtype=like.dtype, device=like.device)


def _check_nonnegative(value: float, parameter: str, *, positive: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"parameter {parameter} must be a finite number {bound}; got {value!r}")
    return float(value)


def make_baseline(
    model: torch.nn.Module,
    x: torch.Tensor,
    baseline: str,
    *,
    noise_sigma: float = 0.15,
    blur_sigma: float = 10.0,
    baseline_file: str | None = None,
    generator: torch.Generator | None = None,
    method: str = "integrated_gradients",
) -> torch.Tensor:
    """The reference image x' per sample, (n, C, H, W), in pixel space (see module doc).

    ``baseline_file`` is read only for ``baseline="file"`` and is refused with any other
    baseline (a path that is silently ignored is a misconfiguration). ``method`` names the
    caller in errors.
    """
    if baseline_file is not None and baseline != "file":
        raise ValueError(
            f"parameter baseline_file is set ({baseline_file!r}) but parameter baseline is "
            f"{baseline!r}; use baseline: file to read it"
        )
    if baseline == "black":
        return torch.zeros_like(x)
    if baseline == "white":
        return torch.ones_like(x)
    if baseline == "uniform":
        return _draw("uniform", x, generator)
    if baseline == "gaussian":
        sigma = _check_nonnegative(noise_sigma, "noise_sigma")
        return (x + sigma * _draw("normal", x, generator)).clamp_(0.0, 1.0)
    if baseline == "blur":
        return gaussian_blur(x, _check_nonnegative(blur_sigma, "blur_sigma"), padding="reflect")
    if baseline == "mean":  # each image's own mean colour
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    if baseline == "origin":
        origin = model.homogeneity_origin if getattr(model, "is_x_dnn", False) else None
        if origin is None:
            raise MethodNotApplicable(
                f"{method} with baseline 'origin' needs an X-DNN; model "
                f"{getattr(model, 'name', '')!r} has no homogeneity origin"
            )
        return origin.to(dtype=x.dtype, device=x.device).expand_as(x).contiguous()
    if baseline == "file":
        if baseline_file is None:
            raise ValueError("parameter baseline is 'file' but parameter baseline_file is not set")
        return load_baseline_file(baseline_file, x).expand_as(x).contiguous()
    raise ValueError(f"parameter baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")
