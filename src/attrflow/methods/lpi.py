"""Local Path Integration (Yang, Akhtar, Wen, Mian, AAAI 2023, and the
supplement's experiments).

LPI integrates gradients along straight paths from references drawn from the input's *local*
distribution: the train split is clustered in logit space (`attrflow.methods.references`, kind
``"lpi"``), the input joins the cluster whose centre is nearest its logits, and the cluster's R
representatives are weighted by their density p_r (sub-cluster size over cluster size):

    LPI(x) = Σ_r p_r (x − x'_r) ⊙ E_{α~U(0,1)} ∇F(x'_r + α(x − x'_r)),

estimated with ``samples_per_reference`` α draws per reference (the authors' k; their
quantitative runs use k = 1 with R = 20: 20 backward passes per image, the LPI supplement's (Yang et al., 2023) budget). F is the
target LOGIT (the authors differentiate −NLL of raw outputs).

Where this differs from the authors' code (``saliency_methods/LPI.py``), on purpose:

* each reference is paired with its own path gradients; the code tiles the interpolation points
  reference-major ([r0..rR, r0..rR, …]) but reads them back draw-major, so for k > 1 the gradient
  multiplied by (x − x'_j) comes from another reference;
* no extra 1/R: the code averages the density-weighted terms over r, which only rescales maps
  but breaks Σ maps ≈ F(x) − Σ_r p_r F(x'_r), the identity our diagnostics check;
* α ~ U(0, 1) as in EG, not U(0.01, 0.99) (the truncation is an implementation detail);
* densities of the input's own cluster (the code's ``density.npy`` repeats one file per cluster,
  so with more than one cluster only the last cluster's densities survive).

The method gets only ``references`` (K, C, H, W), cluster-major blocks of R = ``sub_clusters``
rows, and ``reference_weights`` (K,) (sub-cluster size over the train size). It estimates each
cluster's centre as the weight-averaged logits of its block (a k-means centre is the
size-weighted mean of its sub-centres; the references sit next to their sub-centres) and assigns
x to the nearest. `build_references` records in ``centre_estimate_agreement`` how often this
reproduces the k-means label on the train split. ``sub_clusters`` must equal the reference set's.

Diagnostics: those of `attrflow.methods.expected_gradients.integrate_from_references`
(``output_delta`` = F(x) − Σ_r p_r F(x'_r), ``completeness_residual``, density-weighted mean
reference as ``baselines``, α-sorted path points) plus ``reference_cluster`` (n,).
Completeness holds in expectation over α only, so LPI registers no completeness claim.
"""

from __future__ import annotations

from typing import Annotated

import torch

from attrflow.methods._batching import validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.methods.expected_gradients import (
    check_references,
    forward_logits,
    integrate_from_references,
)
from attrflow.params import Doc, Ge


def estimated_centres(
    reference_logits: torch.Tensor, weights: torch.Tensor, clusters: int, sub_clusters: int
) -> torch.Tensor:
    """(clusters, D): per cluster block, the weight-averaged logits of its references."""
    blocks = reference_logits.reshape(clusters, sub_clusters, -1)
    block_weights = weights.to(blocks).reshape(clusters, sub_clusters, 1)
    return (blocks * block_weights).sum(dim=1) / block_weights.sum(dim=1)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared Euclidean distances ‖a‖² − 2a·b + ‖b‖², float64, one matmul."""
    a, b = a.double(), b.double()
    return ((a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)).clamp(min=0)


@register_method("lpi", references="lpi", differentiable=True)
def lpi(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    sub_clusters: Annotated[
        int,
        Ge(1),
        Doc(
            "references per cluster R (the reference set's sub_clusters); each image "
            "integrates from its own cluster's R references"
        ),
    ] = 20,
    samples_per_reference: Annotated[
        int,
        Ge(1),
        Doc(
            "α draws per reference (the authors' k); gradient evaluations per image = "
            "sub_clusters × samples_per_reference"
        ),
    ] = 1,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    references: torch.Tensor | None = None,
    reference_weights: torch.Tensor | None = None,
) -> Attribution:
    """LPI of the target logit from the density-weighted references of x's own cluster."""
    x, target = validate_batch(model, x, target)
    references, weights = check_references(x, references, reference_weights, "lpi")
    if weights is None:
        raise ValueError(
            "lpi: parameter reference_weights is missing (LPI weighs by cluster density)"
        )
    total = references.shape[0]
    if total % sub_clusters:
        raise ValueError(
            f"lpi: parameter sub_clusters is {sub_clusters} but the reference set holds {total} "
            "rows, not a whole number of clusters; use the reference set's sub_clusters"
        )
    clusters = total // sub_clusters
    n, k = x.shape[0], samples_per_reference

    reference_logits = forward_logits(model, references, max_batch)
    input_logits = forward_logits(model, x, max_batch)
    centres = estimated_centres(reference_logits.double(), weights, clusters, sub_clusters)
    cluster = squared_distances(input_logits, centres).argmin(dim=1)

    block = weights.reshape(clusters, sub_clusters)
    if bool((block.sum(dim=1) <= 0).any()):
        empty = int((block.sum(dim=1) <= 0).nonzero()[0, 0])
        raise ValueError(
            f"lpi: cluster {empty} of parameter reference_weights has zero total weight"
        )
    density = block / block.sum(dim=1, keepdim=True)  # p_r within each cluster

    slot = torch.arange(sub_clusters * k, device=x.device) // k  # point p → reference r
    reference_index = cluster.unsqueeze(1) * sub_clusters + slot
    point_weights = density[cluster][:, slot] / k
    alphas = torch.rand((n, sub_clusters * k), generator=generator, device=x.device, dtype=x.dtype)
    result = integrate_from_references(
        model,
        x,
        target,
        references,
        reference_index,
        alphas,
        point_weights.to(x.dtype),
        max_batch=max_batch,
        reference_logits=reference_logits,
        input_logits=input_logits,
    )
    return Attribution(
        maps=result.maps, diagnostics={**result.diagnostics, "reference_cluster": cluster}
    )
