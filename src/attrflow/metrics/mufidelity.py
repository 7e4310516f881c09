"""MuFidelity and Faithfulness Correlation (Bhatt et al. 2020; UNI (Choi et al., 2024) Sec. 5.1).

    μ_F = corr_S ( Σ_{i∈S} A_i ,  F_c(x) − F_c(x with S filled) )

over random subsets S: the summed attribution of a subset ("predicted importance") should track
the output drop when that subset is removed ("actual influence"). Two registered readings differ
in how S is drawn and which correlation is taken, so both are offered under their own names:

``mufidelity`` — as Xplique's ``MuFidelity`` computes it (deel-ai/xplique,
``xplique/metrics/fidelity.py``), which is where UNI's Table 2 numbers come from (UNI (Choi et al., 2024) cites Fel et
al. 2022a):

* the image is cut into a ``grid`` × ``grid`` lattice of cells (9 × 9), and each subset drops every
  cell *independently* with probability ``subset_fraction`` (0.2), so subset sizes vary
  (``subset_draw: bernoulli``, the default); ``subset_draw: fixed`` instead removes exactly
  k = round(``subset_fraction`` · grid²) cells per subset, as Bhatt et al. (IJCAI 2020) define
  |S| = k. Under the variable size, with ``absolute`` and a non-negative map, the summed
  attribution and the output drop both grow with the number of cells removed, so even a random
  map correlates with the drop; the fixed size removes that shared factor; cells
  follow Xplique's nearest-neighbour upsampling of the grid (TensorFlow's half-pixel centres:
  pixel y belongs to cell floor((y + ½)·grid / H));
* ``subsets`` = 200 subsets per image; the correlation is **Spearman's** (average ranks for ties,
  as ``scipy.stats.spearmanr``);
* Xplique does not take the absolute value; UNI (Choi et al., 2024) reports |corr| ("attribution methods can yield
  strong positive or negative correlation"), hence ``absolute=True`` by default;
* Xplique's baseline is the constant 0.0 in whatever space its model reads; ours is the fill
  canvas in pixel space (black by default). Xplique's output is the model's raw output (its
  ``activation=None``); UNI (Choi et al., 2024) writes F_c as the class probability, our default ``output="prob"``;
* Xplique draws one set of masks per batch and shares it across the batch's images, and turns an
  undefined correlation (constant predictions) into 0. We draw independently per image from the
  injected generator, and report an undefined correlation as NaN with its reason, so that a
  constant map is not silently scored as "no correlation".

``faithfulness_correlation`` — as Bhatt et al. and Quantus's ``FaithfulnessCorrelation`` define it:
``subsets`` = 100 random subsets of exactly ``subset_size`` = 224 pixels, Pearson correlation,
black fill, the target logit (Quantus's default ``softmax=False``), no absolute value. Quantus
draws *elements* of the C×H×W input, so on colour images it removes single colour values; we
remove whole pixels (as every removal metric here does), which is the same on one-channel images
(tests/conformance/test_quantus_faithfulness.py matches Quantus there to float precision).

A correlation is undefined when either side does not vary over the subsets (a constant map, a
model the fill does not affect): such samples are NaN with the reason. So is a constant map
under variable-size subsets, whose sums vary only with the number of cells removed. The subset machinery
(`correlate_removals`) takes explicit subsets, so Sensitivity-N and the Quantus conformance tests
reuse the same arithmetic.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from attrflow.metrics._removal import (
    CONSTANT_MAP,
    NONFINITE_MAP,
    BlurKernel,
    BlurSigma,
    Fill,
    Subsets,
    TargetOutput,
    constant_maps,
    fill_image,
    finite_maps,
    masked_outputs,
    target_outputs,
    with_reasons,
)
from attrflow.metrics._stats import average_ranks
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, Gt, Lt

CONSTANT_ATTRIBUTION = "the attribution sums do not vary over the subsets (correlation undefined)"
CONSTANT_OUTPUT = "the output drops do not vary over the subsets (correlation undefined)"
CORRELATIONS = ("pearson", "spearman")
SUBSET_DRAWS = ("bernoulli", "fixed")


def grid_cells(
    height: int,
    width: int,
    grid: int,
    *,
    half_pixel: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(H, W) long: the cell of each pixel in a grid × grid lattice of near-equal cells.

    Pixel y lies in cell floor(y·grid / H), or floor((y + ½)·grid / H) with `half_pixel` (what
    TensorFlow's nearest-neighbour resize of a grid × grid mask gives, i.e. Xplique's cells).
    """
    if grid < 1 or grid > min(height, width):
        raise ValueError(f"grid={grid} must be between 1 and the image side ({height}x{width})")

    def cell_of(side: int) -> torch.Tensor:
        pixel = torch.arange(side, device=device)
        return (2 * pixel + 1) * grid // (2 * side) if half_pixel else pixel * grid // side

    return cell_of(height)[:, None] * grid + cell_of(width)[None, :]


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """The injected generator, or a fixed seed (0): a score never depends on global RNG state."""
    return torch.Generator().manual_seed(0) if generator is None else generator


