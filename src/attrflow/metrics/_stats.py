"""Row-wise rank statistics shared by the metrics (ranks from one sort per row, ties averaged).

One implementation for MuFidelity's Spearman variant, path monotonicity, Riemann stability and
the attack metrics: O(P log P) per row, deterministic on every device (no atomics).
"""

from __future__ import annotations

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks 1..P of (n, P) values, ties sharing their average rank (float64).

    One stable sort per row; a tie group spanning sorted positions [first, last] gets
    (first + last) / 2, found with a running max of group starts and a reversed running min of
    group ends.
    """
    n, p = values.shape
    ordered, order = torch.sort(values.double(), dim=1, stable=True)
    position = torch.arange(1, p + 1, dtype=torch.float64, device=values.device).expand(n, p)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.cummax(torch.where(starts, position, 0.0), dim=1).values
    last_reversed = torch.where(ends, position, float(p + 1)).flip(1)
    last = torch.cummin(last_reversed, dim=1).values.flip(1)
    return torch.empty_like(first).scatter_(1, order, (first + last) / 2)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise Spearman ρ of (n, P) tensors (0 where undefined), and a mask of the rows where
    either side is constant, for which ρ is undefined."""
    ra, rb = average_ranks(a), average_ranks(b)
    da, db = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    sa, sb = da.norm(dim=1), db.norm(dim=1)
    constant = (sa == 0) | (sb == 0)
    rho = (da * db).sum(dim=1) / torch.where(constant, torch.ones_like(sa), sa * sb)
    rho = rho.clamp(-1.0, 1.0)  # |ρ| may exceed 1 by an ulp
    return torch.where(constant, torch.zeros_like(rho), rho), constant
