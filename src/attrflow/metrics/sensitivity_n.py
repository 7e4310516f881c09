"""Sensitivity-N (Ancona et al. 2018; Zhang et al., 2021 Sec. 4.4.1, Khakzar et al., MICCAI 2021 Sec. 3.1).

"Randomly masks n pixels and observes the change in the prediction. Subsequently, it measures
the correlation between this output change and the sum of attribution values inside the mask
… using Pearson Correlation Coefficient (PCC). The experiment is repeated for various values of
n":

    SensN(n) = PCC_{S : |S| = n} ( Σ_{i∈S} A_i ,  Φ(x) − Φ(x with S masked) )

per image, over ``subsets`` = 200 random index sets per n (the paper's count; the InputIBA code
computes the PCC per image, as here). What the paper leaves open, and our choices:

* *n grid.* A config list of pixel (or cell) counts, by default 1, 4, 16, 64, 256: log-spaced,
  past 10² as the paper's plot axis, and valid from 17 × 17 images on (CIFAR included). Every n
  must be below the number of pixels (cells); a larger one is refused, naming it.
* *Features.* Single pixels with all their channels, or the cells of a ``grid`` × ``grid``
  lattice (IBA-style tiles) when ``grid`` is set.
* *Masking value.* The fill canvas, black by default (InputIBA multiplies the *normalised*
  input by 0, i.e. fills with the dataset's mean colour; the paper does not say).
* *Output.* The target logit by default (InputIBA reads the classifier's raw output).
* *Scalar.* The curve holds SensN(n) for each n in the order given; the value is their mean,
  so that one number per sample can be ranked (Ancona et al. report the curve only). A sample
  whose correlation is undefined at some n (constant attribution sums, e.g. a constant map, or
  an output the masks never move) is NaN with the reason and that n, rather than averaged over
  a different set of n than its neighbours.

Quantus's ``SensitivityN`` computes a different quantity (cumulative removal in attribution
order, attribution sums of one step only, correlation across the *images* of a batch per step);
tests/conformance/test_quantus_faithfulness.py pins that difference.
"""

from __future__ import annotations

from typing import Annotated

import torch

from attrflow.metrics._removal import (
    NONFINITE_MAP,
    BlurKernel,
    BlurSigma,
    Fill,
    Subsets,
    TargetOutput,
    fill_image,
    finite_maps,
    with_reasons,
)
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.metrics.mufidelity import (
    CONSTANT_ATTRIBUTION,
    CONSTANT_OUTPUT,
    correlate_removals,
    draw_index_subsets,
    grid_cells,
)
from attrflow.params import Doc, Ge, MinLen


@register_metric("sensitivity_n", kind="map", direction="higher")
def sensitivity_n(
    inputs: MetricInputs,
    *,
    n: Annotated[
        list[Annotated[int, Ge(1)]],
        MinLen(1),
        Doc("subset sizes, in pixels (or grid cells); each fewer than there are"),
    ] = [1, 4, 16, 64, 256],  # noqa: B006 (never mutated)
    subsets: Subsets = 200,
    grid: Annotated[
        int | None, Ge(2), Doc("draw subsets of grid × grid cells instead of pixels; null: pixels")
    ] = None,
    fill: Fill = "black",
    blur_kernel: BlurKernel = 29,
    blur_sigma: BlurSigma = 15.0,
    output: TargetOutput = "logit",
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Mean over `n` of the per-image Pearson correlation, over `subsets` random sets of n pixels
    (or `grid` cells), between the set's summed attribution and the drop of the target `output`
    when the set shows the `fill` canvas (higher is better); the curve holds one PCC per n.
    """
    maps, finite = finite_maps(inputs, "sensitivity_n")
    h, w = maps.shape[1:]
    if grid is None:
        cells_of_pixels, cells, unit = None, h * w, f"pixels ({h}x{w})"
    else:
        if grid > min(h, w):
            raise ValueError(f"sensitivity_n: grid={grid} exceeds the image side ({h}x{w}); lower `grid`")
        cells_of_pixels, cells = grid_cells(h, w, grid, device=maps.device), grid * grid
        unit = f"cells ({grid}x{grid} grid)"
    too_large = [size for size in n if not 1 <= size < cells]
    if too_large:
        raise ValueError(
            f"sensitivity_n: n={too_large} must lie between 1 and {cells - 1}, one less than the "
            f"{cells} {unit}; lower `n`"
        )
    canvas = fill_image(inputs.images, fill, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    per_n = []
    reasons: list[str | None] = [None if ok else NONFINITE_MAP for ok in finite]
    for size in n:
        index_sets = draw_index_subsets(inputs.n, subsets, cells, size, generator)
        corr, flat_attribution, flat_output = correlate_removals(
            inputs,
            maps,
            index_sets,
            cells_of_pixels,
            canvas,
            output=output,
            correlation="pearson",
            max_batch=max_batch,
        )
        per_n.append(corr)
        for i, (fa, fo) in enumerate(zip(flat_attribution.tolist(), flat_output.tolist())):
            if reasons[i] is None and (fa or fo):
                reasons[i] = f"{CONSTANT_ATTRIBUTION if fa else CONSTANT_OUTPUT} at n={size}"
    curves = torch.stack(per_n, dim=1)  # (samples, len(n))
    values = curves.mean(dim=1).cpu().numpy()
    return with_reasons(values, list(curves.cpu().numpy()), reasons)