def draw_subsets(
    n: int, subsets: int, cells: int, size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, subsets, cells) bool: `size` distinct cells per subset, uniformly, from `generator`."""
    generator = _generator(generator)
    keys = torch.rand(n, subsets, cells, generator=generator, device=generator.device)
    chosen = keys.argsort(dim=-1)[..., :size]
    return torch.zeros_like(keys, dtype=torch.bool).scatter_(-1, chosen, True)


def draw_bernoulli_subsets(
    n: int, subsets: int, cells: int, probability: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, subsets, cells) bool: each cell removed independently with `probability` (Xplique)."""
    generator = _generator(generator)
    keys = torch.rand(n, subsets, cells, generator=generator, device=generator.device)
    return keys < probability


def draw_index_subsets(
    n: int, subsets: int, cells: int, size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(n, subsets, size) long: `size` distinct cells per subset, uniformly, as indices.

    Index form keeps per-pixel subsets of 224² images small (a bool mask per subset would hold
    50 176 entries); keys are drawn one image at a time, in float64 so ties are negligible.
    """
    generator = _generator(generator)
    parts = [
        torch.rand(subsets, cells, generator=generator, device=generator.device, dtype=torch.float64)
        .topk(size, dim=1)
        .indices
        for _ in range(n)
    ]
    if not parts:
        return torch.zeros(0, subsets, size, dtype=torch.long, device=generator.device)
    return torch.stack(parts)


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


def correlate(
    a: torch.Tensor, b: torch.Tensor, correlation: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise Pearson or Spearman correlation, with the rows where a or b is constant.

    Constancy is judged on the values themselves (with `pearson`'s rounding tolerance), so
    float noise in a flat output is not promoted to distinct ranks.
    """
    corr, flat_a, flat_b = pearson(a, b)
    if correlation == "spearman":
        corr = pearson(average_ranks(a.double()), average_ranks(b.double()))[0]
    elif correlation != "pearson":
        raise ValueError(f"unknown correlation {correlation!r}; use one of {CORRELATIONS}")
    return corr, flat_a, flat_b


def correlate_removals(
    inputs: MetricInputs,
    maps: torch.Tensor,
    subsets: torch.Tensor,
    cells_of_pixels: torch.Tensor | None,
    canvas: torch.Tensor,
    *,
    output: str,
    correlation: str,
    max_batch: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Correlation, per sample, of summed attribution and output drop over given subsets.

    `subsets` is either (n, S, cells) bool (which cells each subset removes) or (n, S, k) long
    (the k cells each subset removes); `cells_of_pixels` (H, W) long maps pixels to cells, None
    making every pixel its own cell. `maps` (n, H, W) must be finite. Returns the signed
    correlation and the masks of samples whose attribution sums / output drops are constant.
    """
    device = inputs.images.device
    n, h, w = maps.shape
    subsets = subsets.to(device)
    cells_flat = None if cells_of_pixels is None else cells_of_pixels.to(device).reshape(-1)
    if subsets.dtype == torch.bool:
        cells = subsets.shape[-1]
    else:
        cells = h * w if cells_flat is None else int(cells_flat.max()) + 1
    if cells_flat is None:
        cell_sums = maps.reshape(n, -1).double()
    else:
        cell_sums = torch.zeros(n, cells, dtype=torch.float64, device=device)
        cell_sums.index_add_(1, cells_flat, maps.reshape(n, -1).double())
    count = subsets.shape[1]
    if subsets.dtype == torch.bool:
        attribution_sums = (subsets.double() * cell_sums[:, None, :]).sum(dim=-1)
    else:
        attribution_sums = cell_sums.gather(1, subsets.reshape(n, -1)).view(n, count, -1).sum(dim=-1)

    def replace_mask(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        chosen = subsets[sample, variant]
        if chosen.dtype != torch.bool:
            removed = torch.zeros(chosen.shape[0], cells, dtype=torch.bool, device=device)
            chosen = removed.scatter_(1, chosen, True)
        return (chosen if cells_flat is None else chosen[:, cells_flat]).view(-1, h, w)

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
    return correlate(attribution_sums, clean[:, None] - removed, correlation)


def _reason(finite: bool, flat_attribution: bool, constant: bool, flat_output: bool) -> str | None:
    """Why a sample has no correlation, checked in this order. A constant map whose subset sums
    still vary (Xplique's variable-size subsets) would only correlate the *number* of cells
    removed with the drop, which says nothing about the map, so it is NaN too."""
    if not finite:
        return NONFINITE_MAP
    if flat_attribution:
        return CONSTANT_ATTRIBUTION
    if constant:
        return CONSTANT_MAP
    return CONSTANT_OUTPUT if flat_output else None


def _fidelity_output(
    corr: torch.Tensor,
    flat_attribution: torch.Tensor,
    flat_output: torch.Tensor,
    finite: list[bool],
    constant: list[bool],
    absolute: bool,
) -> MetricOutput:
    if absolute:
        corr = corr.abs()
    reasons = [
        _reason(*flags) for flags in zip(finite, flat_attribution.tolist(), constant, flat_output.tolist())
    ]
    return with_reasons(corr.cpu().numpy(), None, reasons)


def subset_fidelity(
    inputs: MetricInputs,
    subsets: torch.Tensor,
    cells_of_pixels: torch.Tensor | None,
    *,
    metric: str,
    fill: str = "black",
    blur_kernel: int = 29,
    blur_sigma: float = 15.0,
    output: str = "prob",
    absolute: bool = True,
    correlation: str = "pearson",
    max_batch: int = 256,
) -> MetricOutput:
    """Correlation of summed attribution and output drop over given subsets, as a MetricOutput.

    `subsets` and `cells_of_pixels` are as in `correlate_removals`. Curves hold nothing: the S
    pairs are not an ordered curve.
    """
    maps, finite = finite_maps(inputs, metric)
    canvas = fill_image(inputs.images, fill, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    corr, flat_attribution, flat_output = correlate_removals(
        inputs,
        maps,
        subsets,
        cells_of_pixels,
        canvas,
        output=output,
        correlation=correlation,
        max_batch=max_batch,
    )
    constant = constant_maps(maps).tolist()
    return _fidelity_output(corr, flat_attribution, flat_output, finite, constant, absolute)


@register_metric("mufidelity", kind="map", direction="higher")
def mufidelity(
    inputs: MetricInputs,
    *,
    subsets: Subsets = 200,
    subset_fraction: Annotated[
        float, Gt(0), Lt(1), Doc("probability that a subset drops each grid cell")
    ] = 0.2,
    grid: Annotated[int, Ge(2), Doc("side of the cell lattice (at most the image side)")] = 9,
    fill: Fill = "black",
    blur_kernel: BlurKernel = 29,
    blur_sigma: BlurSigma = 15.0,
    output: TargetOutput = "prob",
    correlation: Annotated[Literal["spearman", "pearson"], Doc("rank or linear correlation")] = "spearman",
    absolute: Annotated[bool, Doc("report |corr| (as UNI, Choi et al., 2024)")] = True,
    subset_draw: Annotated[
        Literal["bernoulli", "fixed"],
        Doc("drop cells independently (Xplique), or exactly round(subset_fraction · grid²) (Bhatt et al. 2020)"),
    ] = "bernoulli",
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Xplique's MuFidelity: the `correlation` (Spearman by default), over `subsets` random
    subsets of a `grid` × `grid` lattice that each drop every cell with probability
    `subset_fraction`, between the subset's summed attribution and the output drop when it is
    filled (higher is better).

    `grid` must be at least 2 and at most the image side; `absolute` reports |corr| as UNI (Choi et al., 2024) does.
    `subset_draw` "fixed" removes exactly round(`subset_fraction` · grid²) cells per subset (Bhatt
    et al. 2020) instead of Xplique's independent drops. Subsets come from the injected
    `generator`, one independent draw per sample.
    """
    h, w = inputs.images.shape[2:]
    if grid > min(h, w):
        raise ValueError(f"mufidelity: grid={grid} exceeds the image side ({h}x{w}); lower `grid`")
    cells_of_pixels = grid_cells(h, w, grid, half_pixel=True, device=inputs.images.device)
    if subset_draw == "bernoulli":
        cell_subsets = draw_bernoulli_subsets(inputs.n, subsets, grid * grid, subset_fraction, generator)
    elif subset_draw == "fixed":
        size = round(subset_fraction * grid * grid)
        if not 1 <= size < grid * grid:
            raise ValueError(
                f"mufidelity: subset_fraction={subset_fraction} of {grid * grid} cells gives {size} cells per "
                "subset under subset_draw='fixed'; it must be at least 1 and fewer than all cells"
            )
        cell_subsets = draw_subsets(inputs.n, subsets, grid * grid, size, generator)
    else:
        raise ValueError(f"mufidelity: subset_draw={subset_draw!r}; use one of {SUBSET_DRAWS}")
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
        correlation=correlation,
        max_batch=max_batch,
    )


@register_metric("faithfulness_correlation", kind="map", direction="higher")
def faithfulness_correlation(
    inputs: MetricInputs,
    *,
    subsets: Subsets = 100,
    subset_size: Annotated[int, Ge(1), Doc("pixels per random subset (fewer than the image has)")] = 224,
    fill: Fill = "black",
    blur_kernel: BlurKernel = 29,
    blur_sigma: BlurSigma = 15.0,
    output: TargetOutput = "logit",
    absolute: Annotated[bool, Doc("report |corr|")] = False,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Bhatt et al.'s Faithfulness Correlation as Quantus defines it: the Pearson correlation, over
    `subsets` random sets of exactly `subset_size` pixels, between the set's summed attribution
    and the drop of the target `output` when the set is filled (higher is better).

    `subset_size` must be smaller than the number of pixels; `absolute` reports |corr|.
    """
    h, w = inputs.images.shape[2:]
    if not 1 <= subset_size < h * w:
        raise ValueError(
            f"faithfulness_correlation: subset_size={subset_size} must be between 1 and the number "
            f"of pixels minus one ({h}x{w} = {h * w} pixels); lower `subset_size`"
        )
    pixel_subsets = draw_index_subsets(inputs.n, subsets, h * w, subset_size, generator)
    return subset_fidelity(
        inputs,
        pixel_subsets,
        None,
        metric="faithfulness_correlation",
        fill=fill,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        output=output,
        absolute=absolute,
        correlation="pearson",
        max_batch=max_batch,
    )
