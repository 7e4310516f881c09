"""Which pixels a removal removes first: the ranking shared by the removal metrics and ROAR.

Deletion, insertion, KPM/KNM/KAM/RAM (`attrflow.metrics._removal`) and ROAR's masking
(`attrflow.roar.masking`) rank pixels the same way: by the signed map or its magnitude
(`ranking_scores`), highest first, ties in row-major order (`rank_pixels`), so a map removes the
same pixels in every metric, on every device and for every batch size.
"""

from __future__ import annotations

import torch

ORDERS = ("signed", "absolute")


def rank_pixels(scores: torch.Tensor, *, descending: bool = True) -> torch.Tensor:
    """(n, H, W) scores → (n, H·W) flat pixel indices, most important first.

    Ties keep the row-major pixel order (a stable sort), so equal scores always remove the same
    pixels in the same order, on every device and for every batch size.
    """
    flat = scores.reshape(scores.shape[0], -1)
    return torch.sort(flat, dim=1, descending=descending, stable=True).indices


def pixel_positions(scores: torch.Tensor, *, descending: bool = True) -> torch.Tensor:
    """(n, H·W): where each pixel stands in `rank_pixels` order (0 = removed first).

    "The first k pixels" is then simply ``positions < k``, which builds the mask of any step
    for a whole chunk of copies in one comparison.
    """
    order = rank_pixels(scores, descending=descending)
    positions = torch.empty_like(order)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return positions.scatter_(1, order, ranks)


def ranking_scores(maps2d: torch.Tensor, order: str) -> torch.Tensor:
    """The value pixels are ranked by: the signed map, or its magnitude."""
    if order == "signed":
        return maps2d
    if order == "absolute":
        return maps2d.abs()
    raise ValueError(f"unknown order {order!r}; use one of {ORDERS}")
