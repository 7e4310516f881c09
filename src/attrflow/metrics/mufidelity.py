"""MuFidelity (Bhatt et al. 2021; S0 §5.1; seed digest B.1).

    μ_F = corr_S ( Σ_{i∈S} A_i ,  F_c(x) − F_c(x with S filled) )

over random subsets S of a fixed size: the summed attribution of a subset ("predicted
importance") should track the output drop when that subset is removed ("actual influence").

What the seed leaves open, and what we choose:

* *Features.* Pixels are grouped into a `grid` × `grid` lattice of cells and subsets are drawn
  over cells, as Xplique's MuFidelity (which UNI's numbers come from) does with its
  `grid_size`; removing single pixels of a 224² image barely moves a CNN. `grid` equal to the
  image side makes every pixel its own cell. A cell is removed with all channels.
* *Subset size.* Fixed, round(`subset_fraction` · cells), as in Bhatt et al. and Quantus
  (Xplique instead drops each cell independently with that probability).
* *Correlation.* Pearson, as Bhatt et al. and Quantus (Xplique uses Spearman). S0 reports the
  absolute value ("attribution methods can yield strong positive or negative correlation"),
  hence `absolute=True` by default.
* *Baseline.* The fill canvas (black by default), output the softmax probability by default.

A correlation is undefined when either side does not vary over the subsets (a constant map, a
model the fill does not affect): such samples are NaN with the reason. `subset_fidelity` takes
explicit subsets, so Sensitivity-N and the Quantus conformance test reuse the same arithmetic.
"""

from __future__ import annotations

import torch

from attrflow.metrics._removal import (
    NONFINITE_MAP,
    checked_maps,
    fill_image,
    masked_outputs,
    target_outputs,
    with_reasons,
)
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric

CONSTANT_ATTRIBUTION = "the attribution sums do not vary over the subsets (correlation undefined)"
CONSTANT_OUTPUT = "the output drops do not vary over the subsets (correlation undefined)"


def grid_cells(height: int, width: int, grid: int, *, device: torch.device | None = None) -> torch.Tensor:
    """(H, W) long: the cell of each pixel in a grid × grid lattice of near-equal cells."""
    if grid < 1 or grid > min(height, width):
        raise ValueError(f"grid={grid} must be between 1 and the image side ({height}x{width})")
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    return rows[:, None] * grid + cols[None, :]


def draw_subsets(
    n: int, subsets: int, cells: int, size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, subsets, cells) bool: `size` distinct cells per subset, uniformly, from `generator`.

    Without a generator a fixed seed (0) is used, so a score never depends on global RNG state.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    keys = torch.rand(n, subsets, cells, generator=generator, device=generator.device)
    chosen = keys.argsort(dim=-1)[..., :size]
    return torch.zeros_like(keys, dtype=torch.bool).scatter_(-1, chosen, True)


