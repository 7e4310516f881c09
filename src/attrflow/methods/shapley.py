"""Exact Shapley values of a coarse grid of super-pixels, by enumerating every coalition.

The players are the cells of a ``grid`` × ``grid`` partition of the image; a coalition S shows
the image's pixels in its cells and the baseline's everywhere else (removal to a baseline), and
its worth v(S) is the target logit. Each cell's Shapley value (Shapley, 1953) is

    φ_i = Σ_{S ⊆ N∖{i}} |S|! (P − |S| − 1)! / P! · (v(S ∪ {i}) − v(S)),      P = grid²,

computed exactly from all 2^P worths: no sampling, so it is a ground truth that sampling
explainers (KernelSHAP, LIME) and metrics can be checked against. It satisfies efficiency
(Σ φ = F(x) − F(baseline)), symmetry (interchangeable cells get equal values) and dummy (a cell
that never changes the worth gets 0) exactly, up to float rounding.

Maps are channel-free (n, H, W): each pixel carries its cell's value divided by the cell's pixel
count, so a map sums to F(x) − F(baseline) (the method claims completeness) and summing it over
a cell gives back φ. Diagnostics: ``shapley_values`` (n, grid, grid), ``baselines``,
``output_delta`` and ``completeness_residual``.

Cost per image: 2^P forward passes and no backward — 16 for 2×2, 512 for 3×3 and 65,536 for
4×4. Grids above 4×4 (2^25 = 33 million passes for 5×5) are refused by the parameter's bound
(`MAX_GRID`), in the config before any job and in `call_method`. Coalitions of all samples run in
chunks of ``max_batch`` model inputs, each built on the fly, so memory holds one chunk of
images plus the (n, 2^P) worth table (512 KiB per image for 4×4 in float64) whatever the grid.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from attrflow.methods._baselines import make_baseline
from attrflow.methods._batching import check_max_batch, evaluate_outputs, validate_batch
from attrflow.methods.superpixels import RemovedFill, grid_segments
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge, Le

MAX_GRID = 4
MAX_COALITIONS = 2 ** (MAX_GRID * MAX_GRID)  # 65,536: 4×4 cells


def check_grid(grid: int, height: int, width: int) -> int:
    """The grid side, or a ValueError when the images have fewer pixels a side than cells."""
    if grid > min(height, width):
        raise ValueError(
            f"exact_shapley: parameter grid {grid} does not fit images of {height}×{width} pixels"
        )
    return grid


def shapley_from_worths(worths: torch.Tensor, players: int) -> torch.Tensor:
    """(n, players) exact Shapley values from the (n, 2^players) worth table.

    Coalition c contains player i iff bit i of c is set. Computed in float64.
    """
    if worths.shape[1] != 2**players:
        raise ValueError(f"a worth table of {players} players has 2^{players} columns, not {worths.shape[1]}")
    worths = worths.double()
    codes = torch.arange(2**players, device=worths.device)
    sizes = torch.zeros_like(codes)
    for bit in range(players):
        sizes += (codes >> bit) & 1
    weights = torch.tensor(
        [math.factorial(s) * math.factorial(players - s - 1) / math.factorial(players) for s in range(players)],
        dtype=torch.float64, device=worths.device,
    )  # fmt: skip
    values = torch.empty(worths.shape[0], players, dtype=torch.float64, device=worths.device)
    for i in range(players):
        without = codes[((codes >> i) & 1) == 0]
        gains = worths[:, without | (1 << i)] - worths[:, without]
        values[:, i] = gains @ weights[sizes[without]]
    return values


@register_method("exact_shapley", channel_free=True, completeness=True)
def exact_shapley(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    grid: Annotated[
        int,
        Ge(1),
        Le(MAX_GRID),
        Doc(
            "side of the grid of super-pixels (players): grid² cells, 2^(grid²) coalitions per "
            "image; at most 4 (65,536 coalitions: beyond, use kernel_shap or lime)"
        ),
    ] = 4,
    baseline: Annotated[
        RemovedFill,
        Doc(
            "what a removed cell shows (pixel space): black, white, the image's mean colour or the "
            "image blurred with blur_sigma"
        ),
    ] = "black",
    blur_sigma: Annotated[float, Ge(0), Doc("Gaussian blur σ in pixels for baseline 'blur'")] = 10.0,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(n, H, W) exact Shapley values of the grid cells, spread evenly over each cell's pixels."""
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    n, _, height, width = x.shape
    side = check_grid(grid, height, width)
    players = side * side
    cells = grid_segments(height, width, side, device=x.device)  # (H, W)
    reference = make_baseline(model, x, baseline, blur_sigma=blur_sigma, method="exact_shapley")
    bits = 2 ** torch.arange(players, device=x.device)

    def coalition_images(sample_idx: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        present = (code.unsqueeze(1) & bits) != 0  # (k, P)
        shown = present[:, cells].unsqueeze(1)  # (k, 1, H, W)
        return torch.where(shown, x[sample_idx], reference[sample_idx])

    worths = evaluate_outputs(
        model, target, n_points=2**players, points=coalition_images, max_batch=max_batch
    ).target_logits
    values = shapley_from_worths(worths, players)  # (n, P) float64
    sizes = torch.bincount(cells.flatten(), minlength=players).to(torch.float64)
    maps = (values / sizes)[:, cells].to(x.dtype)
    output_delta = worths[:, -1].double() - worths[:, 0].double()
    return Attribution(
        maps=maps,
        diagnostics={
            "shapley_values": values.view(n, side, side),
            "baselines": reference,
            "output_delta": output_delta,
            "completeness_residual": (values.sum(dim=1) - output_delta).abs(),
        },
    )
