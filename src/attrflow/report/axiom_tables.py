"""The axiom tables of `summary.md`, shaped like Tables 1 and 2 of Khakzar et al., "Do Explanations Explain? Model Knows Best" (CVPR 2022).

Table 1: methods × the four scenario scores, per model. Table 2: the layer study — every method
entry named ``<base>_layer<N>`` (e.g. ``gradcampp_layer1..4``, ``iba_layer1..4``) as rows
``<base> · <score>`` × columns ``layer N``. Axiom scores live in ``summary.parquet`` under
``dataset = "axioms/<entry>"`` and ``metric = <scenario>`` (see `attrflow.jobs.axioms`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

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


SYNTHESIS_COLUMNS = ["model", "entry", "scenario", "candidates_started", "accepted", "failed", "unfinished",
                     "acceptance_rate", "robust_checks", "robust_fraction", "robust_pass_fraction", "tolerance",
                     "independence_threshold", "effect_ratio", "iterations_per_accepted", "seconds_per_accepted"]


def read_synthesis(axioms_dir: str | Path) -> pd.DataFrame:
    """One row per ``{model}/{entry}/inputs.zarr`` under ``axioms_dir``: its synthesis statistics
    (stores written before the outcome counts existed are left out)."""
    from attrflow.store import open_store

    rows = []
    for path in sorted(Path(axioms_dir).glob("*/*/inputs.zarr")):
        attrs = dict(open_store(path).attrs)
        if "candidates_started" not in attrs:
            continue
        setting = attrs.get("setting", {})
        rows.append({
            "model": path.parent.parent.name, "entry": path.parent.name, "scenario": attrs.get("scenario"),
            **{k: attrs.get(k) for k in SYNTHESIS_COLUMNS[3:] if k in attrs},
            **{k: setting.get(k) for k in ("robust_checks", "robust_fraction", "tolerance", "independence_threshold")},
        })
    return pd.DataFrame(rows, columns=SYNTHESIS_COLUMNS)


def _number(value, digits: int = 2) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def synthesis_table(synthesis: pd.DataFrame) -> str:
    """Every started candidate's outcome per entry, and how robust the accepted samples are."""
    lines = [
        "| entry | started | accepted | failed | unfinished | acceptance rate | robust pass (K) | effect ratio | iterations / accepted | s / accepted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in synthesis.itertuples(index=False):
        lines.append(
            f"| {row.entry} | {row.candidates_started} | {row.accepted} | {row.failed} | {row.unfinished} | "
            f"{_number(row.acceptance_rate)} | {_number(row.robust_pass_fraction)} ({row.robust_checks}) | "
            f"{_number(row.effect_ratio, 3)} | {_number(row.iterations_per_accepted, 0)} | {_number(row.seconds_per_accepted, 1)} |"
        )
    return "\n".join(lines)


def axiom_sections(
    summary: pd.DataFrame, cell: Callable[[pd.Series], str], synthesis: pd.DataFrame | None = None
) -> list[str]:
    """Markdown lines of both tables for every model with axiom scores (none without), each
    model's synthesis outcomes first when ``synthesis`` (`read_synthesis`) is given."""
    axioms = summary[summary["dataset"].str.startswith(AXIOM_PREFIX)]
    out: list[str] = []
    for model in dict.fromkeys(axioms["model"]):
        part = axioms[axioms["model"] == model]
        made = synthesis[synthesis["model"] == model] if synthesis is not None else None
        if made is not None and len(made):
            out += [
                f"## Axiom inputs synthesised — {model}",
                "",
                "Every started candidate ends accepted, failed (not accepted within its iterations, or given "
                "up) or unfinished (cut by the time budget); acceptance rate = accepted / (accepted + failed). "
                "A sample is accepted when its property holds on its own draw and on at least robust_fraction "
                "of K fresh draws of background and placement; robust pass = mean share of the K re-checks "
                "passed; effect ratio = mean coalition change over the patch's own effect (for saturation, "
                "the saturation index; 0 is ideal).",
                "",
                synthesis_table(made),
                "",
            ]
        out += [
            f"## Axiom scores, generated inputs (Khakzar et al., 2022, Table 1) — {model}",
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
            out += [f"## Axiom scores across layers (Khakzar et al., 2022, Table 2) — {model}", "", layers, ""]
    return out
