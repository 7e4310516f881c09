"""`summary.md`: tables shaped like the seed papers' tables.

First the groups of metrics the seeds report side by side (seed 003 Table 3: KPM/KNM/KAM/RAM per
model; UNI Tables 3–4: attack robustness; …) as methods × metrics per model, then one table per
metric as methods × models (UNI Tables 1–2, the dissertation's insertion/deletion table), then what
each method cost (gradient evaluations per image, as seed 003 prints them next to each method).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attrflow.report.axiom_tables import AXIOM_PREFIX, axiom_sections, read_synthesis

ARROW = {"higher": "↑", "lower": "↓"}

# Metrics the seeds tabulate together; a group is shown when at least two of its metrics ran.
SEED_GROUPS = [
    ("Lundberg et al. masking metrics (seed 003, Table 3)", ["kpm", "knm", "kam", "ram"]),
    ("Insertion / deletion (seed 004, App. Table 3)", ["insertion", "deletion"]),
    ("Attribution attack, FGSM ε = 8/255 (UNI, Tables 3–4)", ["attack_spearman", "attack_topk"]),
    ("Faithfulness (UNI Table 2; Bhatt et al.)", ["mufidelity", "faithfulness_correlation", "sensitivity_n", "diffid"]),
    ("Localisation against object masks", ["pointing_game", "relevance_mass", "ehr", "iou"]),
    ("Axiomatic diagnostics", ["completeness", "path_monotonicity", "mard_ig", "ig_convergence"]),
]


def _cell(row: pd.Series) -> str:
    if row["n"] == 0:
        return "skipped" if row["n_skipped"] else "n/a"
    text = f"{row['mean']:.4g}"
    if row["n"] > 1 and not math.isnan(row["ci95_high"]):
        text += f" ± {(row['ci95_high'] - row['mean']):.2g}"
    if row["rank"] == 1:
        text = f"**{text}**"
    if row["n_nan"]:
        text += f" ({row['n_nan']} nan)"
    return text


def metric_table(summary: pd.DataFrame, dataset: str, metric: str) -> str:
    part = summary[(summary["dataset"] == dataset) & (summary["metric"] == metric)]
    models = list(dict.fromkeys(part["model"]))
    methods = list(dict.fromkeys(part["method"]))
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for method in methods:
        cells = []
        for model in models:
            hit = part[(part["method"] == method) & (part["model"] == model)]
            cells.append(_cell(hit.iloc[0]) if len(hit) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(summary: pd.DataFrame, dataset: str, model: str, metrics: list[str]) -> str:
    part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
    header = [f"{m} {ARROW.get(part.loc[part['metric'] == m, 'direction'].iloc[0], '')}" for m in metrics]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(metrics)]
    for method in dict.fromkeys(part["method"]):
        cells = []
        for metric in metrics:
            hit = part[(part["method"] == method) & (part["metric"] == metric)]
            cells.append(_cell(hit.iloc[0]) if len(hit) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(costs: pd.DataFrame) -> str:
    lines = [
        "| dataset | model | method | n | gradient evals / image | forward passes / image | ms / image | peak MB | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in costs.itertuples():
        if not row.applicable:
            lines.append(f"| {row.dataset} | {row.model} | {row.method} | {row.n} | not applicable: {row.reason} | | | | |")
            continue
        lines.append(
            f"| {row.dataset} | {row.model} | {row.method} | {row.n} | {row.backward_per_image:.4g} | "
            f"{row.forward_per_image:.4g} | {row.wall_ms_per_image:.3g} | {row.peak_memory_mb:.0f} | {row.device} |"
        )
    return "\n".join(lines)


def render_markdown(summary: pd.DataFrame, costs: pd.DataFrame | None = None, synthesis: pd.DataFrame | None = None) -> str:
    out = [
        "# attrflow summary",
        "",
        "Mean over samples ± half-width of the 95 % confidence interval of the mean (Student t).",
        "Bold: best method for that model (rank 1). ↑ higher is better, ↓ lower is better.",
        "",
    ]
    out += _generic_sections(summary[~summary["dataset"].str.startswith(AXIOM_PREFIX)])
    out += axiom_sections(summary, _cell, synthesis)
    if costs is not None and len(costs):
        out += ["## Cost of each method", "", cost_table(costs), ""]
    return "\n".join(out)


def _generic_sections(summary: pd.DataFrame) -> list[str]:
    """The seed groups and the per-metric tables; axiom scores have their own tables (seed 004 shape)."""
    out: list[str] = []
    for title, metrics in SEED_GROUPS:
        for dataset in dict.fromkeys(summary["dataset"]):
            present = [m for m in metrics if m in set(summary.loc[summary["dataset"] == dataset, "metric"])]
            if len(present) < 2:
                continue
            for model in dict.fromkeys(summary.loc[summary["dataset"] == dataset, "model"]):
                out += [f"## {title} — {model} on {dataset}", "", group_table(summary, dataset, model, present), ""]
    for dataset in dict.fromkeys(summary["dataset"]):
        for metric in dict.fromkeys(summary.loc[summary["dataset"] == dataset, "metric"]):
            direction = summary.loc[summary["metric"] == metric, "direction"].iloc[0]
            n = summary.loc[(summary["dataset"] == dataset) & (summary["metric"] == metric), "n"].max()
            out += [f"## {metric} {ARROW.get(direction, '')} — {dataset} (n = {n})", "", metric_table(summary, dataset, metric), ""]
    return out


def write_markdown(summary_path: str | Path, out_path: str | Path, costs_path: str | Path | None = None) -> None:
    import os

    summary = pd.read_parquet(summary_path)
    costs = pd.read_parquet(costs_path) if costs_path else None
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    # the axiom synthesis stores sit beside reports/: results/axioms/{model}/{entry}/inputs.zarr
    synthesis = read_synthesis(Path(summary_path).resolve().parents[1] / "axioms")
    tmp.write_text(render_markdown(summary, costs, synthesis))
    os.replace(tmp, out_path)
