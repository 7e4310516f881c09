"""ImageNet-C corruptions for the baseline-bias probes (UNI (Choi et al., 2024) Sec. 3.2): digital, blur and noise families.

Each static IG baseline carries a bias (UNI (Choi et al., 2024) Sec. 3.2): a black baseline calls dark pixels unimportant
(colour bias), a blurred one ignores what blur removes (texture), a noised one what noise hides
(frequency). UNI probes these with ImageNet-C's "digital" (brightness, saturate), "blur" (Gaussian,
defocus) and "noise" (Gaussian, shot) corruptions. They are written here from the definitions of
Hendrycks & Dietterich (ICLR 2019), severities 1–5, with the constants of their ImageNet-C
generator, on float images in [0, 1] (N, C, H, W):

* ``brightness``: HSV value V ← clip(V + c), c = .1 … .5. With hue and saturation fixed every
  channel is proportional to V, so the image is scaled by V'/V (black turns grey V').
* ``saturate``: HSV saturation S ← clip(S·a + b) with (a, b) = (.3, 0), (.1, 0), (2, 0), (5, .1),
  (20, .2). With hue and value fixed, V − x scales by S'/S; a grey pixel has hue 0 (red), as in
  the reference conversion, so b > 0 tints greys red. Needs RGB input. Config accepts
  ``saturation`` for it too.
* ``gaussian_blur``: Gaussian filter per channel, σ = 1, 2, 3, 4, 6, truncated at 4σ, edges
  repeated (the reference's ``nearest`` mode).
* ``defocus_blur``: a disk of radius r = 3, 4, 6, 8, 10 (pixels whose centre is within r),
  normalised and anti-aliased by a Gaussian of σ = .1, .5, .5, .5, .5 (3×3 window; 5×5 beyond
  r = 8), convolved per channel with mirrored edges (reflect-101).
* ``gaussian_noise``: x + 𝒩(0, c²), c = .08, .12, .18, .26, .38.
* ``shot_noise``: Poisson(λx)/λ, λ = 60, 25, 12, 5, 3.

Every output is clipped to [0, 1].

Image size. The blur constants are in pixels of a 224-pixel image. For another size they are
scaled by ``min(H, W) / 224`` so that a blur removes the same share of the image's frequencies,
with a floor that keeps severity 1 a visible blur on small images: σ₁ ≥ 0.4 px (CIFAR-10-C's
severity-1 Gaussian blur) and r₁ ≥ 1 px (a smaller disk is a single pixel, no blur). The floor
raises the scale factor, not single entries, so the five severities keep the table's ratios and
stay strictly ordered. On 224-pixel images the constants are exactly the table's. The anti-alias
σ is in kernel pixels and is not scaled.

Randomness. Noise for a sample comes from a generator keyed by (seed, corruption, stream,
sample id) — never by its position — so a sample's corrupted pixels do not depend on which
other samples are corrupted with it (datasets stay prefix-stable). The key leaves out the
severity: the five severities of one image share their underlying draws (common random
numbers), so a severity curve compares noise levels, not noise patterns.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attrflow.data.corruption_catalog import (
    ALIASES,
    CORRUPTIONS,
    FAMILIES,
    SEVERITIES,
    SEVERITY_TABLES,
    canonical_corruption,
    check_severity,
    family_of,
)

__all__ = [
    "ALIASES",
    "CORRUPTIONS",
    "FAMILIES",
    "SEVERITIES",
    "SEVERITY_TABLES",
    "canonical_corruption",
    "corrupt",
    "corruption_parameters",
    "disk_kernel",
    "family_of",
    "sample_generator",
    "spatial_scale",
]

REFERENCE_SIZE = 224  # the image side the blur constants are given for
MIN_BLUR_SIGMA = 0.4  # px: severity-1 Gaussian blur on small images (CIFAR-10-C's value)
MIN_DISK_RADIUS = 1.0  # px: severity-1 defocus disk on small images
GAUSSIAN_TRUNCATE = 4.0  # the Gaussian filter's window reaches truncate·σ
CHUNK = 64  # images corrupted at once: bounds the memory of the torch intermediates


def spatial_scale(height: int, width: int, severity1_value: float, floor: float) -> float:
    """Factor for pixel constants: size / 224, raised so that severity 1 reaches `floor` px."""
    return max(min(height, width) / REFERENCE_SIZE, floor / severity1_value)


def corruption_parameters(corruption: str, severity: int, height: int, width: int) -> dict[str, float]:
    """The constants `corrupt` uses for this image size, for provenance and tests."""
    name = canonical_corruption(corruption)
    check_severity(severity)
    value = SEVERITY_TABLES[name][severity - 1]
    if name == "gaussian_blur":
        table = SEVERITY_TABLES[name]
        return {"sigma": value * spatial_scale(height, width, table[0], MIN_BLUR_SIGMA)}
    if name == "defocus_blur":
        first_radius = SEVERITY_TABLES[name][0][0]
        scale = spatial_scale(height, width, first_radius, MIN_DISK_RADIUS)
        return {"radius": value[0] * scale, "alias_sigma": value[1]}
    if name == "saturate":
        return {"scale": value[0], "shift": value[1]}
    key = {"brightness": "shift", "gaussian_noise": "std", "shot_noise": "rate"}[name]
    return {key: value}


def corrupt(
    images: np.ndarray,
    corruption: str,
    severity: int,
    *,
    ids: Sequence[str],
    seed: int,
    stream: str = "eval",
) -> np.ndarray:
    """Corrupted copies of `images` (N, C, H, W) in [0, 1], as float32 in [0, 1].

    `ids` (one per image) and `stream` (e.g. the split) key the noise generators; see the module
    docstring. Deterministic for fixed (seed, stream, ids).
    """
    name = canonical_corruption(corruption)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if len(ids) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(ids)} ids")
    params = corruption_parameters(name, severity, *images.shape[2:])
    if name in ("gaussian_noise", "shot_noise"):
        return _noise(images, name, params, ids, seed, stream)
    if name == "saturate" and images.shape[1] != 3:
        raise ValueError(f"saturate needs RGB images (3 channels), got {images.shape[1]}")
    transform = {
        "brightness": _brightness,
        "saturate": _saturate,
        "gaussian_blur": _gaussian_blur,
        "defocus_blur": _defocus_blur,
    }[name]
    out = np.empty_like(images)
    with torch.no_grad():
        for start in range(0, images.shape[0], CHUNK):
            chunk = torch.from_numpy(images[start : start + CHUNK])
            out[start : start + CHUNK] = transform(chunk, **params).clamp(0.0, 1.0).numpy()
    return out


# ------------------------------------------------------------------------------------- digital
def _brightness(x: torch.Tensor, shift: float) -> torch.Tensor:
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(0.0, 1.0)
    ratio = brighter / value.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(value > 0, x * ratio, brighter.expand_as(x))


def _saturate(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    value = x.amax(dim=1, keepdim=True)
    spread = value - x.amin(dim=1, keepdim=True)  # V·S
    saturation = torch.where(value > 0, spread / value.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
    new_saturation = (saturation * scale + shift).clamp(0.0, 1.0)
    coloured = value - (new_saturation / saturation.clamp_min(torch.finfo(x.dtype).tiny)) * (value - x)
    # Grey pixels have hue 0 (red): red keeps V, green and blue become V(1 − S').
    red_weight = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype).view(1, 3, 1, 1)
    grey = value * (1.0 - new_saturation * red_weight)
    return torch.where(spread > 0, coloured, grey)


# ------------------------------------------------------------------------------------- blur
def _gaussian_weights(sigma: float, radius: int, dtype: torch.dtype) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _separable(x: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Filter every channel of x (N, C, H, W) along H then W with the 1-D `weights`."""
    channels = x.shape[1]
    radius = weights.numel() // 2
    vertical = weights.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    horizontal = weights.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), vertical, groups=channels)
    return F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), horizontal, groups=channels)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
    return _separable(x, _gaussian_weights(sigma, radius, x.dtype), mode="replicate")


