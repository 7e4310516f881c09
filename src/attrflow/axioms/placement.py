"""Where patches go, and the images of every coalition of patches.

"Adding" a feature overwrites its box on the reference background; "removing" it restores the
background there. Placements are random and redrawn every iteration so that
the features do not depend on where they are (Khakzar et al., 2022 Sec. 3.5). Two patches never overlap: as in
the authors' code, a separation line ``sep`` is drawn along one
axis, the first patch lies before it and the second after it, the other coordinate is free, and
the axis and the order are swapped with probability ½ each.

Boxes are (top, left) corners of ``patch × patch`` squares; pasting is a differentiable gather,
so gradients reach every candidate's decoder in one batched call.
"""

from __future__ import annotations

import torch

BACKGROUND_MEAN = 0.5
BACKGROUND_STD = 0.1


def _uniform_int(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Integers uniform in [low, high] (inclusive), element-wise."""
    u = torch.rand(low.shape, generator=generator, device=low.device)
    return (low + torch.floor(u * (high - low + 1))).long().clamp_max(high)


def random_boxes(n: int, patches: int, size: int, patch: int, generator: torch.Generator) -> torch.Tensor:
    """(n, patches, 2) random non-overlapping (top, left) corners in a ``size`` × ``size`` image."""
    if patches not in (1, 2):
        raise ValueError(f"placement supports one or two patches, not {patches}")
    if (patches == 2 and 2 * patch > size) or patch > size:
        raise ValueError(f"{patches} non-overlapping {patch}px patches do not fit a {size}px image")
    dev = generator.device
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    last = torch.full((n,), size - patch, dtype=torch.long, device=dev)
    if patches == 1:
        return torch.stack([_uniform_int(zeros, last, generator), _uniform_int(zeros, last, generator)], 1)[:, None]
    sep = _uniform_int(torch.full_like(zeros, patch), last, generator)
    along_first = _uniform_int(zeros, sep - patch, generator)
    along_second = _uniform_int(sep, last, generator)
    across = torch.stack([_uniform_int(zeros, last, generator), _uniform_int(zeros, last, generator)], 1)
    first = torch.stack([along_first, across[:, 0]], 1)  # (along, across)
    second = torch.stack([along_second, across[:, 1]], 1)
    boxes = torch.stack([first, second], 1)  # (n, 2, 2) in (along, across) order
    swap_axes = torch.rand(n, generator=generator, device=dev) < 0.5
    boxes = torch.where(swap_axes[:, None, None], boxes.flip(2), boxes)
    swap_order = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(swap_order[:, None, None], boxes.flip(1), boxes)


def random_background(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """The reference: clamp(N(0.5, 0.1²), 0, 1) per pixel."""
    noise = torch.randn((n, channels, size, size), generator=generator, device=generator.device)
    return (BACKGROUND_MEAN + BACKGROUND_STD * noise).clamp(0.0, 1.0)


def box_masks(boxes: torch.Tensor, size: int, patch: int) -> torch.Tensor:
    """(n, patches, size, size) bool: True inside each patch's box."""
    coords = torch.arange(size, device=boxes.device)
    rows = (coords >= boxes[..., 0, None]) & (coords < boxes[..., 0, None] + patch)  # (n, k, size)
    cols = (coords >= boxes[..., 1, None]) & (coords < boxes[..., 1, None] + patch)
    return rows[..., :, None] & cols[..., None, :]


def place(patch_pixels: torch.Tensor, corner: torch.Tensor, size: int) -> torch.Tensor:
    """(n, C, p, p) patches on an (n, C, size, size) canvas at (n, 2) corners (zero elsewhere)."""
    n, _, p, _ = patch_pixels.shape
    coords = torch.arange(size, device=corner.device)
    rows = (coords[None] - corner[:, 0:1]).clamp(0, p - 1)  # (n, size)
    cols = (coords[None] - corner[:, 1:2]).clamp(0, p - 1)
    batch = torch.arange(n, device=corner.device)[:, None, None]
    canvas = patch_pixels.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (n, size, size, C)
    return canvas.permute(0, 3, 1, 2)


def compose(
    background: torch.Tensor, patches: list[torch.Tensor], boxes: torch.Tensor, coalition: tuple[int, ...]
) -> torch.Tensor:
    """The background with the patches of ``coalition`` pasted in their boxes.

    ``patches[i]`` is (n, C, p, p); the caller decides which of them carry gradients (detached
    patches make one patch's loss blind to the others, as each minimisation in Eq. 2–7 runs over
    one patch only).
    """
    size, p = background.shape[-1], patches[0].shape[-1] if patches else 0
    image = background
    for i in coalition:
        mask = box_masks(boxes[:, i : i + 1], size, p)[:, 0, None].to(background.dtype)  # (n, 1, H, W)
        image = image * (1 - mask) + place(patches[i], boxes[:, i], size) * mask
    return image


def coalitions(patches: int) -> list[tuple[int, ...]]:
    """Every subset of the patches, smallest first: [(), (0,), (1,), (0, 1)] for two."""
    subsets = [tuple(i for i in range(patches) if bits >> i & 1) for bits in range(2**patches)]
    return sorted(subsets, key=lambda s: (len(s), s))
