"""The four axiom scores (Khakzar et al., CVPR 2022, Sec. 3.4, Eq. 8–11), as intended where the print
or the code errs.

``maps_a`` / ``maps_b`` are (n, H, W) maps explaining class a / class b of each accepted sample
(the stored maps: signed, channels reduced as the method's store says); ``masks`` is
(n, patches, H, W), in the scenario's patch order (see `attrflow.axioms.settings`).

Choices, each following the paper's text over its typesetting and the authors' code over
nothing:

Every score reads **magnitudes** |S| (the seed's non-negative convention: the authors' gradient
maps were |∂| maxed over channels, their CAM and IBA maps are non-negative), so that a perfect map
gets the best value and no map beats it — with signed maps a map with −0.5 on the null patch would
score −1, better than a perfect 0.

* ``null_feature`` (↓, per sample, in [0, 1]) = Σ_{f_null}|S_a| / Σ_all |S_a| — "contributions
  assigned to the null feature relative to total assigned contributions". Eq. 8 as printed sums
  over f_a (the non-null patch): an erratum, the text and the code both put the null patch in the
  numerator. The denominator is the whole map ("background only for scaling"). Perfect: 0 (no
  mass on f_null); a uniform map: the null patch's share of the pixels; all mass on f_null: 1; a
  zero map: ``nan`` (nothing was attributed). The seed's Table 1 (Khakzar et al., CVPR 2022), for
  reading our numbers beside theirs: GradCAM 0.135, GradCAM++ 0.452, Gradient 0.835, FullGrad
  1.00, GuidedBackProp 0.704, IntegratedGradient 0.534, DeepSHAP 1.03, IBA 0.211, Extremal
  Perturbation 0.047. DeepSHAP's 1.03 > 1 is possible only with signed sums (negative mass off the
  null patch); under magnitudes it would be ≤ 1.
* ``class_sensitivity_double`` (↓, per sample, in [0, 1]) = Σ_{f_a ∪ f_b} min(|S_a|, |S_b|) /
  (Σ_{f_a}|S_a| + Σ_{f_b}|S_b|), pixel-wise minimum (Eq. 9): 1 for a class-insensitive map, 0
  for one that moves fully from f_a to f_b, the two anchors the paper states. Seed: GradCAM 0.176,
  Gradient 0.469, FullGrad 0.931, IBA 0.191, Extremal Perturbation 0.039.
* ``class_sensitivity_single`` (↓, one value, in [0, 1]) = max(0, Spearman ρ) over samples of r_a
  and r_b, where r_t = mean_{f_a}|S_t| / mean_{outside f_a}|S_t| ("average contribution inside the
  patch divided by the average outside", Eq. 10; ε = 1e-5 in both, as the authors). "corr" is
  unspecified; Spearman is what the authors computed. A class-sensitive method's r_b does not
  follow r_a (ρ ≤ 0); an anti-correlation is no better than independence, so it is clipped at 0
  and a perfect map cannot be beaten. A constant side (e.g. zero or uniform maps, r ≡ 1) gives
  ``nan``: the maps do not say where the feature is. Seed: GradCAM 0.050, Gradient 0.684,
  FullGrad 0.951, IBA 0.295 (no negative value printed).
* ``saturation`` (↑, one value, in [−1, 1]) = Spearman ρ over samples of Σ_{f_a1}|S_a| and
  Σ_{f_a2}|S_a| (Eq. 11): 1 when the two saturating features share the attribution alike. The
  authors' evaluation pasted the first patch twice (erratum): here each sample is the stored input
  with its two different patches, and each sum reads its own box. A map that puts everything on
  one patch leaves the other side constant at 0: it gets 0 ("a method that assigns the attribution
  to only one feature receives a lower score"); both sides constant (e.g. zero maps) gives ``nan``.
  Seed: GradCAM 0.243, Gradient 0.310, GuidedBackProp 0.703, IBA −0.223, Extremal Perturbation
  −0.680.

A correlation is computed only over at least ``MIN_CORRELATION_SAMPLES`` (8) accepted samples:
with fewer, Spearman's ρ takes a handful of values (±0.5 or ±1 at n = 3) and even |ρ| = 1 is not
significant (the two-sided 5 % critical value is 0.74 at n = 8 and 1.0 at n ≤ 4); the row is
``skipped`` with the count in its reason.

The two correlations are properties of the whole sample set, so they give one value each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SINGLE_EPS = 1e-5
MIN_CORRELATION_SAMPLES = 8


@dataclass
class ScenarioScore:
    """Per-sample values (``per_sample``) or one value for the whole set (a correlation)."""

    values: np.ndarray  # (n,) per sample, or (1,)
    status: list[str]
    reasons: list[str | None]
    per_sample: bool


def _sum_in(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (maps * mask).sum(axis=(1, 2))


def _ratio(numerator: np.ndarray, denominator: np.ndarray, what: str) -> ScenarioScore:
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(denominator != 0, numerator / np.where(denominator != 0, denominator, 1), np.nan)
    bad = ~np.isfinite(values)
    return ScenarioScore(
        values.astype(np.float64),
        ["nan" if b else "ok" for b in bad],
        [f"{what} is zero" if b else None for b in bad],
        per_sample=True,
    )


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    import pandas as pd

    rx = pd.Series(np.asarray(x, dtype=np.float64)).rank().to_numpy()
    ry = pd.Series(np.asarray(y, dtype=np.float64)).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _correlation(x: np.ndarray, y: np.ndarray, *, one_sided: str) -> ScenarioScore:
    """Spearman ρ of x and y over samples, or a ``skipped`` / ``nan`` row saying why not.

    ``one_sided``: what a constant side means — ``"nan"`` (undefined) or ``"zero"`` (no
    association: the other side varies alone); both sides constant is always ``nan``.
    """
    if len(x) < MIN_CORRELATION_SAMPLES:
        return ScenarioScore(
            np.array([np.nan]), ["skipped"],
            [f"a rank correlation needs >= {MIN_CORRELATION_SAMPLES} accepted samples, have {len(x)}"], False,
        )
    x_constant, y_constant = np.ptp(x) == 0, np.ptp(y) == 0
    if x_constant and y_constant:
        return ScenarioScore(np.array([np.nan]), ["nan"], ["both sides of the correlation are constant"], False)
    if x_constant or y_constant:
        if one_sided == "zero":
            return ScenarioScore(np.array([0.0]), ["ok"], [None], False)
        return ScenarioScore(np.array([np.nan]), ["nan"], ["one side of the correlation is constant"], False)
    return ScenarioScore(np.array([spearman(x, y)]), ["ok"], [None], False)


def null_feature(maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    del maps_b  # the test explains Φ_a only
    magnitude = np.abs(maps_a)
    return _ratio(_sum_in(magnitude, masks[:, 1]), magnitude.sum(axis=(1, 2)), "the map's total (Σ |S_a|)")


def class_sensitivity_double(maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    a, b = np.abs(maps_a), np.abs(maps_b)
    both = masks[:, 0] | masks[:, 1]
    overlap = _sum_in(np.minimum(a, b), both)
    return _ratio(overlap, _sum_in(a, masks[:, 0]) + _sum_in(b, masks[:, 1]), "Σ_{f_a}|S_a| + Σ_{f_b}|S_b|")


def patch_contrast(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean |S| inside the patch over mean |S| outside it (ε-smoothed as the authors)."""
    magnitude = np.abs(maps)
    inside = _sum_in(magnitude, mask) / mask.sum(axis=(1, 2))
    outside = _sum_in(magnitude, ~mask) / (~mask).sum(axis=(1, 2))
    return (inside + SINGLE_EPS) / (outside + SINGLE_EPS)


def class_sensitivity_single(maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    out = _correlation(patch_contrast(maps_a, masks[:, 0]), patch_contrast(maps_b, masks[:, 0]), one_sided="nan")
    out.values = np.maximum(out.values, 0.0, where=np.isfinite(out.values), out=out.values.copy())
    return out


def saturation(maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    del maps_b  # both patches drive class a
    magnitude = np.abs(maps_a)
    return _correlation(_sum_in(magnitude, masks[:, 0]), _sum_in(magnitude, masks[:, 1]), one_sided="zero")


SCORERS = {
    "null_feature": null_feature,
    "class_sensitivity_single": class_sensitivity_single,
    "class_sensitivity_double": class_sensitivity_double,
    "saturation": saturation,
}


def score_scenario(scenario: str, maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    maps_a, maps_b = np.asarray(maps_a, np.float64), np.asarray(maps_b, np.float64)
    if maps_a.shape != maps_b.shape or maps_a.shape[1:] != masks.shape[2:]:
        raise ValueError(
            f"{scenario}: maps {maps_a.shape} / {maps_b.shape} do not match the patch masks {masks.shape}"
        )
    return SCORERS[scenario](maps_a, maps_b, np.asarray(masks, dtype=bool))