def disk_kernel(radius: float, alias_sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The defocus kernel: a normalised disk of `radius` px, anti-aliased by a small Gaussian.

    As in the reference, the disk sits in a 17×17 window up to r = 8 (a 3×3 anti-alias window,
    mirrored at the window's edge) and in a (2⌈r⌉+1)² window with a 5×5 anti-alias window beyond;
    the all-zero border that the anti-alias cannot reach is trimmed.
    """
    half = 8 if radius <= 8 else math.ceil(radius)
    alias_radius = 1 if radius <= 8 else 2
    offsets = torch.arange(-half, half + 1, dtype=dtype)
    disk = ((offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2) <= radius**2).to(dtype)
    disk = disk / disk.sum()
    alias = _gaussian_weights(alias_sigma, alias_radius, dtype)
    kernel = _separable(disk[None, None], alias, mode="reflect")[0, 0]
    keep = min(half, math.ceil(radius) + alias_radius)
    return kernel[half - keep : half + keep + 1, half - keep : half + keep + 1]


def _defocus_blur(x: torch.Tensor, radius: float, alias_sigma: float) -> torch.Tensor:
    kernel = disk_kernel(radius, alias_sigma, x.dtype)
    half = kernel.shape[0] // 2
    if half >= min(x.shape[2:]):
        raise ValueError(f"defocus_blur: images of {tuple(x.shape[2:])} px are too small for a disk of radius {radius:.2f}")
    channels = x.shape[1]
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    return F.conv2d(padded, kernel.expand(channels, 1, -1, -1), groups=channels)


# ------------------------------------------------------------------------------------- noise
def sample_generator(seed: int, corruption: str, stream: str, sample_id: str) -> np.random.Generator:
    """The noise generator of one sample: depends on its id, never on its position."""
    key = "\x00".join([str(int(seed)), canonical_corruption(corruption), stream, str(sample_id)])
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _noise(
    images: np.ndarray, name: str, params: dict[str, float], ids: Sequence[str], seed: int, stream: str
) -> np.ndarray:
    out = np.empty_like(images)
    for i, sample_id in enumerate(ids):
        rng = sample_generator(seed, name, stream, sample_id)
        x = images[i].astype(np.float64)
        if name == "gaussian_noise":
            noisy = x + params["std"] * rng.standard_normal(x.shape)
        else:
            noisy = rng.poisson(x * params["rate"]) / params["rate"]
        out[i] = np.clip(noisy, 0.0, 1.0)
    return out