def pearson(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise Pearson correlation of (n, S) tensors, with masks of rows where a or b is constant.

    "Constant" allows for float rounding: a spread below 1e-12 of the row's magnitude.
    """
    a, b = a.double(), b.double()
    da, db = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    sa, sb = da.norm(dim=1), db.norm(dim=1)
    flat_a = sa <= 1e-12 * a.abs().amax(dim=1) * a.shape[1] ** 0.5
    flat_b = sb <= 1e-12 * b.abs().amax(dim=1) * b.shape[1] ** 0.5
    corr = (da * db).sum(dim=1) / (sa * sb)
    return corr, flat_a, flat_b


def subset_fidelity(
    inputs: MetricInputs,
    cell_subsets: torch.Tensor,
    cells_of_pixels: torch.Tensor,
    *,
    metric: str,
    fill: str = "black",
    blur_kernel: int = 29,
    blur_sigma: float = 15.0,
    output: str = "prob",
    absolute: bool = True,
    max_batch: int = 256,
) -> MetricOutput:
    """Correlation of summed attribution and output drop over given subsets, per sample.

    `cell_subsets` (n, S, cells) bool says which cells each subset removes; `cells_of_pixels`
    (H, W) long maps pixels to cells. Curves hold nothing: the S pairs are not an ordered curve.
    """
    maps = checked_maps(inputs, metric)
    finite = torch.isfinite(maps)
    maps = torch.where(finite, maps, torch.zeros_like(maps))
    device = inputs.images.device
    cell_subsets = cell_subsets.to(device)
    cells_flat = cells_of_pixels.to(device).reshape(-1)
    n, count, cells = cell_subsets.shape
    h, w = maps.shape[1:]

    cell_sums = torch.zeros(n, cells, dtype=torch.float64, device=device)
    cell_sums.index_add_(1, cells_flat, maps.reshape(n, -1).double())
    attribution_sums = (cell_subsets.double() * cell_sums[:, None, :]).sum(dim=-1)

    def replace_mask(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        return cell_subsets[sample, variant][:, cells_flat].view(-1, h, w)

    canvas = fill_image(inputs.images, fill, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    clean = target_outputs(inputs.model, inputs.images, inputs.targets, output, max_batch)
    removed = masked_outputs(
        inputs.model,
        inputs.images,
        canvas,
        inputs.targets,
        replace_mask,
        count,
        output=output,
        max_batch=max_batch,
    )
    corr, flat_attribution, flat_output = pearson(attribution_sums, clean[:, None] - removed)
    if absolute:
        corr = corr.abs()
    reasons = [
        NONFINITE_MAP if not ok else CONSTANT_ATTRIBUTION if fa else CONSTANT_OUTPUT if fo else None
        for ok, fa, fo in zip(
            finite.flatten(1).all(dim=1).tolist(), flat_attribution.tolist(), flat_output.tolist()
        )
    ]
    return with_reasons(corr.cpu().numpy(), None, reasons)


@register_metric(
    "mufidelity",
    kind="map",
    direction="higher",
    params={
        "subsets": {"type": "integer", "minimum": 2, "default": 128},
        "subset_fraction": {
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "default": 0.2,
        },
        "grid": {"type": "integer", "minimum": 2, "default": 8},
        "fill": {"enum": ["black", "blur", "mean"], "default": "black"},
        "blur_kernel": {"type": "integer", "minimum": 1, "not": {"multipleOf": 2}, "default": 29},
        "blur_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 15.0},
        "output": {"enum": ["prob", "logit"], "default": "prob"},
        "absolute": {"type": "boolean", "default": True},
    },
)
def mufidelity(
    inputs: MetricInputs,
    *,
    subsets: int = 128,
    subset_fraction: float = 0.2,
    grid: int = 8,
    fill: str = "black",
    blur_kernel: int = 29,
    blur_sigma: float = 15.0,
    output: str = "prob",
    absolute: bool = True,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Pearson correlation, over `subsets` random subsets of round(`subset_fraction`·grid²) cells,
    between the subset's summed attribution and the output drop when it is filled (higher is better).

    `grid` = 1 is refused (one cell cannot form subsets that differ); `absolute` reports |corr|
    as S0 does. Subsets come from the injected `generator`, one independent draw per sample.
    """
    if subsets < 2:
        raise ValueError(f"mufidelity: subsets must be >= 2 to correlate, got {subsets}")
    if not 0.0 < subset_fraction < 1.0:
        raise ValueError(f"mufidelity: subset_fraction must lie in (0, 1), got {subset_fraction}")
    if grid < 2:
        raise ValueError(f"mufidelity: grid must be >= 2 (grid² cells to draw subsets from), got {grid}")
    h, w = inputs.images.shape[2:]
    cells_of_pixels = grid_cells(h, w, grid, device=inputs.images.device)
    cells = grid * grid
    size = min(max(round(subset_fraction * cells), 1), cells - 1)
    cell_subsets = draw_subsets(inputs.n, subsets, cells, size, generator)
    return subset_fidelity(
        inputs,
        cell_subsets,
        cells_of_pixels,
        metric="mufidelity",
        fill=fill,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        output=output,
        absolute=absolute,
        max_batch=max_batch,
    )
