"""The four axiom scores (Khakzar et al., 2022 Sec. 3.4, Eq. 8–11), as intended where the print or the code errs.

``maps_a`` / ``maps_b`` are (n, H, W) maps explaining class a / class b of each accepted sample
(the stored maps: signed, channels reduced as the method's store says); ``masks`` is
(n, patches, H, W), in the scenario's patch order (see `attrflow.axioms.settings`).

Choices, each following the paper's text over its typesetting and the authors' code over
nothing:

* ``null_feature`` (↓, per sample) = Σ_{f_null} S_a / Σ_all S_a — "contributions assigned to the
  null feature relative to total assigned contributions". Eq. 8 as printed sums over f_a (the
  non-null patch): an erratum, the text and the code both put the null patch in the numerator.
  The denominator is the whole map, as printed and described ("background only for scaling").
  Signed values, as the authors (their abs() is commented out; the printed DeepSHAP 1.03 > 1
  needs negative mass somewhere). A map summing to zero gives ``nan``.
* ``class_sensitivity_double`` (↓, per sample) = Σ_{f_a ∪ f_b} min(|S_a|, |S_b|) /
  (Σ_{f_a}|S_a| + Σ_{f_b}|S_b|), pixel-wise minimum (Eq. 9). Magnitudes, as the authors' code:
  only then is the score 1 for a class-insensitive map and 0 for one that moves fully from f_a to f_b,
  the two anchors the paper states.
* ``class_sensitivity_single`` (↓, one value) = Spearman correlation over samples of
  r_a and r_b, where r_t = mean_{f_a}|S_t| / mean_{outside f_a}|S_t| ("average contribution
  inside the patch divided by the average outside", Eq. 10; ε = 1e-5 in both, as the authors).
  "corr" is unspecified; Spearman is what the authors computed.
* ``saturation`` (↑, one value) = Spearman correlation over samples of Σ_{f_a1}|S_a| and
  Σ_{f_a2}|S_a| (Eq. 11). The authors' evaluation pasted the first patch twice (erratum): here each
  sample is the stored input with its two different patches, and each sum reads its own box.
  Magnitudes, as the authors' code (mean |h| per box; equal boxes, so mean and sum correlate alike).

The two correlations are properties of the whole sample set, so they give one value each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SINGLE_EPS = 1e-5
MIN_CORRELATION_SAMPLES = 3


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


def _correlation(x: np.ndarray, y: np.ndarray) -> ScenarioScore:
    if len(x) < MIN_CORRELATION_SAMPLES:
        return ScenarioScore(np.array([np.nan]), ["nan"], [f"a correlation needs >= {MIN_CORRELATION_SAMPLES} samples, have {len(x)}"], False)
    value = spearman(x, y)
    if np.isnan(value):
        return ScenarioScore(np.array([np.nan]), ["nan"], ["one side of the correlation is constant"], False)
    return ScenarioScore(np.array([value]), ["ok"], [None], False)


def null_feature(maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    del maps_b  # the test explains Φ_a only
    return _ratio(_sum_in(maps_a, masks[:, 1]), maps_a.sum(axis=(1, 2)), "the map's total (Σ S_a)")


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
    return _correlation(patch_contrast(maps_a, masks[:, 0]), patch_contrast(maps_b, masks[:, 0]))


def saturation(maps_a: np.ndarray, maps_b: np.ndarray, masks: np.ndarray) -> ScenarioScore:
    del maps_b  # both patches drive class a
    magnitude = np.abs(maps_a)
    return _correlation(_sum_in(magnitude, masks[:, 0]), _sum_in(magnitude, masks[:, 1]))


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
