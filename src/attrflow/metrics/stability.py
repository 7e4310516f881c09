"""Agreement between two attribution maps, and Riemann-step stability (UNI (Choi et al., 2024) Sec. 5.3, Figs. 6–7).

The explainer metrics compare a map with another map of the same sample: before and after an
attack (`attack.py`), before and after randomising the model (`randomization.py`), or at two
Riemann step counts (here). The agreement measures they share live here, row-wise over
(n, P) flattened maps, in float64:

* `spearman_rows`: Spearman ρ with average ranks for ties, from one sort per row (no P × P
  matrix, so 224² maps are cheap) and no atomics (bit-identical on every device);
* `l1_agreement_rows`: 1 − ‖a − b‖₁ / (‖a‖₁ + ‖b‖₁), in [0, 1], 1 for equal maps and 0 for
  maps of opposite sign; unlike ρ it sees scale: a map that doubles scores below 1.

``riemann_stability`` turns the papers' visual comparison of B ∈ {1, 15, 30} into a number.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch

from attrflow.metrics._removal import NONFINITE_MAP, with_reasons
from attrflow.metrics._stats import spearman_rows
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, MinLen, Unique

AGREEMENTS = ("spearman", "l1")


def flat_scores(maps: torch.Tensor, order: str = "signed") -> torch.Tensor:
    """(n, …) maps → (n, P) float64 scores: the signed values or their magnitude."""
    flat = maps.reshape(maps.shape[0], -1).double()
    if order == "absolute":
        return flat.abs()
    if order == "signed":
        return flat
    raise ValueError(f"order must be 'absolute' or 'signed', not {order!r}")


def l1_agreement_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise 1 − ‖a − b‖₁ / (‖a‖₁ + ‖b‖₁) of (n, P) tensors, and a mask of rows where both are
    zero (undefined)."""
    a, b = a.double(), b.double()
    total = a.abs().sum(dim=1) + b.abs().sum(dim=1)
    zero = total == 0
    distance = (a - b).abs().sum(dim=1) / torch.where(zero, torch.ones_like(total), total)
    return torch.where(zero, torch.zeros_like(distance), 1.0 - distance), zero


def agreement_rows(
    a: torch.Tensor, b: torch.Tensor, agreement: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if agreement == "spearman":
        return spearman_rows(a, b)
    if agreement == "l1":
        return l1_agreement_rows(a, b)
    raise ValueError(f"agreement must be one of {AGREEMENTS}, not {agreement!r}")


def cleaned(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, …) scores with NaN and inf set to 0, and a (n,) mask of the samples that had none."""
    finite = torch.isfinite(scores).flatten(1).all(dim=1)
    return torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0), finite


def _declares_steps(inputs: MetricInputs) -> bool:
    """Whether the evaluated method is a path method: it takes a ``steps`` parameter."""
    if "steps" in inputs.method_params:
        return True
    if not inputs.method_fn:
        return False
    from attrflow.methods import get_method
    from attrflow.registry import UnknownEntryError

    try:
        return "steps" in get_method(inputs.method_fn).params
    except UnknownEntryError:
        return False


@register_metric("riemann_stability", kind="explainer", direction="higher")
def riemann_stability(
    inputs: MetricInputs,
    *,
    steps_grid: Annotated[
        list[Annotated[int, Ge(1)]],
        MinLen(2),
        Unique(),
        Doc(
            "Riemann step counts B to compare (UNI (Choi et al., 2024) Sec. 5.3: 1, 15, 30)"
        ),
    ] = [1, 15, 30],  # noqa: B006 (never mutated; a literal default)
    agreement: Annotated[
        Literal["spearman", "l1"],
        Doc("Spearman ρ of the signed maps, or 1 − normalised L1 distance"),
    ] = "spearman",
) -> MetricOutput:
    """How much a path method's map changes with its number of Riemann steps (higher is better).

    UNI (Choi et al., 2024) computes maps with B ∈ {1, 15, 30} steps and compares them by eye (UNI is "consistent
    regardless of the number of approximation steps"). Here the method is re-run through
    ``inputs.explain(x, target, steps=B)`` for every B of `steps_grid`, keeping all its other
    parameters, and each coarser map is compared with the map at the largest B, the best
    approximation of the integral on hand:

    * curve: agreement of each B (ascending, all but the largest) with the largest B;
    * value: the mean of that curve.

    ``agreement="spearman"`` (default) is ρ of the signed maps: it asks whether the ranking of
    the pixels survives, as one looks at a heat map. It ignores a global rescaling (the right
    Riemann sum on a quadratic model is IG · (B + 1)/B, ρ = 1). ``"l1"`` is
    1 − ‖a − b‖₁ / (‖a‖₁ + ‖b‖₁), which also sees scale. On a linear model every rule is exact
    at every B, so both are 1. Only methods with a ``steps`` parameter apply; others are skipped.
    """
    who = f"method {inputs.method!r} (fn {inputs.method_fn!r})"
    if not _declares_steps(inputs):
        return MetricOutput.skipped(
            inputs.n,
            f"riemann_stability applies to path methods with a 'steps' parameter; {who} has none",
        )
    if inputs.explain is None:
        raise ValueError(f"riemann_stability: no explain callable was given for {who}")
    grid = sorted({int(b) for b in steps_grid})

    def maps_at(steps: int) -> torch.Tensor:
        return flat_scores(inputs.explain(inputs.images, inputs.targets, steps=steps))

    reference, reference_ok = cleaned(maps_at(grid[-1]))
    columns, problems = [], [[] for _ in range(inputs.n)]
    for steps in grid[:-1]:
        coarse, finite = cleaned(maps_at(steps))
        value, undefined = agreement_rows(coarse, reference, agreement)
        for i, (ok, bad) in enumerate(zip(finite.tolist(), undefined.tolist())):
            if not ok:
                problems[i].append(f"the map at B={steps} has non-finite values")
            elif bad:
                problems[i].append(
                    f"{agreement} agreement of B={steps} with B={grid[-1]} is undefined "
                    "(constant map)"
                )
        columns.append(torch.where(finite & ~undefined, value, float("nan")))
    curves = torch.stack(columns, dim=1).cpu().numpy()
    reasons = [
        f"{NONFINITE_MAP} at B={grid[-1]}" if not ok else ("; ".join(p) if p else None)
        for ok, p in zip(reference_ok.tolist(), problems)
    ]
    return with_reasons(curves.mean(axis=1), list(curves.astype(np.float64)), reasons)
