"""Expected Gradients (Erion et al. 2021).

EG(x) = E_{x'~D, α~U(0,1)} [(x − x') ⊙ ∇F(x' + α(x − x'))], F the target LOGIT, estimated with
``k`` Monte-Carlo draws per image: each draw picks one reference from the train pool (by its
weight; uniform for ``train_pool``) and one α. As k grows EG tends to the mean over the reference
distribution of IG from each reference; with a one-image pool it tends to IG from that image.

Draws: all reference indices (n, k) first, then all α (n, k), from the runtime ``generator``,
before any model call — so the maps do not depend on ``max_batch``. References are drawn with
replacement (attributionpriors draws a fresh permutation per batch, i.e. without replacement
within a batch; for k ≪ pool size the two coincide in distribution up to repeats).

Completeness holds only in expectation and against E[F(x')], not F(E[x']): EG registers no
completeness claim (Hesse et al., 2021 App. A: EG(1) is not complete). Its diagnostics still show how far the
estimate is from it: ``output_delta`` = F(x) − mean over draws of F(x'), and
``completeness_residual`` = |Σ maps − output_delta|, which shrinks as k grows.

`integrate_from_references` is the shared engine (LPI uses it with its own references and
weights): every (sample, draw) point carries its own reference, so the (x − x') factor is applied
per point inside the weighing, before the per-sample sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from attrflow.methods._batching import accumulate_gradients, evaluation_mode, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge


@dataclass
class ReferenceIntegral:
    """Result of `integrate_from_references`: maps and the per-sample diagnostics."""

    maps: torch.Tensor
    diagnostics: dict[str, torch.Tensor]


def check_references(
    x: torch.Tensor, references: torch.Tensor | None, weights: torch.Tensor | None, method: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """References on x's device and dtype, (K, C, H, W) matching x; weights (K,) ≥ 0 summing to 1.

    Errors name the parameter and the first offending reference row.
    """
    if references is None:
        raise ValueError(f"{method}: parameter references is missing (the workflow builds them)")
    references = torch.as_tensor(references)
    if references.dim() != 4 or references.shape[0] == 0 or references.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"{method}: parameter references must be (K, {', '.join(map(str, x.shape[1:]))}) "
            f"to match x; got {tuple(references.shape)}"
        )
    finite = torch.isfinite(references).flatten(1).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{method}: reference {row} of parameter references is not finite")
    references = references.to(device=x.device, dtype=x.dtype)
    if weights is None:
        return references, None
    weights = torch.as_tensor(weights).to(device=x.device, dtype=torch.float64)
    if weights.shape != (references.shape[0],):
        raise ValueError(
            f"{method}: parameter reference_weights must have shape ({references.shape[0]},); "
            f"got {tuple(weights.shape)}"
        )
    bad = ~torch.isfinite(weights) | (weights < 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{method}: reference_weights[{row}] is {float(weights[row])}, not a finite weight >= 0"
        )
    if abs(float(weights.sum()) - 1.0) > 1e-4:
        raise ValueError(
            f"{method}: parameter reference_weights sums to {float(weights.sum())}, not 1"
        )
    return references, weights


def forward_logits(model: torch.nn.Module, images: torch.Tensor, max_batch: int) -> torch.Tensor:
    """All logits of ``images`` in chunks of ``max_batch``, forward passes only."""
    with evaluation_mode(model), torch.no_grad():
        chunks = range(0, len(images), max_batch)
        return torch.cat([model(images[i : i + max_batch]) for i in chunks])


def integrate_from_references(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    references: torch.Tensor,
    reference_index: torch.Tensor,
    alphas: torch.Tensor,
    point_weights: torch.Tensor,
    *,
    max_batch: int,
    reference_logits: torch.Tensor | None = None,
    input_logits: torch.Tensor | None = None,
    endpoint_outputs: bool = True,
) -> ReferenceIntegral:
    """Σ_p w_sp (x_s − r_sp) ⊙ ∇F_target(r_sp + α_sp (x_s − r_sp)) for every sample s.

    ``reference_index``, ``alphas``, ``point_weights``: (n, P), the reference row, position on
    its path and weight of each point; each sample's weights must sum to 1 for ``output_delta``
    (F(x) − Σ_p w_sp F(r_sp)) to be the quantity the maps sum to in expectation.

    Diagnostics: ``baselines`` Σ_p w_sp r_sp (the weighted mean reference — not a point whose
    F the maps sum to); ``path_alphas``, ``path_logits``, ``path_probs`` (n, P) at every point,
    sorted by α (points of different references: a cloud, not one path); ``output_delta``;
    ``completeness_residual``. Costs n·P forward+backward passes, plus forward passes of x and
    of each distinct reference used (shared by all samples) unless the caller already has their
    logits (``input_logits`` (n, classes), ``reference_logits`` (K, classes)). Without
    ``endpoint_outputs`` those forward passes are skipped, and so are ``output_delta`` and
    ``completeness_residual``.
    """
    n, n_points = reference_index.shape
    weights = point_weights.to(x.dtype)

    def point(sample_idx: torch.Tensor, point_idx: torch.Tensor) -> torch.Tensor:
        ref = references[reference_index[sample_idx, point_idx]]
        return ref + alphas[sample_idx, point_idx].view(-1, 1, 1, 1) * (x[sample_idx] - ref)

    def weigh(
        grads: torch.Tensor, sample_idx: torch.Tensor, point_idx: torch.Tensor
    ) -> torch.Tensor:
        ref = references[reference_index[sample_idx, point_idx]]
        scale = weights[sample_idx, point_idx].view(-1, 1, 1, 1)
        return grads * (x[sample_idx] - ref) * scale

    path = accumulate_gradients(
        model, target, n_points=n_points, points=point, weigh=weigh, max_batch=max_batch
    )
    maps = path.gradient_sums
    order = alphas.argsort(dim=1, stable=True)
    mixing = _mixing_weights(reference_index, weights, references.shape[0])
    diagnostics = {
        "baselines": (mixing @ references.flatten(1)).view_as(x),
        "path_alphas": alphas.gather(1, order),
        "path_logits": path.target_logits.gather(1, order),
        "path_probs": path.target_probs.gather(1, order),
    }
    if not endpoint_outputs:
        return ReferenceIntegral(maps=maps, diagnostics=diagnostics)

    targets = target.unsqueeze(1).expand(n, n_points)
    if reference_logits is None:
        used, position = torch.unique(reference_index, return_inverse=True)
        at_references = forward_logits(model, references[used], max_batch)[position, targets]
    else:
        at_references = reference_logits[reference_index, targets]
    if input_logits is None:
        input_logits = forward_logits(model, x, max_batch)
    at_input = input_logits.gather(1, target.unsqueeze(1)).squeeze(1)
    output_delta = at_input - (weights * at_references.to(x.dtype)).sum(dim=1)
    diagnostics["output_delta"] = output_delta
    diagnostics["completeness_residual"] = (maps.flatten(1).sum(dim=1) - output_delta).abs()
    return ReferenceIntegral(maps=maps, diagnostics=diagnostics)


def _mixing_weights(
    reference_index: torch.Tensor, weights: torch.Tensor, pool_size: int
) -> torch.Tensor:
    """(n, K): the total weight each sample puts on each reference, so that Σ_p w_sp r_sp is one
    matmul (never n·P images in memory). Built from one-hot blocks of 64 points, summed in a
    fixed order: scatter_add would use atomics on CUDA and vary bit-wise between runs."""
    n = reference_index.shape[0]
    mixing = torch.zeros((n, pool_size), dtype=weights.dtype, device=weights.device)
    for lo in range(0, reference_index.shape[1], 64):
        rows = reference_index[:, lo : lo + 64]
        block = torch.nn.functional.one_hot(rows, pool_size).to(weights.dtype)
        mixing += (block * weights[:, lo : lo + 64].unsqueeze(2)).sum(dim=1)
    return mixing


def draw_references(
    weights: torch.Tensor | None,
    pool_size: int,
    n: int,
    k: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(n, k) reference rows, drawn with replacement by ``weights`` (uniform when None)."""
    if weights is None:
        return torch.randint(pool_size, (n, k), generator=generator, device=device)
    probs = weights.to(device=device, dtype=torch.float64).expand(n, pool_size)
    return torch.multinomial(probs, k, replacement=True, generator=generator)


