"""The axiom tables of `summary.md`, shaped like seed 004 (S4-DoEE) Tables 1 and 2.

Table 1: methods × the four scenario scores, per model. Table 2: the layer study — every method
entry named ``<base>_layer<N>`` (e.g. ``gradcampp_layer1..4``, ``iba_layer1..4``) as rows
``<base> · <score>`` × columns ``layer N``. Axiom scores live in ``summary.parquet`` under
``dataset = "axioms/<entry>"`` and ``metric = <scenario>`` (see `attrflow.jobs.axioms`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd

from attrflow.axioms.metrics import MIN_CORRELATION_SAMPLES

AXIOM_PREFIX = "axioms/"
SCENARIO_ORDER = ["null_feature", "class_sensitivity_single", "class_sensitivity_double", "saturation"]
LAYER_ENTRY = re.compile(r"^(?P<base>.+)_layer(?P<layer>\d+)$")
ARROW = {"higher": "↑", "lower": "↓"}


def _columns(part: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = list(dict.fromkeys(zip(part["dataset"], part["metric"], strict=True)))
    order = {name: i for i, name in enumerate(SCENARIO_ORDER)}
    return sorted(pairs, key=lambda p: (order.get(p[1], len(order)), p[0]))


def _header(part: pd.DataFrame, dataset: str, metric: str) -> str:
    direction = part.loc[part["metric"] == metric, "direction"].iloc[0]
    entry = dataset.removeprefix(AXIOM_PREFIX)
    name = metric if entry == metric else f"{metric} ({entry})"
    return f"{name} {ARROW.get(direction, '')}".strip()


def methods_table(part: pd.DataFrame, cell: Callable[[pd.Series], str]) -> str:
    """Seed 004 Table 1: one row per method, one column per scenario score."""
    columns = _columns(part)
    lines = ["| method | " + " | ".join(_header(part, d, m) for d, m in columns) + " |", "|---|" + "---|" * len(columns)]
    for method in dict.fromkeys(part["method"]):
        cells = []
        for dataset, metric in columns:
            hit = part[(part["method"] == method) & (part["dataset"] == dataset) & (part["metric"] == metric)]
            cells.append(cell(hit.iloc[0]) if len(hit) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layers_table(part: pd.DataFrame, cell: Callable[[pd.Series], str]) -> str | None:
    """Seed 004 Table 2: ``<base>_layer<N>`` entries as rows per (base, score) and columns per layer."""
    found = [(m, LAYER_ENTRY.match(m)) for m in dict.fromkeys(part["method"])]
    layered = [(m, hit.group("base"), int(hit.group("layer"))) for m, hit in found if hit]
    if not layered:
        return None
    layers = sorted({layer for _, _, layer in layered})
    lines = ["| method · score | " + " | ".join(f"layer {n}" for n in layers) + " |", "|---|" + "---|" * len(layers)]
    for base in dict.fromkeys(b for _, b, _ in layered):
        for dataset, metric in _columns(part):
            cells = []
            for layer in layers:
                hit = part[(part["method"] == f"{base}_layer{layer}") & (part["dataset"] == dataset) & (part["metric"] == metric)]
                cells.append(cell(hit.iloc[0]) if len(hit) else "")
            lines.append(f"| {base} · {_header(part, dataset, metric)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def axiom_sections(summary: pd.DataFrame, cell: Callable[[pd.Series], str]) -> list[str]:
    """Markdown lines of both tables for every model with axiom scores (none without)."""
    axioms = summary[summary["dataset"].str.startswith(AXIOM_PREFIX)]
    out: list[str] = []
    for model in dict.fromkeys(axioms["model"]):
        part = axioms[axioms["model"] == model]
        out += [
            f"## Axiom scores, generated inputs (seed 004, Table 1) — {model}",
            "",
            "Per-sample scores: mean ± 95 % CI over accepted samples; the correlations "
            "(class_sensitivity_single, saturation) are one Spearman ρ over all accepted samples, "
            f"computed only from {MIN_CORRELATION_SAMPLES} samples on (skipped below). Every score reads attribution "
            "magnitudes |S| (the paper's non-negative convention), so a perfect map is best and none beats it: "
            "null feature and double class sensitivity lie in [0, 1] (0 best); single class sensitivity is "
            "max(0, ρ) (0 best); saturation is ρ (1 best). Khakzar et al. (CVPR 2022) Table 1 for comparison, "
            "null / double / single / saturation: GradCAM 0.135 / 0.176 / 0.050 / 0.243, "
            "Gradient 0.835 / 0.469 / 0.684 / 0.310, IntegratedGradient 0.534 / 0.344 / 0.759 / 0.212, "
            "FullGrad 1.00 / 0.931 / 0.951 / −0.130, IBA 0.211 / 0.191 / 0.295 / −0.223.",
            "",
            methods_table(part, cell),
            "",
        ]
        layers = layers_table(part, cell)
        if layers:
            out += [f"## Axiom scores across layers (seed 004, Table 2) — {model}", "", layers, ""]
    return out