@register_method("expected_gradients", references="train_pool", differentiable=True)
def expected_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    k: Annotated[
        int,
        Ge(1),
        Doc(
            "Monte-Carlo draws (reference, α) per image = gradient evaluations; Hesse et al.,"
            " 2021 uses 1 and 32, the LPI supplement (Yang et al., 2023) 20"
        ),
    ] = 32,
    endpoint_outputs: Annotated[
        bool,
        Doc(
            "evaluate F(x) and F(x') for output_delta and completeness_residual: up to n + "
            "min(K, n·k) extra forward passes per call, which dominate at small k"
        ),
    ] = True,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    references: torch.Tensor | None = None,
    reference_weights: torch.Tensor | None = None,
) -> Attribution:
    """EG of the target logit with ``k`` draws per image from the train-pool ``references``.

    Diagnostics: those of `integrate_from_references` plus ``reference_indices`` (n, k), the
    pool rows drawn, in draw order. ``endpoint_outputs: false`` drops ``output_delta`` and
    ``completeness_residual`` to save their forward passes (EG(1) otherwise spends about as much
    on them as on its one gradient).
    """
    x, target = validate_batch(model, x, target)
    references, weights = check_references(x, references, reference_weights, "expected_gradients")
    n = x.shape[0]
    reference_index = draw_references(weights, references.shape[0], n, k, generator, x.device)
    alphas = torch.rand((n, k), generator=generator, device=x.device, dtype=x.dtype)
    result = integrate_from_references(
        model,
        x,
        target,
        references,
        reference_index,
        alphas,
        torch.full((n, k), 1.0 / k, dtype=x.dtype, device=x.device),
        max_batch=max_batch,
        endpoint_outputs=endpoint_outputs,
    )
    return Attribution(
        maps=result.maps, diagnostics={**result.diagnostics, "reference_indices": reference_index}
    )
